"""Shared fixtures: paths to the real data in ../shared and a tiny cache of real faces."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LFW = SHARED / "lfw-expressions"
LONDON = SHARED / "london-portraits"
LABELS = ROOT / "data" / "lfw-expressions-va.csv"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not LFW.is_dir():
        pytest.fail(f"real face data not found at {SHARED}; the tests need ../shared/data beside the project")
    return SHARED


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, shared_data) -> Path:
    """16 real LFW faces (train split), aligned to 32x32, with the derived valence/arousal labels."""
    from affectedit.data.cache import prepare

    out = tmp_path_factory.mktemp("cache") / "lfw-tiny-32"
    prepare(LFW, "lfw", out, labels=LABELS, split="train", size=32, limit=16, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_cache, tmp_path_factory) -> Path:
    """A tiny-preset model trained 2 steps on the 16-face `tiny_cache`: its edits mean nothing, but
    every code path of the editor, CLI and web page runs on it. Built once per session."""
    from affectedit.config import get_config
    from affectedit.train import train

    run = tmp_path_factory.mktemp("tiny-model") / "run"
    train(get_config("tiny", ["loss.identity=0", "train.steps=2"]), tiny_cache, run, progress=False)
    return run / "checkpoint.pt"
