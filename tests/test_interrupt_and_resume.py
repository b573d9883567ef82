"""Interrupted work resumes exactly: checkpoints and exports carry their config, partial saves are skipped,
Ctrl-C and SIGTERM end training with a checkpoint, and a resumed run repeats an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab6.checkpoints import checkpoint_problem, latest_checkpoint, load_run_config
from lab6.config import load_config
from lab6.train import train
from tests.cli_world import cut_file, run_cli, subprocess_env, write_file


def test_checkpoints_and_exports_carry_their_config(world):
    cfg = load_run_config(world.run).to_dict()
    assert load_run_config(world.ckpt).to_dict() == cfg == load_run_config(world.export).to_dict()
    assert cfg["profile"] == "tiny" and cfg["train"]["max_steps"] == 2
    state = json.loads((world.ckpt / "state.json").read_text())
    assert set(state["files"]) >= {"model/diffusion_pytorch_model.safetensors", "optimizer.pt", "random_states_0.pt"}
    assert checkpoint_problem(world.ckpt) is None


def test_resume_latest_skips_partial_saves_and_restores_an_interrupted_replace(world, tmp_path, capsys):
    """A hard kill can leave .checkpoint-N.tmp (cut during writing) or .checkpoint-N.old with checkpoint-N gone
    (cut between the two renames); a cut copy can leave an incomplete checkpoint-N. Resume handles all three."""
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    os.replace(run / "checkpoint-2", run / ".checkpoint-2.old")  # killed between the renames of a re-save of 2
    shutil.copytree(run / "checkpoint-1", run / ".checkpoint-3.tmp")  # killed while writing 3
    shutil.copytree(run / ".checkpoint-2.old", run / "checkpoint-4")
    cut_file(run / "checkpoint-4" / "optimizer.pt")  # a cut copy
    config = write_file(tmp_path, "c.yaml", "train:\n  validate_num: 0\n")
    rc, err = run_cli(["train", "--profile", "tiny", "--config", config, "--data", world.ds, "--out", run, "--max-steps",
                    3, "--resume", "latest", "--no-progress"], capsys)
    assert rc == 0, err
    assert "restoring checkpoint-2 from .checkpoint-2.old" in err
    assert "removing .checkpoint-3.tmp" in err
    assert f"skipping {run / 'checkpoint-4'}: incomplete (optimizer.pt has 100 bytes" in err
    assert not list(run.glob(".checkpoint-*"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed from 2, not from 1


def _wait_for(cond, proc, log: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training ended early (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for training:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def _latest_step(run: Path) -> int:
    p = latest_checkpoint(run, warn=False)
    return -1 if p is None else int(p.name.split("-")[1])


def _losses(run: Path) -> list[tuple[int, float, float]]:
    return [(m["step"], m["loss"], m["lr"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_sigterm_ends_training_like_ctrl_c(world, tmp_path):
    """A job scheduler's SIGTERM: the step under way finishes, then a checkpoint and the export, exit 130."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lab6", "train", "--profile", "tiny", "--data", str(world.ds), "--out", str(run),
           "--max-steps", "100000", "--checkpoint-every", "2", "--no-progress"]
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: _latest_step(run) >= 2, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    k = _latest_step(run)
    assert f"interrupted at step {k}: writing a checkpoint and the export" in log.read_text()
    assert checkpoint_problem(run / f"checkpoint-{k}") is None and (run / "pipeline" / "model_index.json").is_file()


def test_ctrl_c_then_sigkill_then_resume_gives_the_uninterrupted_losses(world, tmp_path, capsys):
    """Real `lab6 train` subprocesses: Ctrl-C (SIGINT) ends with a checkpoint, the export and exit 130; a resumed
    run killed with SIGKILL mid-run leaves its last checkpoint intact; resuming that reproduces, loss for loss and
    byte for byte, a run that was never interrupted. A constant learning rate lets the resumed run stop at a step
    chosen after the kill (with the default cosine schedule, max_steps shapes every step's learning rate)."""
    config = write_file(tmp_path, "c.yaml", "train:\n  lr_scheduler: constant\n  checkpoint_every: 2\n  validate_num: 0\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lab6", "train", "--profile", "tiny", "--config", str(config), "--data",
           str(world.ds), "--out", str(run), "--max-steps", "100000", "--no-progress"]
    log = tmp_path / "log.txt"

    with open(log, "w") as f:
        # a shell's background job (`make test &`) starts with SIGINT ignored, and children inherit that: restore
        # the default so Python turns the signal into KeyboardInterrupt, as a terminal's Ctrl-C would
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(lambda: _latest_step(run) >= 2, proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and text.rstrip().endswith("interrupted"), text[-2000:]
    k1 = _latest_step(run)
    assert f"interrupted at step {k1}: writing a checkpoint and the export" in text
    assert (run / "pipeline" / "model_index.json").is_file()

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd + ["--resume", "latest"], cwd=tmp_path, env=subprocess_env(), stdout=f,
                                stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: _latest_step(run) >= k1 + 2, proc, log)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=60)
    assert f"resumed from {run / f'checkpoint-{k1}'} at step {k1}" in log.read_text()
    k2 = _latest_step(run)
    assert k2 > k1 and checkpoint_problem(run / f"checkpoint-{k2}") is None

    end = k2 + 3
    rc, err = run_cli(["train", "--profile", "tiny", "--config", config, "--data", world.ds, "--out", run,
                    "--max-steps", end, "--resume", "latest", "--no-progress"], capsys)
    assert rc == 0, err
    reference = train(load_config("tiny", config, output_dir=str(tmp_path / "ref"), data_root=str(world.ds),
                                  max_steps=end), progress=False)
    assert _losses(run) == _losses(reference)
    assert [m[0] for m in _losses(run)] == list(range(1, end + 1))
    for part in ("model", "ema"):
        f = f"checkpoint-{end}/{part}/diffusion_pytorch_model.safetensors"
        assert (run / f).read_bytes() == (reference / f).read_bytes(), part
