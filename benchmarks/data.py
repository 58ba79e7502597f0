"""Data pipeline throughput: `prepare` (detect + align + write) and the training loader.

    python benchmarks/data.py                       # 200 LFW images; loader on cache/lfw-train-96 if present
    python benchmarks/data.py --prepare 500 --cache cache/lfw-train-96 --seconds 5

Prints a table of images/s. The loader target is >= 2,000 images/s at 96 x 96 on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from affectedit.data.cache import FaceCache, batches, prepare

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw-expressions"


def bench_prepare(n: int, workers: int, size: int, tmp: Path) -> float:
    out = tmp / f"prep-{workers}"
    t = time.perf_counter()
    s = prepare(LFW, "lfw", out, split="all", size=size, workers=workers, limit=n, progress=False)
    dt = time.perf_counter() - t
    return (s["count"] + s["skipped"]) / dt


def synthetic_cache(path: Path, n: int, size: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    img = np.lib.format.open_memmap(path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for a in range(0, n, 1000):
        img[a : a + 1000] = rng.integers(0, 256, img[a : a + 1000].shape, dtype=np.uint8)
    img.flush()
    np.save(path / "labels.npy", rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    (path / "meta.json").write_text(json.dumps({"size": size, "count": n, "sources": [""] * n,
                                                "emotions": [None] * n, "identities": [None] * n}))
    return path


def bench_loader(cache: FaceCache, batch_size: int, seconds: float, hflip: bool) -> float:
    it = batches(cache, batch_size, seed=0, hflip=hflip)
    for _ in range(5):  # warm-up (page cache, allocator)
        next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        x, _ = next(it)
        n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", type=int, default=200, help="LFW images to prepare (0: skip)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts for prepare")
    ap.add_argument("--cache", type=Path, default=ROOT / "cache" / "lfw-train-96",
                    help="cache for the loader benchmark (a synthetic 10,000-image one if absent)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=49)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.prepare and (LFW / "labels.csv").is_file():
            for w in args.workers:
                rows.append((f"prepare (LFW {args.prepare} imgs, {args.size}px, {w} worker{'s' * (w > 1)})",
                             bench_prepare(args.prepare, w, args.size, tmp)))
        if (args.cache / "meta.json").is_file():
            cache, what = FaceCache(args.cache), str(args.cache.relative_to(ROOT) if args.cache.is_relative_to(ROOT) else args.cache)
        else:
            cache, what = FaceCache(synthetic_cache(tmp / "synthetic", 10000, args.size)), "synthetic 10k"
        for threads in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(threads)
            for hflip in (True, False):
                rows.append((f"loader batches({args.batch}, hflip={hflip}) on {what}, {cache.size}px, torch threads {threads}",
                             bench_loader(cache, args.batch, args.seconds, hflip)))
        t = time.perf_counter()
        k = 2000
        for i in np.random.default_rng(0).integers(0, len(cache), k):
            cache[int(i)]
        rows.append((f"FaceCache[i] random single items, {cache.size}px", k / (time.perf_counter() - t)))

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  images/s")
    print("-" * (width + 10))
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:8.0f}")


if __name__ == "__main__":
    main()
