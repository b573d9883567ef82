"""The conditional UNet: round trips, labels, patches, object tokens, the pixel head, parameter counts."""
from __future__ import annotations

import dataclasses

import matplotlib
import pytest
import torch

from lab6 import labels as L
from lab6.checkpoints import init_weights
from lab6.config import PROFILES, load_config
from lab6.errors import ConfigError
from lab6.model import ConditionalUNet, build_model, count_parameters
from lab6.report import implementation

matplotlib.use("Agg")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_model(PROFILES["tiny"].model).eval()


def _inputs(b=3, r=16):
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(b, 3, r, r, generator=g)
    t = torch.tensor([0, 500, 999][:b])
    y = L.encode_batch([["red sphere"], ["cyan cube", "gray cylinder"], ["blue cube"]][:b])
    return xt, t, y


def test_round_trip_is_exact(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = ConditionalUNet.from_pretrained(tmp_path).eval()
    a, b = tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and "label_embedding.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    xt, t, y = _inputs()
    with torch.no_grad():
        assert torch.equal(tiny(xt, t, y), loaded(xt, t, y))
    assert loaded.config.sample_size == 16 and loaded.config.output_size == 64


def test_labels_change_the_output(tiny):
    xt, t, y = _inputs()
    with torch.no_grad():
        out = tiny(xt, t, y)  # (3, 3, 16, 16)
        other = tiny(xt, t, y.roll(1, dims=1))
        null = tiny(xt, t, torch.zeros_like(y))
    assert out.shape == (3, 3, 16, 16)
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample reacts to its label
    assert (out - null).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_patches_are_cut_and_put_back_in_place(tmp_path):
    """patch_size 2: the UNet runs at R/2 on 2x2 patches as channels; output pixels land where their patch was."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PROFILES["tiny"].model, patch_size=2)
    model = build_model(cfg).eval()
    assert model.unet.config.sample_size == 8 and model.unet.config.in_channels == 12
    assert model.config.sample_size == 16 and model.config.in_channels == 3  # what a pipeline draws noise for
    xt, t, y = _inputs()
    seen = []
    model.unet.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), out.sample.clone())))
    with torch.no_grad():
        out = model(xt, t, y)  # (3, 3, 16, 16)
    (unet_in, unet_out), = seen
    assert unet_in.shape == (3, 12, 8, 8) and out.shape == xt.shape
    # channel c*4 + 2i + j of patch (h, w) is pixel (2h + i, 2w + j) of colour c, going in and coming out
    assert torch.equal(unet_in[:, 1 * 4 + 2 * 1 + 0, 3, 5], xt[:, 1, 2 * 3 + 1, 2 * 5 + 0])
    assert torch.equal(out[:, 2, 2 * 4 + 0, 2 * 1 + 1], unet_out[:, 2 * 4 + 2 * 0 + 1, 4, 1])
    model.save_pretrained(tmp_path)
    loaded = ConditionalUNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert loaded.config.patch_size == 2 and torch.equal(loaded(xt, t, y), out)


def test_bad_patch_size_is_rejected():
    with pytest.raises(ConfigError, match="model.patch_size: must be > 0 and divide sample_size 16, got 3"):
        load_config("tiny", patch_size=3)
    with pytest.raises(ConfigError, match="model.sample_size: 16 / patch_size 16 is not divisible by 2"):
        load_config("tiny", patch_size=16)


@pytest.fixture
def tokens_model():
    """The tiny profile with one 16-wide token per object, its cross-attention outputs no longer zero (trained)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(PROFILES["tiny"].model, object_tokens=16)).eval()
    with torch.no_grad():
        for cross in model.object_attention:
            torch.nn.init.normal_(cross.to_out.weight, std=0.5)
    return model


@pytest.mark.parametrize("shift", ["default", "scale_shift"])  # scale_shift: the middle block's attention has no norm
def test_object_tokens_graft_onto_a_plain_model_unchanged(tmp_path, shift):
    """init_from a plain model: the token model's output equals it until its cross-attention is trained."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PROFILES["tiny"].model, resnet_time_scale_shift=shift)
    plain = build_model(cfg).eval()
    plain.save_pretrained(tmp_path)
    grafted = build_model(dataclasses.replace(cfg, object_tokens=16)).eval()
    init_weights(grafted, tmp_path)
    assert len(grafted.object_attention) == 4  # down Attn, middle, two up Attn layers
    xt, t, _ = _inputs(3)
    y = L.encode_batch([["red cube", "blue sphere"], ["cyan cylinder"], ["gray cube", "red cube", "red sphere"]])
    with torch.no_grad():
        assert torch.equal(plain(xt, t, y), grafted(xt, t, y))
        for cross in grafted.object_attention:
            torch.nn.init.normal_(cross.to_out.weight, std=0.5)
        assert (plain(xt, t, y) - grafted(xt, t, y)).abs().amax() > 1e-4  # the tokens reach the output


def test_tokens_only_model_grafts_as_the_unconditional_net(tmp_path):
    """multi_hot false: grafted onto a plain model it draws what the plain model draws with no condition, for every
    label set, until its cross-attention is trained; then the objects reach it through their tokens alone."""
    torch.manual_seed(0)
    cfg = PROFILES["tiny"].model
    plain = build_model(cfg).eval()
    plain.save_pretrained(tmp_path / "plain")
    only = build_model(dataclasses.replace(cfg, object_tokens=16, multi_hot=False)).eval()
    init_weights(only, tmp_path / "plain")
    xt, t, _ = _inputs(3)
    y = L.encode_batch([["red cube", "blue sphere"], ["cyan cylinder"], ["gray cube", "red cube", "red sphere"]])
    with torch.no_grad():
        assert torch.equal(only(xt, t, y), plain(xt, t, torch.zeros_like(y)))
        assert (only(xt, t, y) - plain(xt, t, y)).abs().amax() > 1e-4  # the multi-hot path is closed
        for cross in only.object_attention:
            torch.nn.init.normal_(cross.to_out.weight, std=0.5)
        a, b = (L.encode_batch([s] * 3) for s in (["red cube", "blue sphere"], ["blue cube", "red sphere"]))
        assert (only(xt, t, a) - only(xt, t, b)).abs().amax() > 1e-4
    only.save_pretrained(tmp_path / "only")
    assert ConditionalUNet.from_pretrained(tmp_path / "only").config.multi_hot is False
    with pytest.raises(ConfigError, match="differs in multi_hot"):  # a tokens-only net is no plain net to graft onto
        init_weights(build_model(dataclasses.replace(cfg, object_tokens=16)), tmp_path / "only")
    with pytest.raises(ConfigError, match="model.multi_hot: false needs model.object_tokens"):
        load_config("tiny", multi_hot=False)


def test_object_count_grafts_unchanged_and_reaches_the_output(tmp_path):
    """object_count: grafted onto a tokens-only model it starts as that model; trained, the number of objects reaches
    the output, the "no condition" label has count 0 (its own row), and the embedding survives a reload."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PROFILES["tiny"].model, object_tokens=16, multi_hot=False)
    only = build_model(cfg).eval()
    only.save_pretrained(tmp_path / "only")
    counted = build_model(dataclasses.replace(cfg, object_count=True)).eval()
    init_weights(counted, tmp_path / "only")
    xt, t, _ = _inputs(3)
    y = L.encode_batch([["red cube", "blue sphere"], ["cyan cylinder"], ["gray cube", "red cube", "red sphere"]])
    with torch.no_grad():
        assert torch.equal(only(xt, t, y), counted(xt, t, y))
        torch.nn.init.normal_(counted.count_embedding.weight, std=0.5)
        assert (only(xt, t, y) - counted(xt, t, y)).abs().amax() > 1e-4  # the count reaches the output
        zero = torch.zeros_like(y)
        counted.count_embedding.weight[0].zero_()  # row 0 is the "no condition" label's
        assert torch.equal(only(xt, t, zero), counted(xt, t, zero))
    counted.save_pretrained(tmp_path / "counted")
    again = ConditionalUNet.from_pretrained(tmp_path / "counted").eval()
    with torch.no_grad():
        assert torch.equal(again(xt, t, y), counted(xt, t, y))
    with pytest.raises(ConfigError, match="differs in object_count"):  # no graft back onto a model without it
        init_weights(only, tmp_path / "counted")


def test_tokens_every_level_grafts_unchanged_and_reads_the_finest_grid(tmp_path):
    """tokens_every_level: the ResNet blocks of the levels without self-attention read the tokens; grafted onto a
    tokens model it starts as that model; trained, each grid reading reaches the output; it survives a reload."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PROFILES["tiny"].model, object_tokens=16, multi_hot=False, object_count=True)
    tokens = build_model(cfg).eval()
    tokens.save_pretrained(tmp_path / "tokens")
    every = build_model(dataclasses.replace(cfg, tokens_every_level=True)).eval()
    init_weights(every, tmp_path / "tokens")
    plain_blocks = [b for b in (*every.unet.down_blocks, *every.unet.up_blocks) if not hasattr(b, "attentions")]
    assert len(every.grid_attention) == sum(len(b.resnets) for b in plain_blocks) > 0
    xt, t, _ = _inputs(3)
    y = L.encode_batch([["red cube", "blue sphere"], ["cyan cylinder"], ["gray cube", "red cube", "red sphere"]])
    with torch.no_grad():
        assert torch.equal(tokens(xt, t, y), every(xt, t, y))
        for i, cross in enumerate(every.grid_attention):
            before = every(xt, t, y)
            torch.nn.init.normal_(cross.to_out.weight, std=0.5)
            assert (every(xt, t, y) - before).abs().amax() > 1e-4, f"grid reading {i} does not reach the output"
        a, b = (L.encode_batch([s] * 3) for s in (["red cube", "blue sphere"], ["blue cube", "red sphere"]))
        assert (every(xt, t, a) - every(xt, t, b)).abs().amax() > 1e-4
        c = L.encode_batch([["blue sphere", "red cube"]] * 3)  # the same set in another order
        assert torch.equal(every(xt, t, a), every(xt, t, c))
    every.save_pretrained(tmp_path / "every")
    again = ConditionalUNet.from_pretrained(tmp_path / "every").eval()
    with torch.no_grad():
        assert torch.equal(again(xt, t, y), every(xt, t, y))
    with pytest.raises(ConfigError, match="differs in tokens_every_level"):
        init_weights(tokens, tmp_path / "every")
    with pytest.raises(ConfigError, match="model.tokens_every_level: true needs model.object_tokens"):
        load_config("tiny", tokens_every_level=True)


def test_pixel_head_grafts_unchanged_and_sees_across_patch_borders(tmp_path):
    """init_from a plain patch model: the pixel-head model's output equals it until the head is trained; trained,
    the head knows each pixel's place in its patch (it can undo a grain of the patch period) and survives a reload."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PROFILES["tiny"].model, patch_size=2)
    plain = build_model(cfg).eval()
    plain.save_pretrained(tmp_path / "plain")
    headed = build_model(dataclasses.replace(cfg, pixel_head=8)).eval()
    init_weights(headed, tmp_path / "plain")
    xt, t, y = _inputs(2)
    with torch.no_grad():
        assert torch.equal(plain(xt, t, y), headed(xt, t, y))
        torch.nn.init.normal_(headed.output_head.conv_out.weight, std=0.5)
        flat = headed.output_head(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))  # (1, 3, 8, 8)
        assert (flat[..., 0::2, :] - flat[..., 1::2, :]).abs().amax() > 1e-3  # position in the 2x2 patch
        assert torch.allclose(flat[..., 2:6, 2:4], flat[..., 2:6, 4:6])  # away from the border: one patch period
    headed.save_pretrained(tmp_path / "headed")
    loaded = ConditionalUNet.from_pretrained(tmp_path / "headed").eval()
    with torch.no_grad():
        assert loaded.config.pixel_head == 8 and torch.equal(loaded(xt, t, y), headed(xt, t, y))
    with pytest.raises(ConfigError, match="model.pixel_head: must be > 0"):
        load_config("tiny", pixel_head=0)


def test_object_tokens_are_colour_plus_shape_and_mask_the_absent(tokens_model):
    y = L.encode_batch([["cyan cube", "gray cylinder"], ["red sphere"]])
    y = torch.cat([y, torch.zeros(1, L.NUM_CLASSES)])  # the "no condition" input of guidance
    tokens, mask = tokens_model.object_tokens(y)  # (3, 1+3, 16), (3, 1+3)
    assert tokens.shape == (3, 4, 16) and mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    m = tokens_model

    def token(name):
        i = L.OBJECT_TO_INDEX[name]
        return m.colour_embedding.weight[i % 8] + m.shape_embedding.weight[i // 8]

    want = [token("cyan cube"), token("gray cylinder")]
    got = [tokens[0, 1], tokens[0, 2]]
    assert any(all(torch.allclose(a, b) for a, b in zip(want, perm)) for perm in (got, got[::-1]))
    assert torch.equal(tokens[:, 0], m.scene_token[0].expand(3, 16))


def test_object_tokens_bind_colour_to_shape(tokens_model, tmp_path):
    """Same colours, same shapes, bound the other way: the tokens alone tell the two scenes apart."""
    with torch.no_grad():
        tokens_model.label_embedding.weight.zero_()  # the multi-hot path now says nothing about the set
    xt, t, _ = _inputs(2)
    a = L.encode_batch([["red cube", "blue sphere"]] * 2)
    b = L.encode_batch([["blue cube", "red sphere"]] * 2)
    with torch.no_grad():
        assert (tokens_model(xt, t, a) - tokens_model(xt, t, b)).abs().amax() > 1e-4
    tokens_model.save_pretrained(tmp_path)
    loaded = ConditionalUNet.from_pretrained(tmp_path).eval()
    assert loaded.config.object_tokens == 16
    with torch.no_grad():
        assert torch.equal(tokens_model(xt, t, a), loaded(xt, t, a))


@pytest.mark.parametrize("multi_hot", [True, False])
def test_output_does_not_depend_on_the_order_of_the_labels(tokens_model, multi_hot):
    """A label set is a set: every order of its objects gives the same tokens and the same output."""
    tokens_model.register_to_config(multi_hot=multi_hot)
    xt, t, _ = _inputs(1)
    objects = ["red cube", "blue sphere", "cyan cylinder"]
    orders = [objects, objects[::-1], objects[1:] + objects[:1]]
    with torch.no_grad():
        outs = [tokens_model(xt, t, L.encode_batch([o])) for o in orders]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_bad_object_tokens_are_rejected():
    with pytest.raises(ConfigError, match="model.object_tokens: must be > 0"):
        load_config("tiny", object_tokens=0)


def test_parameter_counts_per_profile():
    assert count_parameters(build_model(PROFILES["tiny"].model)) < 20_000
    assert 8_800_000 < count_parameters(build_model(PROFILES["quick"].model)) < 9_200_000  # 8.99 M: 4×4 patches, tokens
    with torch.device("meta"):
        seed = build_model(PROFILES["seed"].model)
        full = build_model(PROFILES["full"].model)
    assert seed.label_embedding.weight.shape == (512, 24)  # the seed report's nn.Linear(24, 512)
    assert count_parameters(seed) == 113_686_019
    blocks = [type(b).__name__ for b in seed.unet.down_blocks]
    assert blocks.index("AttnDownBlock2D") == 4 and blocks.count("AttnDownBlock2D") == 1
    ups = [type(b).__name__ for b in seed.unet.up_blocks]
    assert ups.index("AttnUpBlock2D") == 1 and ups.count("AttnUpBlock2D") == 1
    assert 2 * count_parameters(full) <= 25_000_000  # pretrained/full would fit the 25 MB of fp16 weights


def test_report_describes_the_object_tokens():
    text = implementation(load_config("tiny", object_tokens=16), None)
    assert "16-wide token, colour embedding + shape embedding" in text
    assert "cross-attention to the object tokens beside it, its output projection initialised to zero" in text
    assert "token" not in implementation(load_config("tiny"), None)
    only = implementation(load_config("tiny", object_tokens=16, multi_hot=False), None)
    assert "the tokens are the only way the objects reach the network" in only and "multi-hot" not in only
