"""Notebook 03's live training: where it starts (random weights or a shipped model), its recipe, and a time
budget turned into a step count with evenly spaced validations."""
from __future__ import annotations

import json

import matplotlib
import pytest
from PIL import Image

from lab6.config import ModelConfig, load_config
from lab6.errors import CheckpointError, ConfigError
from lab6.model import ConditionalUNet
from lab6.plots import plot_validation_grids
from lab6.run import PRETRAINED_DIR, RunConfig, training_recipe, training_start
from lab6.train import VALIDATION_SHARE, fit_to_budget, steps_in_budget, validation_steps
from tests.conftest import REPO, write_course_layout

matplotlib.use("Agg")


def test_quick_fine_tunes_its_shipped_model_on_data_that_are_not_the_default_renders(tmp_path):
    course = write_course_layout(tmp_path / "course")
    assert training_start("quick", course) == PRETRAINED_DIR / "quick"
    assert training_start("quick", course, "none") is None
    assert training_start("full", course) is None and training_start("seed", course) is None


def test_on_the_default_renders_quick_trains_from_random_weights(tmp_path):
    synth = REPO / "data" / "synth"
    if not (synth / ".synth.json").exists():
        pytest.skip("data/synth is not rendered here")
    assert training_start("quick", synth) is None
    assert training_recipe("quick", None) == REPO / "configs" / "quick-live.yaml"


def test_each_start_has_its_recipe():
    assert training_recipe("quick", PRETRAINED_DIR / "quick") == REPO / "configs" / "quick-finetune.yaml"
    assert training_recipe("quick", None) == REPO / "configs" / "quick-live.yaml"
    assert training_recipe("tiny", None) is None  # no recipe: the profile as it is


def test_the_finetune_recipe_keeps_the_shipped_architecture():
    shipped = ConditionalUNet.load_config(PRETRAINED_DIR / "quick" / "unet")
    model = load_config("quick", REPO / "configs" / "quick-finetune.yaml").model
    defaults = vars(ModelConfig())  # keys newer than the export: the model's default
    for key, value in vars(model).items():
        assert json.dumps(shipped.get(key, defaults[key])) == json.dumps(value), key


def test_the_live_recipe_draws_64x64_on_a_narrower_net():
    live = load_config("quick", REPO / "configs" / "quick-live.yaml")
    quick = load_config("quick")
    assert live.model.output_size == quick.model.output_size == 64
    assert sum(live.model.block_out_channels) < sum(quick.model.block_out_channels)


def test_a_bad_init_from_names_the_option(tmp_path):
    with pytest.raises(CheckpointError, match=r"^--init-from .*nowhere: no such folder"):
        RunConfig(init_from=str(tmp_path / "nowhere")).validate()
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match=r"^--init-from .*half: not a lab6 export"):
        RunConfig(init_from=str(tmp_path / "half")).validate()


def test_a_bad_recipe_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        RunConfig(recipe=str(bad)).validate()


def test_resolving_a_run_fills_in_the_start_and_the_recipe(tmp_path):
    course = write_course_layout(tmp_path / "course")
    cfg = RunConfig(profile="quick", data_root=str(course), run_dir=str(tmp_path / "run")).resolved()
    assert cfg.init_from == str((PRETRAINED_DIR / "quick").resolve())
    assert cfg.recipe == str((REPO / "configs" / "quick-finetune.yaml").resolve())
    cold = RunConfig(profile="quick", data_root=str(course), run_dir=str(tmp_path / "run"), init_from="none")
    assert cold.resolved().init_from == "none"
    assert cold.resolved().recipe == str((REPO / "configs" / "quick-live.yaml").resolve())
    assert {"init_from", "recipe"} <= set(cfg.notebook_parameters())
    fresh = RunConfig(profile="quick", data_root=str(tmp_path / "synth"), run_dir=str(tmp_path / "run")).resolved()
    assert fresh.init_from == "none"  # a fresh clone: the default renders are not written yet, and will be
    assert fresh.recipe == str((REPO / "configs" / "quick-live.yaml").resolve())


def test_a_budget_becomes_steps_that_leave_room_for_validation():
    # 100 img/s for 10 minutes is 60 000 images; 15 % kept for validation, the loop at 0.8 of the measured rate
    assert steps_in_budget(100.0, 50, 10.0) == int(60000 * (1 - VALIDATION_SHARE) * 0.8 / 50)
    assert steps_in_budget(0.01, 64, 0.1) == 1


def test_validations_are_log_spaced_with_the_last_at_the_end():
    assert validation_steps(1600) == (100, 200, 400, 800)  # and 1600 itself, the validation after training
    assert validation_steps(1600, points=3) == (400, 800)
    assert validation_steps(6) == (1, 3) and validation_steps(1) == ()


def test_fit_to_budget_plans_steps_and_five_validations():
    cfg = load_config("tiny", train={"max_steps": 10_000, "device": "cpu"})
    planned, img_per_s = fit_to_budget(cfg, 0.05)
    assert img_per_s > 0
    assert 1 <= planned.train.max_steps <= 10_000 and planned.train.max_minutes == 0.05
    assert planned.train.validate_every == 0
    assert planned.train.validate_at == validation_steps(planned.train.max_steps)
    capped, _ = fit_to_budget(load_config("tiny", train={"max_steps": 3, "device": "cpu"}), 60.0)
    assert capped.train.max_steps == 3  # never more than the profile's own


def test_validation_grids_are_titled_with_the_live_accuracy(tmp_path):
    grids = []
    for step in (10, 20, 30):
        path = tmp_path / f"test-step-{step:06d}.png"
        Image.new("RGB", (64, 32)).save(path)
        grids.append((step, path))
    records = [{"step": 10, "loss": 1.0}, {"step": 10, "test_acc": 0.1, "new_test_acc": 0.2},
               {"step": 30, "test_acc": 0.5}]
    fig = plot_validation_grids(grids, records, "test.json,")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "test.json, step 10  |  top-k test 0.10, new_test 0.20"
    assert titles[1] == "test.json, step 20" and titles[2].endswith("top-k test 0.50")
    many = plot_validation_grids(grids * 3, records, most=4)
    assert len(many.axes) == 4


def test_measure_speed_cuts_its_steps_on_a_slow_machine(monkeypatch):
    """Eleven steps where they are quick; one warm-up and one timed step where a step outlasts the time allowed
    (a GPU profile's batch on a CPU took 7 minutes to measure)."""
    import lab6.train as T
    calls, real = [], T.diffusion_loss
    monkeypatch.setattr(T, "diffusion_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = load_config("tiny", train={"device": "cpu"})
    assert T.measure_speed(cfg) > 0 and len(calls) == 11
    calls.clear()
    assert T.measure_speed(cfg, max_seconds=1e-9) > 0 and len(calls) == 2
