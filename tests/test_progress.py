"""What `lab6 run` prints while it works: cells as they start, training's step / loss / ETA."""
import json

import nbformat
import pytest

from lab6.progress import CellPrinter, TrainingWatch, eta_seconds, first_code_line


def test_eta_is_the_first_of_the_step_and_time_limits():
    assert eta_seconds(step=100, steps_per_s=2.0, max_steps=300, elapsed=60, max_minutes=0) == 100
    assert eta_seconds(step=100, steps_per_s=2.0, max_steps=300, elapsed=60, max_minutes=2) == 60
    assert eta_seconds(step=100, steps_per_s=0.0, max_steps=300, elapsed=200, max_minutes=3) == 0


def test_first_line_skips_comments_and_cuts_long_lines():
    assert first_code_line("# a comment\n\nx = train(cfg)\ny = 2") == "x = train(cfg)"
    assert first_code_line("# only\n# comments") == "(comments only)"
    assert len(first_code_line("x" * 200, width=40)) == 40


def test_cell_printer_numbers_code_cells_and_names_parameter_cells():
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), params, nbformat.v4.new_code_cell("out = train(cfg)")]
    lines = []
    printer = CellPrinter("[3/5] 03_training.ipynb", echo=lambda s, flush=False: lines.append(s))
    for i, cell in enumerate(nb.cells):
        printer(nb, cell, i)
    assert lines == ["[3/5] 03_training.ipynb · cell 1/2: (the notebook's default parameters)",
                     "[3/5] 03_training.ipynb · cell 2/2: out = train(cfg)"]


def test_training_watch_prints_the_latest_step_loss_and_time_left(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  max_steps: 1000\n  max_minutes: 20.0\n  batch_size: 64\n")
    lines = []
    watch = TrainingWatch(tmp_path, echo=lambda s, flush=False: lines.append(s))
    assert watch.poll() is None  # no metrics yet
    recs = [{"step": 25, "loss": 0.5, "lr": 1e-4, "img_per_s": 64.0, "elapsed_s": 25.0},
            {"step": 50, "loss": 0.25, "lr": 1e-4, "img_per_s": 64.0, "elapsed_s": 50.0},
            {"step": 50, "test_acc": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 75, "lo')
    msg = watch.poll()  # the half-written last line waits for the next poll
    assert msg == "    training: step 50/1000, loss 0.2500, 64 img/s, about 15:50 left"  # 950 steps at 1 step/s
    assert watch.poll() is None  # nothing new
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('ss": 0.125, "img_per_s": 64.0, "elapsed_s": 1190.0}\n')
    assert watch.poll().startswith("    training: step 75/1000, loss 0.1250, 64 img/s, about 0:10 left")
    assert lines[-1].startswith("    training: step 75/1000")


@pytest.mark.parametrize("args, message", [
    (["--guidance", "-1"], "--guidance: expected a scale >= 0 (1 = no guidance), got -1.0"),
    (["--steps", "0"], "--steps: expected a positive whole number, got 0"),
    (["--max-minutes", "0"], "--max-minutes: expected a positive number of minutes, got 0.0"),
    (["--device", "tpu"], "--device"),
])
def test_run_options_are_checked_before_anything_runs(args, message, tmp_path):
    from tests.test_cli import run_cli
    r = run_cli("run", "--profile", "tiny", "--out", str(tmp_path / "run"), *args)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
