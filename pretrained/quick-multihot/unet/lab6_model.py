"""The conditional UNet: diffusers UNet2DModel whose time embedding gets a learned projection of the label.

The 24-dim multi-hot label y goes through `label_embedding = nn.Linear(24, time_embed_dim)` and is added to the
timestep embedding (UNet2DModel's `class_embed_type="identity"` path), so every ResNet block sees t and y.
The all-zero label is the "no condition" input of classifier-free guidance; its embedding is the bias alone.
With `patch_size` p > 1 the image is cut into p×p patches stacked as channels (pixel-unshuffle) before the UNet
and put back after it (pixel-shuffle), as in Simple Diffusion (Hoogeboom et al. 2023): the UNet then runs at
R/p, where a CPU spends far less time per image on the norm/activation overhead of the large feature maps.
Because the projection is a registered submodule of a ModelMixin/ConfigMixin class, `save_pretrained` /
`from_pretrained` round-trip it (assigning `unet.class_embedding = nn.Linear(...)` on a plain UNet2DModel
is lost on reload).
This file imports only torch and diffusers: an export carries a copy of it (unet/lab6_model.py), so that plain
diffusers loads the model with `trust_remote_code=True`.

With `object_tokens` D set, each object of the label set also becomes one token, colour embedding + shape
embedding (D wide), beside a learned scene token (so the "no condition" input still has something to attend to).
Every self-attention layer of the UNet (Attn blocks and the middle block) gains a cross-attention to these
tokens whose output is added to its own: one slot per object binds a colour to its shape and says how many
objects to draw. The cross-attention's output projection starts at zero (as ControlNet's zero convolutions and
GLIGEN's gated layers do), so a token model starts as exactly the plain model it is initialised from
(`train.init_from`) and fine-tuning only adds what the tokens tell.

With `pixel_head` C set, a small network at full resolution corrects the output after the patches are put back:
two 3×3 convolutions (C wide) over the output, x_t and the pixel's place in its patch (sin/cos of x mod p,
y mod p), added to the output. Each patch's p×p pixels otherwise come from one position of the UNet's grid, and
small errors repeat with the patch period as a visible grain; the head sees across patch borders. Its last
convolution starts at zero, so it can be grafted onto a trained model as the tokens are.

With `multi_hot` False (object tokens only), the label no longer reaches the time embedding: every ResNet block sees
the "no condition" embedding (the projection's bias), and the objects reach the network only through the tokens, so
that it must draw each object from its own slot rather than from the pooled label. The projection is kept, so a
plain model's weights still load (`train.init_from`).

With `object_count` True, the number of objects n (0 for "no condition") goes through its own embedding
`count_embedding = nn.Embedding(1 + 3, time_embed_dim)` into the time embedding: a cross-attention averages the
tokens it reads, so how many there are is otherwise only implicit. It starts at zero, so it can be grafted too.

With `tokens_every_level` True, the levels without self-attention read the tokens too: after each ResNet block of a
plain Down/Up block (the 16×16 grid of the quick net), a group norm and an ObjectCrossAttention whose output is added
to the block's, so that the finest grid, where an object's outline is drawn, also knows which object it belongs to.
These are forward hooks; their modules (`grid_attention`, `grid_norms`) start at zero output, so they graft too.
"""
from __future__ import annotations

import dataclasses

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch.nn import functional as F

# lab6.labels' vocabulary, repeated so that this file stands alone (an export carries a copy of it): the 24 objects
# are 8 colours x 3 shapes in the course's order (object i: colour i % 8, shape i // 8), 1-3 of them per scene.
NUM_COLOURS, NUM_SHAPES, MAX_OBJECTS = 8, 3, 3


class ObjectCrossAttention(nn.Module):
    """Cross-attention from a UNet attention layer's normed features (B, HW, C) to object tokens (B, 1+3, D)."""

    def __init__(self, channels: int, token_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(token_dim, channels)
        self.to_v = nn.Linear(token_dim, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)  # adds nothing until trained
        nn.init.zeros_(self.to_out.bias)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h (B, HW, C), tokens (B, N, D), mask (B, N) of 1 = present -> (B, HW, C)."""
        b, n, c = h.shape
        q = self.to_q(h).view(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, HW, C/heads)
        k = self.to_k(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, N, C/heads)
        v = self.to_v(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
        keep = (mask > 0.5)[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, heads, HW, C/heads)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class _WithObjects:
    """Attention processor: the layer's own self-attention plus its ObjectCrossAttention on the current tokens."""

    def __init__(self, cross: ObjectCrossAttention, context: dict):
        self.cross, self.context = cross, context  # plain references: the modules are registered on the model
        self.self_attention = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb: torch.Tensor | None = None) -> torch.Tensor:
        out = self.self_attention(attn, hidden_states, temb=temb)  # (B, C, H, W), residual included
        b, c, hgt, wid = hidden_states.shape
        h = hidden_states if attn.spatial_norm is None else attn.spatial_norm(hidden_states, temb)
        h = h.view(b, c, hgt * wid).transpose(1, 2)  # (B, HW, C)
        if attn.group_norm is not None:  # normed as the layer's own attention sees it
            h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
        extra = self.cross(h, *self.context["tokens"])  # (B, HW, C)
        return out + extra.transpose(1, 2).reshape(b, c, hgt, wid) / attn.rescale_output_factor


class _ReadsObjects:
    """Forward hook of a ResNet block (B, C, H, W): adds its ObjectCrossAttention's reading of the current tokens."""

    def __init__(self, cross: ObjectCrossAttention, norm: nn.GroupNorm, context: dict):
        self.cross, self.norm, self.context = cross, norm, context  # plain references, as in _WithObjects

    def __call__(self, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = out.shape
        h = self.norm(out).view(b, c, hgt * wid).transpose(1, 2)  # (B, HW, C)
        extra = self.cross(h, *self.context["tokens"])  # (B, HW, C)
        return out + extra.transpose(1, 2).reshape(b, c, hgt, wid)


class PixelHead(nn.Module):
    """Residual correction (B, 3, R, R) of a p×p-patch model's output from the output, x_t and in-patch position."""

    def __init__(self, channels: int, patch_size: int, in_channels: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.conv_in = nn.Conv2d(2 * in_channels + 4, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # adds nothing until trained
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, out: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        b, _, h, w = out.shape
        angle = 2 * torch.pi * torch.arange(max(h, w), device=out.device, dtype=out.dtype) / self.patch_size
        ys, xs = angle[:h, None].expand(h, w), angle[None, :w].expand(h, w)
        where = torch.stack([ys.sin(), ys.cos(), xs.sin(), xs.cos()]).expand(b, 4, h, w)  # (B, 4, R, R)
        hidden = F.silu(self.conv_in(torch.cat([out, xt.to(out.dtype), where], dim=1)))   # (B, C, R, R)
        return out + self.conv_out(hidden)                                                # (B, 3, R, R)


class ConditionalUNet(ModelMixin, ConfigMixin):
    """eps/v-prediction network f(x_t, t, y) for 1-3 object labels given as a multi-hot vector."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        output_size: int = 64,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim: int = 8,
        norm_num_groups: int = 32,
        time_embedding_dim: int | None = None,
        resnet_time_scale_shift: str = "default",
        dropout: float = 0.0,
        num_classes: int = 24,
        in_channels: int = 3,
        patch_size: int = 1,
        object_tokens: int | None = None,
        pixel_head: int | None = None,
        multi_hot: bool = True,
        object_count: bool = False,
        tokens_every_level: bool = False,
    ):
        super().__init__()
        time_embed_dim = time_embedding_dim or 4 * block_out_channels[0]
        patch_channels = in_channels * patch_size**2
        self.unet = UNet2DModel(
            sample_size=sample_size // patch_size, in_channels=patch_channels, out_channels=patch_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups, time_embedding_dim=time_embed_dim,
            resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout, class_embed_type="identity")
        self.label_embedding = nn.Linear(num_classes, time_embed_dim)  # y (B, 24) -> (B, time_embed_dim)
        if object_tokens is not None:
            self.colour_embedding = nn.Embedding(NUM_COLOURS, object_tokens)  # (8, D)
            self.shape_embedding = nn.Embedding(NUM_SHAPES, object_tokens)  # (3, D)
            self.scene_token = nn.Parameter(torch.randn(1, 1, object_tokens) * 0.02)  # (1, 1, D)
            layers = [m for m in self.unet.modules() if isinstance(m, Attention)]  # down, mid, up: a fixed order
            self.object_attention = nn.ModuleList(
                ObjectCrossAttention(a.to_q.in_features, object_tokens, a.heads) for a in layers)
            self._context: dict = {}
            for a, cross in zip(layers, self.object_attention):
                a.set_processor(_WithObjects(cross, self._context))
            if tokens_every_level:  # the ResNet blocks of the levels without self-attention, down then up
                plain = [r for blk in (*self.unet.down_blocks, *self.unet.up_blocks) if not hasattr(blk, "attentions")
                         for r in blk.resnets]
                self.grid_attention = nn.ModuleList(
                    ObjectCrossAttention(r.out_channels, object_tokens, r.out_channels // attention_head_dim)
                    for r in plain)
                self.grid_norms = nn.ModuleList(nn.GroupNorm(norm_num_groups, r.out_channels) for r in plain)
                for r, cross, norm in zip(plain, self.grid_attention, self.grid_norms):
                    r.register_forward_hook(_ReadsObjects(cross, norm, self._context))
        if object_count:
            self.count_embedding = nn.Embedding(MAX_OBJECTS + 1, time_embed_dim)  # n (B,) -> (B, time_embed_dim)
            nn.init.zeros_(self.count_embedding.weight)  # adds nothing until trained
        if pixel_head is not None:
            self.output_head = PixelHead(pixel_head, patch_size, in_channels)

    def forward(self, xt: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor) -> torch.Tensor:
        """Network output (eps or v, per the scheduler's prediction_type) for x_t, t and multi-hot labels."""
        p = self.config.patch_size
        y = labels.to(self.label_embedding.weight.dtype)  # (B, 24)
        y_emb = self.label_embedding(y if self.config.multi_hot else torch.zeros_like(y))  # (B, time_embed_dim)
        if self.config.object_count:
            n = (labels > 0.5).sum(dim=1).clamp(max=MAX_OBJECTS)  # (B,): 0 for the "no condition" label
            y_emb = y_emb + self.count_embedding(n).to(y_emb.dtype)
        patches = F.pixel_unshuffle(xt, p)  # (B, 3p², R/p, R/p); the identity for p = 1
        if self.config.object_tokens is None:
            out = self.unet(patches, t, class_labels=y_emb).sample
        else:
            self._context["tokens"] = self.object_tokens(labels)  # read by every layer's _WithObjects
            try:
                out = self.unet(patches, t, class_labels=y_emb).sample
            finally:
                self._context.clear()
        out = F.pixel_shuffle(out, p)  # (B, 3, R, R)
        return out if self.config.pixel_head is None else self.output_head(out, xt)

    def object_tokens(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene token + one token per object of multi-hot labels (B, 24) -> tokens (B, 1+3, D), mask (B, 1+3)."""
        value, index = labels.topk(MAX_OBJECTS, dim=1)  # (B, 3): the set's objects first, then absent classes
        tokens = self.colour_embedding(index % NUM_COLOURS) + self.shape_embedding(index // NUM_COLOURS)  # (B, 3, D)
        scene = self.scene_token.expand(labels.shape[0], 1, -1).to(tokens.dtype)  # (B, 1, D)
        mask = torch.cat([torch.ones_like(value[:, :1]), (value > 0.5).to(value.dtype)], dim=1)  # (B, 1+3)
        return torch.cat([scene, tokens], dim=1), mask


def build_model(cfg) -> ConditionalUNet:
    """A freshly initialised ConditionalUNet for a lab6.config.ModelConfig (a dataclass of its arguments)."""
    return ConditionalUNet(**dataclasses.asdict(cfg))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
