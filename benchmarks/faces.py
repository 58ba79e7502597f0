"""Benchmark face detection, alignment and paste-back on the real data sets (../shared/data).

    python benchmarks/faces.py                      # default detector on all london-portraits + 500 lfw
    python benchmarks/faces.py --lfw 200 --compare  # also compare detector variants (slow)

Prints detection rates (fraction of images with >= 1 face, and with exactly 1) and per-image timings
(median / 90th percentile, ms).  No downloads; only registry-package weights are used.
"""
from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affectedit import faces as F

DATA = ROOT.parent / "shared" / "data"


def london_images() -> list[Path]:
    d = DATA / "london-portraits"
    with open(d / "labels.csv", newline="") as fh:
        return [d / "images" / row["image"] for row in csv.DictReader(fh)]


def lfw_images(n: int, seed: int = 0) -> list[Path]:
    d = DATA / "lfw-expressions"
    with open(d / "labels.csv", newline="") as fh:
        rows = [row["image"] for row in csv.DictReader(fh)]
    random.Random(seed).shuffle(rows)
    return [d / "images" / r for r in rows[:n]]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


# ---------------------------------------------------------------- detector variants (for --compare)
def hog_variant(detect_size, gray=True):
    def run(img):
        return len(F.detect_faces(img, detect_size=detect_size))

    return run


def dlib_cnn(detect_size=400):
    import dlib

    det = dlib.cnn_face_detection_model_v1(str(F.dlib_model_file("mmod_human_face_detector.dat")))

    def run(img):
        img = img.convert("RGB")
        s = min(1.0, detect_size / max(img.size))
        if s < 1:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
        return len(det(np.asarray(img), 0))

    return run


def mtcnn(detect_size=400):
    """facenet-pytorch's MTCNN without torchvision/requests: tiny stand-ins for the two imports."""
    import importlib

    import torch

    if "torchvision" not in sys.modules:
        def batched_nms(boxes, scores, idxs, thr):
            keep_all = []
            for c in torch.unique(idxs):
                ii = torch.nonzero(idxs == c).flatten()
                b, s = boxes[ii], scores[ii]
                order = torch.argsort(s, descending=True)
                area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
                keep = []
                while order.numel():
                    i = order[0]
                    keep.append(ii[i])
                    if order.numel() == 1:
                        break
                    rest = order[1:]
                    xx0 = torch.maximum(b[i, 0], b[rest, 0]); yy0 = torch.maximum(b[i, 1], b[rest, 1])
                    xx1 = torch.minimum(b[i, 2], b[rest, 2]); yy1 = torch.minimum(b[i, 3], b[rest, 3])
                    inter = (xx1 - xx0).clamp(min=0) * (yy1 - yy0).clamp(min=0)
                    iou = inter / (area[i] + area[rest] - inter)
                    order = rest[iou <= thr]
                keep_all += keep
            if not keep_all:
                return torch.zeros(0, dtype=torch.long)
            k = torch.stack(keep_all)
            return k[torch.argsort(scores[k], descending=True)]

        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        boxes_m = types.ModuleType("torchvision.ops.boxes")
        boxes_m.batched_nms = batched_nms
        tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")
        fn.to_tensor = lambda im: torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes_m,
                            "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    if "facenet_pytorch" not in sys.modules:  # skip the package __init__ (it needs requests)
        import importlib.util

        pkg = types.ModuleType("facenet_pytorch")
        pkg.__path__ = list(importlib.util.find_spec("facenet_pytorch").submodule_search_locations)
        sys.modules["facenet_pytorch"] = pkg
    MTCNN = importlib.import_module("facenet_pytorch.models.mtcnn").MTCNN
    torch.set_num_threads(1)
    m = MTCNN(keep_all=True, device="cpu")

    def run(img):
        img = img.convert("RGB")
        s = min(1.0, detect_size / max(img.size))
        if s < 1:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
        with torch.no_grad():
            boxes, _ = m.detect(img)
        return 0 if boxes is None else len(boxes)

    return run


def rate(run, paths):
    n1 = n_exact = 0
    times = []
    for p in paths:
        img = Image.open(p)
        img.load()
        t = time.perf_counter()
        n = run(img)
        times.append((time.perf_counter() - t) * 1000)
        n1 += n >= 1
        n_exact += n == 1
    return n1 / len(paths), n_exact / len(paths), statistics.median(times), pct(times, 0.9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=int, default=500, help="number of lfw-expressions images (random sample)")
    ap.add_argument("--compare", action="store_true", help="also compare detector variants")
    ap.add_argument("--compare-n", type=int, default=60, help="images per set for the --compare table")
    ap.add_argument("--size", type=int, default=96, help="aligned crop size")
    args = ap.parse_args(argv)

    london, lfw = london_images(), lfw_images(args.lfw)
    F.detect_faces(Image.new("RGB", (64, 64)))  # load models once

    header = f"{'detector':36s} {'set':7s} {'n':>4s} {'>=1 face':>9s} {'==1 face':>9s} {'med ms':>7s} {'p90 ms':>7s}"

    def table(variants, sets):
        print(header)
        for name, run in variants:
            for set_name, paths in sets:
                r1, rx, med, p90 = rate(run, paths)
                print(f"{name:36s} {set_name:7s} {len(paths):4d} {r1:9.1%} {rx:9.1%} {med:7.1f} {p90:7.1f}")

    table([("HOG gray, detect_size=400 (default)", hog_variant(400))], [("london", london), ("lfw", lfw)])
    if args.compare:
        n = args.compare_n
        sub = [("london", london[:: max(1, len(london) // n)][:n]), ("lfw", lfw[:n])]
        print(f"\ndetector comparison on {n} images per set")
        table(
            [
                ("HOG gray, detect_size=400 (default)", hog_variant(400)),
                ("HOG gray, detect_size=320", hog_variant(320)),
                ("HOG gray, full resolution", hog_variant(None)),
                ("dlib CNN mmod, 400 px", dlib_cnn(400)),
                ("MTCNN (facenet-pytorch), 400 px", mtcnn(400)),
            ],
            sub,
        )
    print()

    # per-image pipeline timings with the default detector on the london portraits
    t_det, t_align, t_paste = [], [], []
    for p in london:
        img = Image.open(p)
        img.load()
        t = time.perf_counter()
        fs = F.detect_faces(img)
        t_det.append((time.perf_counter() - t) * 1000)
        if not fs:
            continue
        t = time.perf_counter()
        crop = F.align_face(img, fs[0], args.size)
        t_align.append((time.perf_counter() - t) * 1000)
        edited = Image.fromarray(255 - np.asarray(crop))
        t = time.perf_counter()
        F.paste_back(img, fs[0], edited)
        t_paste.append((time.perf_counter() - t) * 1000)
    big = Image.open(london[0]).resize((4032, 3024), Image.BILINEAR)  # a 12-megapixel photo
    fs = F.detect_faces(big)
    t_big = {}
    for _ in range(3):
        t = time.perf_counter(); fs = F.detect_faces(big); t_big.setdefault("detect", []).append(time.perf_counter() - t)
        if fs:
            t = time.perf_counter(); crop = F.align_face(big, fs[0], args.size); t_big.setdefault("align", []).append(time.perf_counter() - t)
            t = time.perf_counter(); F.paste_back(big, fs[0], crop); t_big.setdefault("paste", []).append(time.perf_counter() - t)
    print(f"{'step (675x675 london, default)':34s} {'med ms':>7s} {'p90 ms':>7s}")
    for name, xs in (("detect_faces", t_det), (f"align_face({args.size})", t_align), ("paste_back", t_paste)):
        print(f"{name:34s} {statistics.median(xs):7.1f} {pct(xs, 0.9):7.1f}")
    print()
    print("12-megapixel photo (4032x3024), best of 3, ms: " + ", ".join(f"{k} {min(v) * 1000:.1f}" for k, v in t_big.items()))


if __name__ == "__main__":
    main()
