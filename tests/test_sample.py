"""Pipeline and samplers on the tiny profile (untrained weights: shapes, ranges, determinism, guidance)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from lab6.checkpoints import build_pipeline
from lab6.config import PROFILES
from lab6.errors import ConfigError, LabelError
from lab6.model import build_model
from lab6.pipeline import (
    ConditionalDDPMPipeline,
    composed,
    estimate_x0,
    guided,
    object_rows,
    output_from_x0,
    patch_offset,
    shifted,
)
from lab6.sample import generators, load_pipeline, sample, set_sampler
from lab6.schedules import make_scheduler, sampler_name

SETS = [["red sphere", "cyan cube"], ["gray cube"], ["blue cylinder", "green sphere", "yellow cube"]]


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    p = build_pipeline(build_model(PROFILES["tiny"].model).eval(), PROFILES["tiny"])
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("sampler, steps", [("ddpm", 1000), ("ddim", 10), ("dpm", 10), ("dpm-sde", 10)])
def test_samplers_shapes_and_ranges(pipe, sampler, steps):
    out = sample(pipe, SETS[:2], sampler=sampler, num_steps=steps, guidance_scale=2.0, seed=0,
                 capture_steps=[0, steps // 2, -1])
    x = out.images
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32  # upsampled from 16 px
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    assert out.xt.shape == out.x0.shape == (3, 2, 3, 64, 64)
    assert out.timesteps[0] == 999 and out.timesteps == sorted(out.timesteps, reverse=True)
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,
           "dpm-sde": DPMSolverMultistepScheduler}[sampler]
    assert type(pipe.scheduler) is cls and sampler_name(pipe.scheduler) == sampler


def test_sde_sampler_is_seeded_per_image_and_differs_from_the_ode(pipe):
    """SDE-DPM-Solver++ draws fresh noise each step from the per-image generators: same seed, same image,
    whatever the batch; and not the deterministic DPM-Solver++ result."""
    a = sample(pipe, SETS, sampler="dpm-sde", num_steps=6, seed=3, batch_size=3).images
    b = sample(pipe, SETS, sampler="dpm-sde", num_steps=6, seed=3, batch_size=1).images
    ode = sample(pipe, SETS, sampler="dpm", num_steps=6, seed=3, batch_size=3).images
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, ode, atol=1e-3)


def test_guidance_scale_one_is_the_conditional_model(pipe):
    """s = 1 equals a plain loop over the conditional network; s = 0 is the unconditional one."""
    y = torch.zeros(1, 24)
    y[0, 3] = 1
    steps = 8

    def plain_loop(labels):
        sched = make_scheduler(pipe.scheduler, "ddim", "trailing")
        sched.set_timesteps(steps)
        xt = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for t in sched.timesteps:
                xt = sched.step(pipe.unet(xt, t, labels), t, xt).prev_sample
        return torch.nn.functional.interpolate(xt, size=64, mode="bilinear", align_corners=False).clamp(-1, 1)

    set_sampler(pipe, "ddim")
    run = lambda s: pipe(labels=y, num_inference_steps=steps, guidance_scale=s, output_type="pt",  # noqa: E731
                         generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(run(1.0), plain_loop(y))
    assert torch.allclose(run(0.0), plain_loop(torch.zeros_like(y)), atol=1e-5)
    assert not torch.allclose(run(3.0), run(1.0))
    c, u = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.equal(guided(c, u, 1.0), c) and torch.equal(guided(c, u, 0.0), u)
    assert torch.allclose(guided(c, u, 3.0), u + 3 * (c - u))


def test_composable_guidance_adds_one_term_per_object_of_sets_of_two_or_more(pipe):
    """uncond + s (set - uncond) + o sum_i (obj_i - uncond): o = 0 is plain guidance; a one-object set has no
    object term, so its image does not change; every other image does."""
    y = torch.zeros(3, 24)
    y[0, [1, 14]] = 1                                               # red cube, cyan sphere
    y[1, 3] = 1                                                     # one object: no rows
    y[2, [0, 9, 23]] = 1
    rows, owner = object_rows(y)
    assert owner.tolist() == [0, 0, 2, 2, 2] and rows.argmax(1).tolist() == [1, 14, 0, 9, 23]
    assert torch.equal(rows.sum(1), torch.ones(5))
    c, u, objects = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    expected = guided(c, u, 3.0).clone()
    expected[0] += 0.5 * (objects[:2] - u[0]).sum(0)
    expected[2] += 0.5 * (objects[2:] - u[2]).sum(0)
    assert torch.allclose(composed(c, u, objects, owner, 3.0, 0.5), expected)
    assert torch.equal(composed(c, u, objects, owner, 3.0, 0.0), guided(c, u, 3.0))
    run = lambda **kw: sample(pipe, SETS, sampler="dpm", num_steps=4, seed=2, guidance_scale=2.0, **kw).images  # noqa: E731
    plain, zero, composed_ = run(), run(object_guidance_scale=0.0), run(object_guidance_scale=1.0)
    assert torch.equal(plain, zero)
    assert torch.allclose(composed_[1], plain[1], atol=1e-6)        # SETS[1]: one object
    assert not torch.allclose(composed_[0], plain[0], atol=1e-4) and not torch.allclose(composed_[2], plain[2], atol=1e-4)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="object_guidance_scale: must be >= 0"):
            run(object_guidance_scale=bad)


def test_patch_offsets_visit_every_place_in_a_patch_and_shifted_moves_the_frame():
    """patch_offset visits each of the p x p offsets once in p*p steps ((0, 0) without patches). `shifted` moves
    x_t by the offset: where the network saw a pixel, its output there is the output for that pixel; the last dy
    rows and dx columns, out of the frame, get the x0 of the nearest row and column seen, for eps and v alike."""
    for p in (2, 3, 4):
        assert sorted(patch_offset(i, p) for i in range(p * p)) == [(a, b) for a in range(p) for b in range(p)]
        assert patch_offset(p * p, p) == (0, 0)
    assert {patch_offset(i, 1) for i in range(5)} == {(0, 0)}
    ac = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor(400)
    xt = torch.randn(2, 3, 8, 8)

    def per_pixel(x, t_, k):                                    # a network that sees one pixel at a time
        return k * x
    for kind in ("epsilon", "v_prediction"):
        plain = per_pixel(xt, t, 0.5)
        assert torch.equal(shifted(per_pixel, xt, (0, 0), t, kind, ac, 0.5), plain)
        out = shifted(per_pixel, xt, (1, 3), t, kind, ac, 0.5)
        assert torch.allclose(out[..., :7, :5], plain[..., :7, :5], atol=1e-5)
        x0 = estimate_x0(xt, t.reshape(1).expand(2), out, kind, ac)
        assert torch.allclose(x0[..., 7, :], x0[..., 6, :], atol=1e-5)
        assert torch.allclose(x0[..., :, 5:], x0[..., :, 4:5].expand(-1, -1, -1, 3), atol=1e-5)
        assert torch.allclose(output_from_x0(xt, t.reshape(1).expand(2), estimate_x0(
            xt, t.reshape(1).expand(2), plain, kind, ac), kind, ac), plain, atol=1e-5)


def test_shift_patches_changes_a_patch_model_only_and_its_default_travels_with_the_export(pipe, tmp_path):
    """With shift_patches a patch model samples other images (its grid moves every step); a model without patches
    (the tiny profile's) the same ones; default_shift_patches is saved with the export and read back."""
    import dataclasses
    run = lambda p, **kw: sample(p, SETS, sampler="dpm", num_steps=4, seed=2, guidance_scale=2.0, **kw).images  # noqa: E731
    assert torch.equal(run(pipe, shift_patches=True), run(pipe, shift_patches=False))
    cfg = PROFILES["tiny"]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, sample_size=32, patch_size=2))
    torch.manual_seed(0)
    patched = build_pipeline(build_model(cfg.model).eval(), cfg)
    patched.set_progress_bar_config(disable=True)
    plain, moved = run(patched, shift_patches=False), run(patched, shift_patches=True)
    assert not torch.allclose(plain, moved, atol=1e-4)
    assert torch.equal(run(patched), plain)                          # the default: off
    cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, shift_patches=True))
    patched = build_pipeline(patched.unet, cfg)                      # sample.shift_patches: on
    patched.save_pretrained(tmp_path / "export")
    loaded = load_pipeline(tmp_path / "export", "cpu")
    assert loaded.config.default_shift_patches is True
    assert torch.allclose(run(loaded), moved, atol=1e-6)


def test_bf16_precision_runs_the_network_in_bf16_and_keeps_the_images_in_fp32(pipe):
    """precision="bf16": the network's matmuls under autocast (other images, near fp32's), the output still fp32;
    fp32 / None are the weights' own dtype; anything else is refused in one line naming the option."""
    run = lambda **kw: sample(pipe, SETS, sampler="dpm", num_steps=4, seed=1, guidance_scale=2.0, **kw).images  # noqa: E731
    plain, half = run(), run(precision="bf16")
    assert torch.equal(run(precision="fp32"), plain)
    assert half.dtype == torch.float32 and half.shape == plain.shape
    assert not torch.equal(half, plain) and (half - plain).abs().mean() < 0.05
    with pytest.raises(ConfigError, match=r"^precision: expected fp32 or bf16 .*got 'fp16'$"):
        run(precision="fp16")


def test_sample_eta_of_the_config_travels_with_the_export(tmp_path):
    """sample.eta (DDIM's noise) is the exported pipeline's default: eta 1 samples differently from eta 0,
    exactly as passing eta=1 does; out of [0, 1] it is refused."""
    import dataclasses
    cfg = PROFILES["tiny"]
    noisy = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, sampler="ddim", eta=1.0))
    torch.manual_seed(0)
    p = build_pipeline(build_model(cfg.model).eval(), noisy)
    p.save_pretrained(tmp_path)
    loaded = ConditionalDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_eta == 1.0
    run = lambda **kw: sample(loaded, SETS, num_steps=6, seed=1, **kw).images  # noqa: E731
    assert torch.equal(run(), run(eta=1.0))
    assert not torch.allclose(run(), run(eta=0.0), atol=1e-3)
    with pytest.raises(ConfigError, match=r"eta: must be in \[0, 1\]"):
        run(eta=1.5)


def test_images_do_not_depend_on_batch_size(pipe):
    a = sample(pipe, SETS, sampler="dpm", num_steps=5, seed=4, batch_size=3).images
    b = sample(pipe, SETS, sampler="dpm", num_steps=5, seed=4, batch_size=1).images
    c = sample(pipe, SETS, sampler="dpm", num_steps=5, seed=5, batch_size=3).images
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c)


def test_pipeline_call_returns_pil_and_defaults_travel(pipe, tmp_path):
    images = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=4, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 1 and images[0].size == (64, 64) and images[0].mode == "RGB"
    pipe.save_pretrained(tmp_path)
    loaded = ConditionalDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    tiny = PROFILES["tiny"].sample
    assert loaded.config.default_num_inference_steps == tiny.num_steps
    assert loaded.config.default_guidance_scale == tiny.guidance_scale
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.scheduler.config.prediction_type == PROFILES["tiny"].schedule.prediction_type
    a = pipe(labels=SETS, generator=generators(0, 3), output_type="pt").images
    assert torch.equal(a, loaded(labels=SETS, generator=generators(0, 3), output_type="pt").images)


def test_any_diffusers_scheduler_can_be_swapped_in(pipe):
    from diffusers import EulerDiscreteScheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    x = pipe(labels=SETS[:1], num_inference_steps=5, output_type="pt",
             generator=torch.Generator().manual_seed(0)).images
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()


def test_bad_labels_are_rejected(pipe):
    with pytest.raises(LabelError, match="unknown object 'red spere'"):
        pipe(labels=[["red spere"]], num_inference_steps=2)


def test_load_pipeline_errors(tmp_path):
    from lab6.errors import CheckpointError
    with pytest.raises(CheckpointError, match="not found"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no pipeline"):
        load_pipeline(tmp_path)


def test_load_pipeline_refuses_diverged_weights(pipe, tmp_path):
    """NaN weights (a diverged training) are a one-line error, not images of noise that score by chance."""
    from lab6.errors import CheckpointError
    with torch.no_grad():
        next(pipe.unet.parameters()).fill_(float("nan"))
    pipe.save_pretrained(tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"1 weight tensors hold NaN or inf \(first: .*\); the training that "
                                              r"wrote it diverged"):
        load_pipeline(tmp_path / "nan", device="cpu")


def test_a_run_whose_export_is_behind_its_newest_checkpoint_samples_the_checkpoint(course_dir, tmp_path, capsys):
    """The export records its step; when the run's newest checkpoint is another one (a run killed before its
    export, or resumed from an earlier step), sampling takes that checkpoint and says so."""
    import json

    from lab6.config import load_config
    from lab6.sample import resolve_model
    from lab6.train import train
    run = train(load_config("tiny", output_dir=str(tmp_path / "run"), data_root=str(course_dir), validate_num=0,
                            train={"max_steps": 4, "checkpoint_every": 2}), progress=False)
    assert json.loads((run / "pipeline" / "lab6_step.json").read_text()) == {"step": 4}
    assert resolve_model(run) == ("pipeline", run / "pipeline")
    (run / "pipeline" / "lab6_step.json").write_text('{"step": 2}')
    capsys.readouterr()
    assert resolve_model(run) == ("checkpoint", run / "checkpoint-4")
    assert "pipeline is from step 2, but the run's newest checkpoint is checkpoint-4" in capsys.readouterr().err
    (run / "pipeline" / "lab6_step.json").unlink()  # an export without the record (pretrained/quick): as before
    assert resolve_model(run) == ("pipeline", run / "pipeline")


def test_sample_split_writes_nothing_when_the_evaluator_refuses(pipe, tmp_path):
    """Scoring comes first: images the evaluator refuses leave the previous deliverables and metrics as they were."""
    from lab6.errors import DataError
    from lab6.sample import sample_split

    class Refusing:
        def score(self, images, labels):
            raise DataError("images hold NaN")

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "test_metrics.json").write_text("{}")
    with pytest.raises(DataError):
        sample_split(pipe, SETS, tmp_path / "images", "test", evaluator=Refusing(), num_steps=2)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["test_metrics.json"]


def test_sample_split_writes_the_deliverables(pipe, tmp_path):
    from PIL import Image

    from lab6.sample import sample_split

    class CountingEvaluator:  # stands in for lab6.evaluator.Evaluator: pooled hits / labels
        def score(self, images, labels):
            assert images.shape == (len(labels), 3, 64, 64)
            return 2, sum(map(len, labels))

    sets = SETS * 3  # 9 sets: two grid rows
    m = sample_split(pipe, sets, tmp_path / "images", "test", evaluator=CountingEvaluator(), seed=1,
                     sampler="dpm", num_steps=3, guidance_scale=1.5)
    assert (m["accuracy"], m["hits"], m["labels"]) == (round(2 / 18, 6), 2, 18)
    assert (m["sampler"], m["steps"], m["guidance"], m["seed"]) == ("dpm", 3, 1.5, 1)
    names = sorted(p.name for p in (tmp_path / "images" / "test").iterdir())
    assert names == sorted(f"{i}.png" for i in range(9))
    assert Image.open(tmp_path / "images" / "test" / "8.png").size == (64, 64)
    assert Image.open(tmp_path / "images" / "test_grid.png").size == (8 * 66 + 2, 2 * 66 + 2)
    import json
    assert json.loads((tmp_path / "images" / "test_metrics.json").read_text()) == m


def _readme_pipeline_example() -> str:
    """The README's ```python block that loads a model with from_pretrained."""
    import re

    from tests.conftest import REPO
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return next(b for b in blocks if "ConditionalDDPMPipeline.from_pretrained" in b)


@pytest.mark.parametrize("model", ["shipped", "export"])
def test_from_pretrained_works_in_a_fresh_interpreter(model, course_dir, tmp_path):
    """The README's example, run by a new Python that has imported nothing of lab6 but lab6.pipeline, loads the
    shipped model and a `lab6 train` export and samples an image (diffusers imports only modules already loaded)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.conftest import REPO
    if model == "shipped":
        folder = REPO / "pretrained" / "quick"
    else:
        from lab6.config import load_config
        from lab6.train import train
        run = train(load_config("tiny", output_dir=str(tmp_path / "run"), data_root=str(course_dir), validate_num=0,
                                train={"max_steps": 1}), progress=False)
        folder = run / "pipeline"
    code = _readme_pipeline_example().replace('"pretrained/quick"', repr(str(folder)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Image.open(tmp_path / "red_sphere_cyan_cube.png").size == (64, 64)


@pytest.mark.parametrize("entry, why", [(["lab6.nosuch", "ConditionalUNet"], "No module named 'lab6.nosuch'"),
                                        (["lab6.model", "NoSuchUNet"], "it has no NoSuchUNet"),
                                        (["lab6.__main__", "main"], "not a public lab6 module name")])
def test_a_bad_lab6_library_in_model_index_is_a_one_line_error(pipe, tmp_path, entry, why):
    """A component whose lab6 module or class does not exist names the file and the entry (and runs no CLI)."""
    import json
    import re

    from lab6.errors import CheckpointError
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index | {"unet": entry}))
    msg = f"{tmp_path / 'model_index.json'}: unet: cannot load {'.'.join(entry)} ({why})"
    with pytest.raises(CheckpointError, match=re.escape(msg)) as e:
        ConditionalDDPMPipeline.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=re.escape(msg)):
        load_pipeline(tmp_path, device="cpu")
