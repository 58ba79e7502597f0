"""End-to-end latency of editing one face in a photo, with a per-stage breakdown.

    python benchmarks/edit_latency.py                          # the bundled model, and warp/cpu/paper configs with random weights
    python benchmarks/edit_latency.py --checkpoint runs/x/checkpoint.pt --repeats 50
    python benchmarks/edit_latency.py --configs paper --device cuda --precision bf16
    python benchmarks/edit_latency.py --threads 1                # on a CPU shared with other jobs

Stages of ``Editor.edit``: decode (open + decode the JPEG), detect (HOG + 5 landmarks), align (warp to
S x S), network (E then G, one face: the CropEdit), paste (the change applied to the full photo). "end-to-end" is
one ``Editor.edit(path, v, a)`` call timed as a whole (it includes the stages and the glue). Medians
over ``--repeats`` runs after 2 warm-up runs, in milliseconds. Random weights time the same as trained
ones (the networks have no data-dependent control flow). Target (issue 12): the bundled model (warp
head, one generator pass per face) edits one face of a 675x675 portrait in at most 40 ms end to end
on a quiet 2-core CPU. The header line prints the machine's load and the precision actually used.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affectedit.config import get_config
from affectedit.editor import Editor
from affectedit.faces import align_faces_batch, detect_faces
from affectedit.images import normalize, open_image
from affectedit.networks import build_models

DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "london-portraits" / "images" / "neutral_front" / "001_03.jpg"
STAGES = ["decode", "detect", "align", "network", "paste", "end-to-end"]


def _ms(fn, repeats: int, sync) -> tuple[float, object]:
    out = None
    for _ in range(2):
        out = fn()
        sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def measure(editor: Editor, image: Path, repeats: int) -> dict[str, float]:
    sync = torch.cuda.synchronize if editor.device.type == "cuda" else (lambda: None)
    res = {}
    res["decode"], photo = _ms(lambda: open_image(image).convert("RGB"), repeats, sync)
    res["detect"], faces = _ms(lambda: detect_faces(photo), repeats, sync)
    faces = faces[:1]
    res["align"], crops = _ms(lambda: normalize(align_faces_batch(photo, faces, editor.image_size)), repeats, sync)
    res["network"], change = _ms(lambda: editor.crop_edit(crops, torch.tensor([0.8, 0.5])), repeats, sync)
    # the paste as Editor.edit runs it: apply_to_photo under the editor's thread policy
    res["paste"], _ = _ms(lambda: editor._apply(photo, faces, change), repeats, sync)
    res["end-to-end"], _ = _ms(lambda: editor.edit(image, 0.8, 0.5, face=0), repeats, sync)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="a photo with one face (default: a 675x675 london portrait)")
    ap.add_argument("--configs", default="warp,cpu,paper", help="presets to time with random weights (comma-separated; '' for none)")
    ap.add_argument("--checkpoint", default=None, help="also time this checkpoint / exported weights file")
    ap.add_argument("--no-bundled", action="store_true", help="do not time the bundled model")
    ap.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); 1 is often "
                    "faster on a machine that other jobs load")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    editors = []
    for name in [c for c in args.configs.split(",") if c]:
        cfg = get_config(name)
        torch.manual_seed(0)
        models = build_models(cfg.model)
        editors.append((f"{name} (random weights)", Editor(models["encoder"], models["generator"], cfg, args.device, args.precision)))
    if not args.no_bundled:
        editors.insert(0, ("bundled model", Editor.from_pretrained(None, args.device, args.precision)))
    if args.checkpoint:
        editors.append((f"{Path(args.checkpoint).name} (trained)", Editor.from_checkpoint(args.checkpoint, args.device, args.precision)))

    from PIL import Image

    with Image.open(args.image) as im:
        size = im.size
    import os

    used = editors[0][1].precision if editors else "-"
    print(f"image {args.image} ({size[0]}x{size[1]}), device {editors[0][1].device if editors else '-'}, "
          f"precision {args.precision} -> {used}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"median of {args.repeats} runs, ms")
    w = max([len("model")] + [len(n) for n, _ in editors])
    print(f"{'model':<{w}}  {'S':>3}  {'params':>7}  " + "  ".join(f"{s:>10}" for s in STAGES))
    for name, editor in editors:
        n_params = sum(p.numel() for m in (editor.encoder, editor.generator) for p in m.parameters())
        res = measure(editor, Path(args.image), args.repeats)
        print(f"{name:<{w}}  {editor.image_size:>3}  {n_params / 1e6:>6.2f}M  " + "  ".join(f"{res[s]:>10.1f}" for s in STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
