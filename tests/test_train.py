"""Training on the tiny profile: loss, exact resume, stop conditions, multi-process launch and the real CLI."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from lab6 import labels as L
from lab6 import train as T
from lab6.checkpoints import list_checkpoints
from lab6.config import PROFILES, load_config
from lab6.errors import ConfigError, TrainingError
from lab6.model import ConditionalUNet, build_model
from lab6.schedules import alphas_cumprod
from lab6.train import BatchOrder, diffusion_loss, train
from tests.conftest import REPO, write_course_layout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_course_layout(tmp_path_factory.mktemp("data") / "ds", n=12)


def tiny_cfg(out, data, **train):
    return load_config("tiny", output_dir=str(out), data_root=str(data), validate_num=0,
                       train={"max_steps": 6, "checkpoint_every": 3} | train)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _wrap_loss(monkeypatch, effect) -> dict:
    """Route lab6.train.diffusion_loss through effect(call, model, loss) -> loss (call counts from 1, in the
    returned dict's "n"): how the tests below break, spike or interrupt a real training run at a chosen step."""
    import lab6.train as T
    real, calls = T.diffusion_loss, {"n": 0}

    def wrapped(model, *a, **k):
        calls["n"] += 1
        return effect(calls["n"], model, real(model, *a, **k))  # the step's noise, t and dropout are drawn first

    monkeypatch.setattr(T, "diffusion_loss", wrapped)
    return calls


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_loss_falls_on_a_fixed_batch():
    """Algorithm 1 on one batch with the same t and eps each step: the network must fit it."""
    torch.manual_seed(0)
    cfg = PROFILES["tiny"]
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    ac = alphas_cumprod(cfg.schedule).float()
    x0 = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = L.encode_batch([[L.OBJECTS[i]] for i in range(8)])
    losses = []
    for _ in range(40):
        loss = diffusion_loss(model, x0, y, ac, torch.Generator().manual_seed(2), prediction_type="v_prediction")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_timestep_sampling_estimates_the_min_snr_loss(sampling):
    """Both timestep samplers estimate E_t[w(t) loss(t)] with t ~ U{0..T-1}: checked where loss(t) is known.

    With x0 = 0 and a network that outputs 0, the v-prediction target is sqrt(alphas_cumprod[t]) * eps, so the
    per-sample loss is alphas_cumprod[t] (times mean(eps^2) ~ 1) and the exact value is mean_t(w(t) * ac[t]).
    """
    from lab6.train import min_snr_weights
    ac = alphas_cumprod(PROFILES["quick"].schedule).float()
    w = min_snr_weights(ac, 5.0, "v_prediction")
    exact = float((w * ac).mean())
    x0 = torch.zeros(40000, 1, 2, 2)
    y = torch.zeros(40000, 24)
    loss = diffusion_loss(lambda xt, t, labels: torch.zeros_like(xt), x0, y, ac, torch.Generator().manual_seed(0),
                          prediction_type="v_prediction", min_snr_gamma=5.0, timestep_sampling=sampling)
    assert abs(float(loss) - exact) < 0.02 * exact, (float(loss), exact)
    uniform_mean = float(ac.mean())  # what an unweighted loss would estimate: far from `exact`
    assert abs(uniform_mean - exact) > 0.2 * exact


def test_importance_sampling_needs_min_snr():
    with pytest.raises(ConfigError, match="timestep_sampling"):
        load_config("tiny", timestep_sampling="importance")
    ac = alphas_cumprod(PROFILES["tiny"].schedule).float()
    with pytest.raises(ConfigError, match="min_snr_gamma"):
        diffusion_loss(lambda xt, t, labels: xt, torch.zeros(2, 3, 4, 4), torch.zeros(2, 24), ac,
                       torch.Generator(), prediction_type="v_prediction", timestep_sampling="importance")


def test_pixel_weights_ignore_what_they_zero_and_keep_the_scale():
    """A weighted mean over pixels: zero weight hides errors there, and a constant weight changes nothing."""
    ac = alphas_cumprod(PROFILES["tiny"].schedule).float()
    x0, y = torch.rand(4, 3, 4, 4) * 2 - 1, torch.zeros(4, 24)
    left = torch.zeros(4, 1, 4, 4)
    left[..., :2] = 1.0

    def wrong_on_the_right(xt, t, labels):
        return xt + torch.cat([torch.zeros(4, 3, 4, 2), torch.full((4, 3, 4, 2), 1000.0)], -1)

    def loss(model, pw):
        return float(diffusion_loss(model, x0, y, ac, torch.Generator().manual_seed(0), pixel_weight=pw))

    assert loss(lambda xt, t, labels: xt, left) == pytest.approx(loss(wrong_on_the_right, left))
    assert loss(lambda xt, t, labels: xt, 3 * torch.ones(4, 1, 4, 4)) == pytest.approx(
        loss(lambda xt, t, labels: xt, None))
    assert loss(wrong_on_the_right, None) > 1e5


def test_foreground_weights_follow_mirrored_images():
    """make_batch mirrors the pixel weights with their images; the loop trains with them."""
    from lab6.train import make_batch
    images = torch.full((8, 3, 4, 4), 100, dtype=torch.uint8)
    images[:, :, 1, 0] = 250  # one bright "object" pixel at the left edge
    masks = images[:, 0] == 250  # (8, 4, 4)
    x0, _, pw = make_batch(images, torch.zeros(8, 24), torch.arange(8), torch.Generator().manual_seed(0), True,
                           "cpu", masks, foreground_weight=2.0)
    assert torch.equal(pw[:, 0] == 3.0, x0[:, 0] > 0.9)  # weight 1 + 2 exactly where the object is
    assert (pw[:, 0, 1, 3] == 3.0).any() and (pw[:, 0, 1, 0] == 3.0).any()  # some mirrored, some not
    assert make_batch(images, torch.zeros(8, 24), torch.arange(8), torch.Generator(), True, "cpu")[2] is None
    with pytest.raises(ConfigError, match="foreground_weight"):
        load_config("tiny", foreground_weight=-1)


def test_foreground_weight_changes_the_training_loss(tmp_path):
    from lab6.synth import write_dataset
    scenes = tmp_path / "scenes"  # rendered scenes: objects on a floor, so the masks are the objects
    write_dataset(scenes, scenes=4, seed=0, workers=1, progress=False)
    plain = train(tiny_cfg(tmp_path / "plain", scenes, max_steps=2), progress=False)
    fg = train(tiny_cfg(tmp_path / "fg", scenes, max_steps=2, foreground_weight=4.0), progress=False)
    a, b = _metrics(plain), _metrics(fg)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2]
    assert all(0 < m["loss"] < 10 for m in b) and a[0]["loss"] != b[0]["loss"]


def test_warmup_stable_decay_schedule(tmp_path, dataset):
    from lab6.train import wsd_factor
    f = [wsd_factor(s, warmup=2, max_steps=10, decay_fraction=0.3) for s in range(11)]
    assert f[:2] == [0.5, 1.0] and f[2:7] == [1.0] * 5  # warm-up, then constant
    assert f[7:] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])  # the last 3 steps decay to 0
    with pytest.raises(ConfigError, match="lr_decay_fraction"):
        load_config("tiny", lr_scheduler="warmup_stable_decay", lr_decay_fraction=0.0)
    with pytest.raises(ConfigError, match="warmup_stable_decay"):  # the message lists the valid names
        load_config("tiny", lr_scheduler="wsd")
    # Through the real loop, resumed mid-decay: the logged LRs follow the schedule and match an uninterrupted run.
    cfg = dict(lr_scheduler="warmup_stable_decay", lr_decay_fraction=0.5, max_steps=6, lr_warmup_steps=1)
    full = train(tiny_cfg(tmp_path / "a", dataset, **cfg), progress=False)
    lrs = {m["step"]: m["lr"] for m in _metrics(full)}
    peak = load_config("tiny").train.lr
    assert [lrs[s] / peak for s in range(1, 7)] == pytest.approx([1, 1, 1, 2 / 3, 1 / 3, 0])  # LR for the next step
    resumed = train(tiny_cfg(tmp_path / "b", dataset, **cfg), resume=str(full / "checkpoint-3"), progress=False)
    assert [(m["step"], m["lr"]) for m in _metrics(resumed)] == [(s, lrs[s]) for s in (4, 5, 6)]


def test_batch_order_is_seeded_epochs():
    order = BatchOrder(10, seed=3)
    first = torch.cat([order.indices(s, 5) for s in range(2)])
    assert sorted(first.tolist()) == list(range(10))  # one epoch = a permutation
    assert torch.equal(order.indices(3, 5), BatchOrder(10, seed=3).indices(3, 5))  # no state
    assert not torch.equal(first, torch.cat([BatchOrder(10, seed=4).indices(s, 5) for s in range(2)]))
    assert len(order.indices(0, 25)) == 25  # a batch larger than the dataset spans epochs


def test_resume_reproduces_the_uninterrupted_run(tmp_path, dataset):
    full = train(tiny_cfg(tmp_path / "a", dataset), progress=False)
    assert [s for s, _ in list_checkpoints(full)] == [3, 6]
    copy = tmp_path / "copy-of-3"
    shutil.copytree(full / "checkpoint-3", copy)
    resumed = train(tiny_cfg(tmp_path / "b", dataset), resume=str(copy), progress=False)
    for part in ("model", "ema"):
        f = f"checkpoint-6/{part}/diffusion_pytorch_model.safetensors"
        assert (full / f).read_bytes() == (resumed / f).read_bytes(), part
    assert (full / "pipeline/unet/diffusion_pytorch_model.safetensors").read_bytes() == \
        (resumed / "pipeline/unet/diffusion_pytorch_model.safetensors").read_bytes()
    losses = {m["step"]: m["loss"] for m in _metrics(full)}
    assert [(m["step"], m["loss"]) for m in _metrics(resumed)] == [(s, losses[s]) for s in (4, 5, 6)]


def test_resume_latest_and_total_limit(tmp_path, dataset):
    run = train(tiny_cfg(tmp_path / "r", dataset, max_steps=4, checkpoint_every=1, checkpoints_total_limit=2),
                progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [3, 4]
    assert not list(run.glob(".checkpoint-*"))  # no temporary folders left behind
    seen = []
    train(tiny_cfg(run, dataset, max_steps=5, checkpoint_every=1, checkpoints_total_limit=2), resume="latest",
          progress=False, callback=seen.append)
    assert [s for s, _ in list_checkpoints(run)] == [4, 5]
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4, 5]
    assert seen == _metrics(run)[-1:]  # the callback sees each new record


def test_a_fresh_run_does_not_mix_with_an_old_one(tmp_path, dataset):
    from lab6.errors import CheckpointError
    run = train(tiny_cfg(tmp_path / "o", dataset, max_steps=1), progress=False)
    with pytest.raises(CheckpointError, match="checkpoint-1 from an earlier run"):
        train(tiny_cfg(run, dataset, max_steps=2), progress=False)


def test_time_budget_ends_with_checkpoint_and_export(tmp_path, dataset):
    run = train(tiny_cfg(tmp_path / "t", dataset, max_steps=1000, max_minutes=1e-9), progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [0]
    assert (run / "pipeline" / "model_index.json").is_file()


@pytest.mark.parametrize("how", ["signal", "forced"])
def test_ctrl_c_then_resume_repeats_an_uninterrupted_run(tmp_path, dataset, monkeypatch, how):
    """Ctrl-C (SIGINT) lets the step under way finish, then checkpoints and exports; a KeyboardInterrupt raised
    mid-step (a second Ctrl-C) checkpoints the step before, its noise RNG rewound. Either way the resumed run's
    losses equal those of a run never interrupted."""
    import signal as S
    ref = train(tiny_cfg(tmp_path / "ref", dataset, max_steps=6, checkpoint_every=100), progress=False)

    def interrupting(call, model, loss):
        if call == 3 and how == "signal":
            os.kill(os.getpid(), S.SIGINT)
        elif call == 3:
            raise KeyboardInterrupt
        return loss

    _wrap_loss(monkeypatch, interrupting)
    run = tmp_path / how
    # a background `make test &` starts with SIGINT ignored, which training respects: restore Python's handler
    old = S.signal(S.SIGINT, S.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_cfg(run, dataset, max_steps=6, checkpoint_every=100), progress=False)
    finally:
        S.signal(S.SIGINT, old)
    assert [s for s, _ in list_checkpoints(run)] == ([3] if how == "signal" else [2])
    assert (run / "pipeline" / "model_index.json").is_file()
    monkeypatch.undo()
    train(tiny_cfg(run, dataset, max_steps=6, checkpoint_every=100), resume="latest", progress=False)
    losses = lambda folder: [r["loss"] for r in _metrics(folder) if "loss" in r]  # noqa: E731
    assert losses(run) == losses(ref) and len(losses(ref)) == 6


def test_an_interrupt_inside_an_optimizer_update_saves_nothing(tmp_path, dataset, monkeypatch, capsys):
    """Weights cut halfway through an update belong to no step: nothing is saved, the last checkpoint is named."""
    from diffusers.training_utils import EMAModel
    calls = {"n": 0}
    real = EMAModel.step

    def cut(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(EMAModel, "step", cut)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tmp_path / "u", dataset, max_steps=8, checkpoint_every=2), progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "u")] == [2]
    assert not (tmp_path / "u" / "pipeline").exists()
    assert "interrupted during the update of step 4: nothing saved; the last checkpoint is" in capsys.readouterr().err


def test_a_diverged_loss_stops_training_without_writing_nan_weights(tmp_path, dataset, monkeypatch):
    """Once the loss is NaN the run stops with a one-line error naming the last good checkpoint, and writes no
    checkpoint or export after it (a GPU run of the quick recipe diverged at step 6570: benchmarks/LOG.md)."""
    calls = _wrap_loss(monkeypatch, lambda call, model, loss: loss * float("nan") if call >= 4 else loss)
    with pytest.raises(TrainingError, match=r"training diverged: the loss is nan by step 4; the last checkpoint "
                                            r"written, .*checkpoint-3, predates it"):
        train(tiny_cfg(tmp_path / "d", dataset, max_steps=8, checkpoint_every=3), progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "d")] == [3]
    assert not (tmp_path / "d" / "pipeline").exists()
    assert all(math.isfinite(r["loss"]) for r in _metrics(tmp_path / "d") if "loss" in r)
    # a window that is not logged yet is checked before a checkpoint is written over it
    calls["n"] = 0
    with pytest.raises(TrainingError, match="by step 6; no checkpoint was written before it"):
        train(tiny_cfg(tmp_path / "w", dataset, max_steps=8, checkpoint_every=6, log_every=100), progress=False)
    assert list_checkpoints(tmp_path / "w") == []


def test_weights_that_turn_nan_after_the_last_logged_loss_are_not_saved(tmp_path, dataset, monkeypatch):
    """The final checkpoint and export check the weights too: an update can break them after the last loss was
    logged (here the last step's), and a time budget or Ctrl-C can end a run between logs."""
    def breaking(call, model, loss):
        if call == 5:
            next(model.parameters()).data.fill_(float("nan"))
        return loss

    _wrap_loss(monkeypatch, breaking)
    with pytest.raises(TrainingError, match=r"training diverged: the weights' norm is nan by step 5; the last "
                                            r"checkpoint written, .*checkpoint-3, predates it"):
        train(tiny_cfg(tmp_path / "n", dataset, max_steps=5, checkpoint_every=3), progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "n")] == [3]
    assert not (tmp_path / "n" / "pipeline").exists()


def test_resuming_changes_the_ema_settings_too(tmp_path, dataset):
    """train.ema_decay / ema_warmup of the resumed config apply (the checkpoint's used to win, silently)."""
    from diffusers.training_utils import EMAModel
    run = tmp_path / "e"
    train(tiny_cfg(run, dataset, max_steps=2, ema_decay=0.999), progress=False)
    seen = []
    real = EMAModel.step

    def spy(self, *a, **k):
        seen.append((self.decay, self.use_ema_warmup))
        return real(self, *a, **k)

    import unittest.mock
    with unittest.mock.patch.object(EMAModel, "step", spy):
        train(tiny_cfg(run, dataset, max_steps=4, ema_decay=0.5, ema_warmup=False), resume="latest", progress=False)
    assert seen == [(0.5, False), (0.5, False)]


def test_resuming_with_another_lr_trains_on_with_it(tmp_path, dataset, capsys):
    """The remedy for a diverging run, resuming with a lower train.lr, takes effect: the steps after the resume
    follow the new peak LR exactly as a run started with it would (the restored scheduler kept the old one)."""
    ref = train(tiny_cfg(tmp_path / "ref", dataset, max_steps=8, lr=1e-4), progress=False)
    run = tmp_path / "run"
    train(tiny_cfg(run, dataset, max_steps=4, lr=1e-3), progress=False)
    capsys.readouterr()
    train(tiny_cfg(run, dataset, max_steps=8, lr=1e-4), resume="latest", progress=False)
    assert "resuming checkpoint-4 with changed settings: train.max_steps 4 -> 8, train.lr 0.001 -> 0.0001" \
        in capsys.readouterr().out
    lrs = lambda folder: {r["step"]: r["lr"] for r in _metrics(folder) if "lr" in r}  # noqa: E731
    want, got = lrs(ref), lrs(run)
    assert [got[s] for s in range(5, 9)] == pytest.approx([want[s] for s in range(5, 9)], rel=1e-9)


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path, dataset, capsys):
    """Resuming in place from checkpoint-2 of a run that reached step 6 (e.g. back to before a divergence): the
    later checkpoints move to abandoned/, so the resumed run's own checkpoints are the newest and `latest` finds
    them, not the abandoned branch's."""
    run = tmp_path / "run"
    train(tiny_cfg(run, dataset, max_steps=6, checkpoint_every=2, checkpoints_total_limit=3), progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6]
    capsys.readouterr()
    cfg = tiny_cfg(run, dataset, max_steps=5, checkpoint_every=2, checkpoints_total_limit=3)
    train(cfg, resume=str(run / "checkpoint-2"), progress=False)
    assert "moved checkpoint-4, checkpoint-6 (after step 2, where this run resumes)" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 5]
    assert [s for s, _ in list_checkpoints(run / "abandoned")] == [4, 6]
    assert max(r["step"] for r in _metrics(run)) == 5
    # resuming from the latest checkpoint moves nothing
    train(tiny_cfg(run, dataset, max_steps=6, checkpoint_every=2, checkpoints_total_limit=3), resume="latest",
          progress=False)
    assert "moved" not in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(run)] == [4, 5, 6]


def test_a_misspelt_validation_split_is_named(tmp_path, dataset, capsys):
    """train.validate_splits entries without a label file are reported, not silently skipped."""
    cfg = load_config("tiny", output_dir=str(tmp_path / "v"), data_root=str(dataset), validate_num=2,
                      train={"max_steps": 1, "validate_splits": ["tset"], "validate_every": 0})
    train(cfg, progress=False)
    err = capsys.readouterr().err
    assert "warning: train.validate_splits: " in err and "tset.json not found; 'tset' is not validated" in err


def test_loss_spike_watch_warns_once_per_episode():
    """A smoothed loss 4x above its lowest warns once, not at every log, and again after it has come back down;
    window size does not matter, the warm-up is not watched, and a steady loss never warns."""
    from lab6.guards import LossSpikeWatch
    w = LossSpikeWatch(after=100)
    assert [w(50.0, 10, s) for s in range(10, 101, 10)] == [None] * 10  # warm-up: a high loss is not a spike
    assert [w(1.0, 10, s) for s in range(110, 1001, 10)] == [None] * 90  # falls, then steady
    msgs = [w(20.0, 1, s) for s in range(1001, 1101)]  # a spike, logged every step
    first = [i for i, m in enumerate(msgs) if m]
    assert len(first) == 1 and 5 <= first[0] <= 15, first
    assert f"at step {1001 + first[0]} is " in msgs[first[0]] and "x its lowest, 1 at step" in msgs[first[0]]
    assert [w(1.0, 100, s) for s in range(1200, 2001, 100)] == [None] * 9  # back down: re-armed
    assert any(w(20.0, 50, s) for s in range(2050, 2301, 50))


def test_a_loss_that_spikes_and_stays_finite_warns_and_training_goes_on(tmp_path, dataset, monkeypatch, capsys):
    """A run that diverges without NaN (the wider CPU hour: 0.02 -> 0.25-0.41) gets one warning naming the
    checkpoint before it, keeps that checkpoint past the pruning, and otherwise trains and exports as usual."""
    _wrap_loss(monkeypatch, lambda call, model, loss: loss * 20 if call > 120 else loss)
    run = train(tiny_cfg(tmp_path / "s", dataset, max_steps=250, checkpoint_every=50, checkpoints_total_limit=2,
                         log_every=1), progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if "may be diverging" in line]
    assert len(err) == 1, err
    assert re.search(r"at step 1[23]\d is \d+x its lowest.*checkpoint-100 predates it and is kept", err[0]), err[0]
    assert [s for s, _ in list_checkpoints(run)] == [100, 200, 250]  # pruned as usual, but for the one before
    assert (tmp_path / "s" / "pipeline" / "model_index.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path, dataset):
    """`accelerate launch` on 2 CPU processes (torchrun + gloo) runs two data-parallel steps unchanged."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "lab6", "train", "--profile", "tiny", "--data", str(dataset), "--out", str(out),
           "--max-steps", "2", "--device", "cpu", "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "batch 8 x 2 process(es)" in r.stdout
    ckpt = out / "checkpoint-2"
    assert (ckpt / "random_states_0.pt").is_file() and (ckpt / "random_states_1.pt").is_file()
    assert json.loads((ckpt / "state.json").read_text())["num_processes"] == 2
    assert [m["step"] for m in _metrics(out) if "loss" in m] == [1, 2]


def test_cli_train_then_sample(tmp_path, dataset):
    """The real entry point: `python -m lab6 train` on a tiny dataset, then `python -m lab6 sample`."""
    run, images = tmp_path / "run", tmp_path / "images"
    r = subprocess.run([sys.executable, "-m", "lab6", "train", "--profile", "tiny", "--data", str(dataset),
                        "--out", str(run), "--max-steps", "4", "--checkpoint-every", "2", "--no-progress"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "config.yaml").is_file() and (run / "pipeline" / "model_index.json").is_file()
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert [m["step"] for m in _metrics(run) if "loss" in m] == [1, 2, 3, 4]
    assert (run / "samples" / "test-step-000004.png").is_file()  # the end-of-run validation grid

    r = subprocess.run([sys.executable, "-m", "lab6", "sample", "--model", str(run), "--labels",
                        str(dataset / "test.json"), "--out", str(images), "--steps", "5", "--shift-patches",
                        "--no-progress"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(json.loads((dataset / "test.json").read_text()))
    files = sorted((images / "test").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in files] == [f"{i}.png" for i in range(n)]
    assert all(Image.open(p).size == (64, 64) for p in files)
    grid = Image.open(images / "test_grid.png")
    assert grid.size == (8 * 66 + 2, -(-n // 8) * 66 + 2)  # make_grid: 8 per row, 2 px padding
    m = json.loads((images / "test_metrics.json").read_text())
    assert {"accuracy", "hits", "labels", "sampler", "steps", "guidance", "shift_patches", "seed"} <= m.keys()
    assert (m["sampler"], m["steps"], m["guidance"], m["shift_patches"], m["seed"]) == ("ddim", 5, 2.0, True, 0)
    assert "test: accuracy" in r.stdout and "shifted patches" in r.stdout


def test_cli_errors_are_one_line(tmp_path, dataset, capsys):
    from lab6.cli import main
    assert main(["train", "--profile", "tiny", "--data", str(dataset), "--out", str(tmp_path / "x"),
                 "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checkpoint" in err and err.count("\n") == 1
    assert main(["sample", "--model", str(tmp_path / "none"), "--labels", str(dataset / "test.json"),
                 "--out", str(tmp_path / "i")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1
    assert main(["train", "--profile", "tiny", "--data", str(dataset), "--out", str(tmp_path / "y"),
                 "--max-steps", "0"]) == 1
    assert "train.max_steps: must be > 0" in capsys.readouterr().err


def test_init_from_starts_from_an_exports_weights(tmp_path, dataset, monkeypatch):
    first = train(tiny_cfg(tmp_path / "a", dataset), progress=False)
    seen = {}
    real = T.init_weights

    def spy(model, folder):
        real(model, folder)
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
    monkeypatch.setattr(T, "init_weights", spy)
    train(tiny_cfg(tmp_path / "b", dataset, init_from=str(first / "pipeline"), max_steps=1), progress=False)
    exported = ConditionalUNet.from_pretrained(first / "pipeline" / "unet").state_dict()
    assert seen and all(torch.equal(seen[k], v) for k, v in exported.items())
    other = load_config("tiny", output_dir=str(tmp_path / "c"), data_root=str(dataset), validate_num=0,
                        init_from=str(first / "pipeline"), model={"block_out_channels": [16, 16]})
    with pytest.raises(ConfigError, match="another architecture .*block_out_channels"):
        train(other, progress=False)
    grafted = load_config("tiny", output_dir=str(tmp_path / "e"), data_root=str(dataset), validate_num=0, max_steps=1,
                          init_from=str(first / "pipeline"), model={"object_tokens": 8})
    assert (train(grafted, progress=False) / "pipeline" / "unet").is_dir()  # a plain model grafted with tokens
    with pytest.raises(ConfigError, match="train.init_from: .*nothing: expected a model folder"):
        train(tiny_cfg(tmp_path / "d", dataset, init_from=str(tmp_path / "nothing")), progress=False)
    assert not (tmp_path / "d").exists()  # nothing written for a bad input


def test_export_dtype_float16_halves_the_exported_weights_only(tmp_path, dataset):
    from safetensors.torch import load_file
    run = train(tiny_cfg(tmp_path / "h", dataset, export_dtype="float16"), progress=False)
    weights = load_file(str(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    ema = load_file(str(list_checkpoints(run)[-1][1] / "ema" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in ema.values()} == {torch.float32}  # what a resume reads keeps full precision
    loaded = ConditionalUNet.from_pretrained(run / "pipeline" / "unet").state_dict()
    assert all(torch.equal(loaded[k].half(), v) for k, v in weights.items())
    with pytest.raises(ConfigError, match="train.export_dtype: must be 'float32' or 'float16', got 'bf16'"):
        tiny_cfg(tmp_path / "x", dataset, export_dtype="bf16")


def test_a_resumed_fine_tuning_keeps_the_stages_it_started_from(tmp_path, dataset):
    first = train(tiny_cfg(tmp_path / "a", dataset), progress=False)
    train(tiny_cfg(tmp_path / "b", dataset, init_from=str(first / "pipeline"), max_steps=3), progress=False)
    resumed = train(tiny_cfg(tmp_path / "b", dataset), resume="latest", progress=False)  # no init_from given
    stages = json.loads((resumed / "pipeline" / "stages.json").read_text())
    assert [s["steps"] for s in stages] == [6, 6] and stages[1]["init_from"] == str(first / "pipeline")


def test_the_full_profile_trains_exports_and_is_graded_as_trained_on_the_cpu(tmp_path, dataset):
    """`full` (the GPU profile) end to end at a tiny budget on the CPU: train, fp16 export, sample 64x64; a full
    run's notebooks 04-05 grade the model the run trained, on the default renders too."""
    from lab6 import data as D
    from lab6 import synth as S
    from lab6.run import run_model
    from lab6.sample import load_pipeline, sample
    cfg = load_config("full", output_dir=str(tmp_path / "full" / "train"), data_root=str(dataset), device="cpu",
                      train={"max_steps": 2, "batch_size": 4, "checkpoint_every": 2, "validate_num": 0,
                             "lr_warmup_steps": 1})
    run = train(cfg, progress=False)
    weights = run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 25_000_000  # what pretrained/full may commit
    images = sample(load_pipeline(run / "pipeline", device="cpu"), [["red cube"], ["cyan cylinder", "cyan cube"]],
                    num_steps=2).images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    default = tmp_path / "renders"  # marked as the default renders, where the quick profile grades pretrained/quick
    default.mkdir()
    state = {"renderer": S.RENDER_VERSION, "config": S.SynthConfig().record()}
    (default / D.SYNTH_STATE).write_text(json.dumps(state))
    assert D.is_default_synth(default)
    assert run_model("full", tmp_path / "full", data_root=default)[0] == run
    assert run_model("quick", tmp_path / "quick", data_root=default)[0] == REPO / "pretrained" / "quick"
