"""Model, profiles/configs and noise schedules."""
from __future__ import annotations

import dataclasses

import matplotlib
import pytest
import torch
from diffusers import DDPMScheduler

from lab6 import labels as L
from lab6.checkpoints import init_weights
from lab6.config import PROFILES, Config, load_config, to_yaml
from lab6.errors import ConfigError
from lab6.model import ConditionalUNet, build_model, count_parameters
from lab6.report import implementation
from lab6.schedules import alphas_cumprod, make_scheduler, predict_x0, q_sample, v_target
from tests.conftest import REPO

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


def test_bad_object_tokens_are_rejected():
    with pytest.raises(ConfigError, match="model.object_tokens: must be > 0"):
        load_config("tiny", object_tokens=0)


def test_parameter_counts_per_profile():
    assert count_parameters(build_model(PROFILES["tiny"].model)) < 20_000
    assert 8_000_000 < count_parameters(build_model(PROFILES["quick"].model)) < 8_800_000  # 8.39 M on 4×4 patches
    with torch.device("meta"):
        full = build_model(PROFILES["full"].model)
    assert full.label_embedding.weight.shape == (512, 24)  # the seed report's nn.Linear(24, 512)
    assert count_parameters(full) == 113_686_019
    blocks = [type(b).__name__ for b in full.unet.down_blocks]
    assert blocks.index("AttnDownBlock2D") == 4 and blocks.count("AttnDownBlock2D") == 1
    ups = [type(b).__name__ for b in full.unet.up_blocks]
    assert ups.index("AttnUpBlock2D") == 1 and ups.count("AttnUpBlock2D") == 1


def test_every_profile_delivers_64px():
    for name, cfg in PROFILES.items():
        assert cfg.model.output_size == 64, name
        assert 64 % cfg.model.sample_size == 0, name
    seed = PROFILES["seed"]
    assert (seed.schedule.prediction_type, seed.sample.sampler, seed.sample.num_steps,
            seed.sample.guidance_scale, seed.train.lr, seed.train.cond_drop_prob) == \
        ("epsilon", "ddpm", 1000, 1.0, 1e-4, 0.0)
    assert PROFILES["full"].model == PROFILES["seed"].model


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_yaml_matches_dataclasses(name):
    path = REPO / "configs" / f"{name}.yaml"
    assert path.read_text() == to_yaml(PROFILES[name]), f"{path} drifted: run `python -m lab6.config`"
    assert load_config(name, path) == PROFILES[name]


def test_overrides_and_yaml(tmp_path):
    cfg = load_config("tiny", max_steps=3, sample={"seed": 5}, train={"seed": 7})
    assert (cfg.train.max_steps, cfg.sample.seed, cfg.train.seed) == (3, 5, 7)
    assert PROFILES["tiny"].train.max_steps != 3  # the profile itself is untouched
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 0.01\nmodel:\n  block_out_channels: [8, 16]\n")
    cfg = load_config("tiny", y)
    assert cfg.train.lr == 0.01 and cfg.model.block_out_channels == (8, 16)


@pytest.mark.parametrize("text, match", [
    ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown setting"),
    ("optim:\n  lr: 0.1\n", "optim: unknown section"),
    ("train:\n  max_steps: 0\n", "train.max_steps: must be > 0"),
    ("train:\n  batch_size: -2\n", "train.batch_size: must be > 0"),
    ("train:\n  lr: 0\n", "train.lr: must be > 0"),
    ("sample:\n  guidance_scale: -1\n", "sample.guidance_scale: must be >= 0"),
    ("sample:\n  eta: 2\n", "sample.eta: must be in \\[0, 1\\]"),
    ("sample:\n  sampler: euler\n", "sample.sampler"),
    ("train:\n  max_steps: ten\n", "expected an integer"),
    ("profile: quick\n", "file is for profile 'quick'"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_bad_yaml_is_rejected(tmp_path, text, match):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config("tiny", y)
    assert str(y) in str(e.value)


def test_bad_overrides_are_rejected():
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config("tiny", seed=1)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config("tiny", nonsense=1)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("huge")
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        load_config("tiny", schedule={"zero_terminal_snr": True, "prediction_type": "epsilon"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_rejected():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_config("tiny", device="cuda")


def test_config_sections_are_typed():
    for section in ("model", "schedule", "train", "sample"):
        cls = type(getattr(Config(), section))
        assert all(f.type for f in dataclasses.fields(cls))


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_q_sample_matches_diffusers(beta_schedule):
    cfg = load_config("tiny", schedule={"beta_schedule": beta_schedule}).schedule
    sched = make_scheduler(cfg, "ddpm")
    assert isinstance(sched, DDPMScheduler) and sched.config.num_train_timesteps == 1000
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    assert torch.equal(q_sample(x0, t, eps, cfg), sched.add_noise(x0, eps, t))
    assert torch.equal(v_target(x0, t, eps, cfg), sched.get_velocity(x0, eps, t))
    xt = q_sample(x0, t, eps, cfg)
    # eps -> x0 divides by sqrt(alphas_cumprod), which is ~5e-5 at t = 999: compare t < 999 only
    assert torch.allclose(predict_x0(xt[:3], t[:3], eps[:3], "epsilon", cfg), x0[:3], atol=1e-4)
    assert torch.allclose(predict_x0(xt, t, v_target(x0, t, eps, cfg), "v_prediction", cfg), x0, atol=1e-5)


def test_alphas_cumprod_ends():
    cos = alphas_cumprod(load_config("tiny").schedule)
    assert len(cos) == 1000 and 0.99 < cos[0] <= 1 and cos[-1] < 1e-8  # 2.4e-9: the FINDINGS pitfall
    lin = alphas_cumprod(load_config("tiny", schedule={"beta_schedule": "linear"}).schedule)
    assert 3e-5 < lin[-1] < 5e-5
    zsnr = alphas_cumprod(load_config("tiny", schedule={"zero_terminal_snr": True}).schedule)
    assert zsnr[-1] == 0


def test_plots_return_figures():
    from lab6.schedules import plot_alphas_cumprod, plot_forward_process
    fig = plot_alphas_cumprod()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    fig2 = plot_forward_process(torch.zeros(3, 16, 16), timesteps=(0, 500, 999),
                                generator=torch.Generator().manual_seed(0))
    assert len(fig2.axes) == 6
    matplotlib.pyplot.close("all")


def test_report_describes_the_object_tokens():
    text = implementation(load_config("tiny", object_tokens=16), None)
    assert "16-wide token, colour embedding + shape embedding" in text
    assert "cross-attention to the object tokens beside it, its output projection initialised to zero" in text
    assert "token" not in implementation(load_config("tiny"), None)
