"""Training survives being killed at random moments, and stops cleanly when a loss diverges.

`test_sigkill_at_random_moments_then_resume` runs the real `python -m affectedit train ... --resume`
as a subprocess and kills it again and again (SIGKILL, and twice SIGINT as Ctrl-C sends), at
seeded random moments: during start-up, right after a checkpoint, in the middle of steps. Every
resume must work, the checkpoint must always load, its step never goes back, at most the steps since
the last checkpoint are lost, and the final weights equal those of a run that was never interrupted.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from affectedit.checkpoint import load_checkpoint
from affectedit.config import get_config
from affectedit.errors import UserError
from affectedit.train import TrainingDiverged, train

# STEPS leaves room for 12 kills even on a fast machine, where a round may run ~10 steps.
STEPS, EVERY, KILLS, SEED = 200, 2, 12, 20240607
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
           # the progress bar on every step: how far a run got before it was killed
           TQDM_MININTERVAL="0", TQDM_MINITERS="1")


def _command(cache: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "affectedit", "train", "--config", "tiny", "--data", str(cache), "--out", str(run),
            "--set", "loss.identity=0", "--set", f"train.checkpoint_every={EVERY}", "--steps", str(STEPS),
            "--resume", *extra]


class Run:
    """One training process; a thread reads its progress bar (the last step it finished)."""

    def __init__(self, cmd: list[str]):
        self.started = time.monotonic()
        # SIGINT back to its default: a shell's background job (CI runners) ignores it, and Python
        # then never turns Ctrl-C into KeyboardInterrupt.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.done_step, self.err = -1, b""
        self.out = b""
        self._stderr = threading.Thread(target=self._read_bar, daemon=True)
        self._stderr.start()
        self._stdout = threading.Thread(target=lambda: setattr(self, "out", self.proc.stdout.read()), daemon=True)
        self._stdout.start()

    def _read_bar(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk
            steps = re.findall(rb"(\d+)/%d" % STEPS, chunk)
            if steps:
                self.done_step = max(self.done_step, int(steps[-1]))

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._stdout.join(10)
        self._stderr.join(10)
        return rc


def _stamp(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _wait_for_new_checkpoint(run: Run, ckpt: Path, old, since_step: int, timeout: float = 120.0) -> bool:
    """Poll until the checkpoint file is replaced; False if the process ended first.

    A replacement is seen by a new (inode, mtime) or by the progress bar passing a checkpoint step
    this process wrote (checkpoints are saved before the bar moves): inode numbers are reused at
    once and mtime is coarse, so two quick checkpoints can carry the same stamp."""
    t = time.monotonic()
    while _stamp(ckpt) == old and not (run.done_step > since_step and run.done_step % EVERY == 0):
        if run.proc.poll() is not None:
            return False
        assert time.monotonic() - t < timeout, "no checkpoint written in time"
        time.sleep(0.005)
    return True


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["models"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tiny_cache, tmp_path):
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoint.pt"
    cmd = _command(tiny_cache, run_dir)
    t0 = time.monotonic()
    log = []  # (how, signal, step reached, checkpoint step after the kill)
    step, kills, lost_max = 0, 0, 0
    run = Run(cmd)
    # The first kill comes only once a checkpoint exists.
    assert _wait_for_new_checkpoint(run, ckpt, None, 0), run.err.decode(errors="replace")[-2000:]
    for k in range(KILLS):
        # every 4th: while Python and torch load, or while the checkpoint is read back
        moment = "startup" if k % 4 == 3 else rng.choice(["after-checkpoint", "mid-step", "mid-step"])
        if moment == "startup":
            time.sleep(rng.uniform(0.1, 2.0))
        else:
            # Let this process write at least one checkpoint of its own (so every round makes progress),
            # then kill it right away or a random fraction of a step later.
            if not _wait_for_new_checkpoint(run, ckpt, _stamp(ckpt), step):
                break  # finished already
            time.sleep(0.0 if moment == "after-checkpoint" else rng.uniform(0.0, 0.25))
        sig = signal.SIGINT if k in (5, 9) and moment != "startup" and run.done_step >= 0 else signal.SIGKILL
        rc = run.stop(sig)
        if rc == 0:
            break  # finished before the signal came
        if sig == signal.SIGINT:
            # (among the progress bar's lines: tqdm redraws the bar when it is garbage-collected at exit)
            assert rc == 130 and b"affectedit: interrupted\n" in run.err, run.err[-500:]
            assert b"Traceback" not in run.err
        else:
            assert rc == -signal.SIGKILL
        kills += 1
        state = load_checkpoint(ckpt)  # the checkpoint always loads
        assert state["step"] >= step, f"step went back from {step} to {state['step']}"
        assert state["step"] % EVERY == 0 and state["step"] <= STEPS
        lost = max(run.done_step, state["step"]) - state["step"]
        assert lost < EVERY, f"the run had finished step {run.done_step} but the checkpoint holds {state['step']}"
        lost_max = max(lost_max, lost)
        step = state["step"]
        log.append((moment, signal.Signals(sig).name, run.done_step, step))
        run = Run(cmd)  # resume
    rc = run.wait(180)
    assert rc == 0, run.err.decode(errors="replace")[-2000:]
    assert b"done: checkpoint in" in run.out
    assert kills >= 10, log
    assert load_checkpoint(ckpt)["step"] == STEPS
    # Stale temporary checkpoint files of killed runs are cleaned up by the next run.
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint.pt.")]
    elapsed = time.monotonic() - t0

    # The interrupted run ends exactly where a run that was never interrupted ends.
    straight = tmp_path / "straight"
    # (in the precision the interrupted run recorded: "auto" times bf16 against fp32 in each process,
    # and on a busy machine with native bf16 two processes may choose differently)
    precision = load_checkpoint(ckpt)["precision"]
    r = subprocess.run(_command(tiny_cache, straight, "--no-progress", "--set", f"train.mixed_precision={precision}"),
                       env=ENV, check=False, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(ckpt), _weights(straight / "checkpoint.pt")
    for net in a:
        for key in a[net]:
            torch.testing.assert_close(a[net][key], b[net][key], rtol=0, atol=0, msg=f"{net}.{key} differs")
    print(f"\nkill/resume: {kills} kills, {kills} resumes, max steps lost {lost_max}, {elapsed:.1f} s; {log}")


# ----------------------------------------------------------------------------------- divergence


def _good_run(cache: Path, run: Path, steps: int = 4) -> bytes:
    train(get_config("tiny", ["loss.identity=0", f"train.steps={steps}", f"train.checkpoint_every={EVERY}"]),
          cache, run, progress=False)
    return (run / "checkpoint.pt").read_bytes()


def _all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for m in _weights(path).values() for t in m.values() if t.is_floating_point())


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_cache, tmp_path):
    run = tmp_path / "run"
    before = _good_run(tiny_cache, run)
    # Resume with an absurd learning rate: the first update throws the weights to ~1e30 and the
    # losses to inf/NaN (the saved optimiser's lr must not win over --set train.lr).
    r = subprocess.run(_command(tiny_cache, run, "--no-progress", "--set", "train.lr=1e30"), env=ENV, check=False,
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("affectedit: error: a loss became NaN or infinite at step 4")
    assert "last good checkpoint (step 4)" in lines[0] and "lower train.lr" in lines[0]
    assert (run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run)["step"] == 4 and _all_finite(run / "checkpoint.pt")


@pytest.mark.slow
def test_diverged_weights_never_replace_the_last_good_checkpoint(tiny_cache, tmp_path):
    # lr=1e10: some weights overflow to inf while the losses of that step are still finite; the
    # checkpoint written after such a step would be garbage, so it is refused.
    run = tmp_path / "run"
    _good_run(tiny_cache, run)
    for lr in ("1e10", "1e20"):
        with pytest.raises(TrainingDiverged, match="last good checkpoint"):
            train(get_config("tiny", ["loss.identity=0", "train.steps=20", "train.checkpoint_every=1", f"train.lr={lr}"]),
                  tiny_cache, run, resume=True, progress=False)
        state = load_checkpoint(run)
        assert _all_finite(run / "checkpoint.pt") and 4 <= state["step"] < 20


def test_nan_gradients_with_finite_losses_stop_before_the_update(tiny_cache, tmp_path, monkeypatch):
    # An op with an infinite slope can make the gradients NaN while every loss is finite (it once
    # did: sqrt at 0 in the mouth's drawing). The update must not happen: the run stops with the
    # loss check's clear message and the last good checkpoint stays as it was.
    import accelerate

    run = tmp_path / "run"
    before = _good_run(tiny_cache, run)
    real = accelerate.Accelerator.backward

    def poisoned(self, loss, **kw):  # after every backward, one of the encoder's gradients is NaN
        real(self, loss, **kw)
        grads = [p.grad for p in self._models[0].parameters() if p.grad is not None]
        if grads:
            grads[0].fill_(float("nan"))

    monkeypatch.setattr(accelerate.Accelerator, "backward", poisoned)
    with pytest.raises(TrainingDiverged, match="gradients became NaN or infinite at step 4.*last good checkpoint"):
        train(get_config("tiny", ["loss.identity=0", "train.steps=8", f"train.checkpoint_every={EVERY}"]),
              tiny_cache, run, resume=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before and _all_finite(run / "checkpoint.pt")


def test_cache_without_labels_is_refused_before_training(tiny_cache, tmp_path):
    cache = tmp_path / "unlabelled"
    shutil.copytree(tiny_cache, cache)
    labels = np.load(cache / "labels.npy")
    np.save(cache / "labels.npy", np.full_like(labels, np.nan))  # as a CelebA cache stores them
    with pytest.raises(UserError, match="without valence/arousal labels"):
        train(get_config("tiny", ["loss.identity=0", "train.steps=2"]), cache, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
