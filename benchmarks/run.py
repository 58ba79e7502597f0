"""Performance against this machine's limit: one table (and ``--json``) of what runs how fast.

    python benchmarks/run.py --json perf.json                 # everything (several minutes on 2 cores)
    python benchmarks/run.py --quick                          # a subset: cpu preset, short timings
    python benchmarks/run.py --only ceiling,inference --presets paper --batches 1

Sections (``--only``):

ceiling    achieved GFLOP/s of a large 3x3 convolution (oneDNN) in fp32 and bf16: the practical
           limit every other row is compared with ("% ceil" = share of the best of the two).
inference  edits/s of the network G(E(x), y) (one paper-mode edit per image; a residual edit is E
           once plus G on 17 labels) per path: fp32 eager (NCHW), channels_last, bf16 autocast,
           torch.compile (inductor; a failure is reported, not fatal), ONNX Runtime (an export of
           the same graph); plus the Editor as shipped (``Editor.edit_crops``, its default
           precision/layout) in both modes.  Random weights (same cost as trained ones).
threads    batch-1 residual edits/s of the Editor with 1 and with all torch threads (forced).
e2e        end-to-end latency of ``Editor.edit`` on one face of a 675x675 portrait (decode, detect,
           align, network, paste back) for both edit modes, default precision.
train      training images/s at batch 49 (``affectedit.train.seconds_per_step``, identity loss on)
           and achieved GFLOP/s, with the FLOPs of one step counted by torch.utils.flop_counter.
loader     images/s of the training loader (``batches``, batch 49, hflip) from the prepared caches.
memory     peak resident memory (ru_maxrss) of an ``affectedit edit`` subprocess on a 12-megapixel
           photo (a portrait upscaled to 4000x3000 in a temporary folder).

FLOPs are counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs; convolutions, transposed
convolutions and matmuls only).  Timings are medians over repeated calls after warm-up.  The load
average is recorded before and after: on a shared machine every number is a lower bound.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from affectedit.config import get_config
from affectedit.editor import Editor
from affectedit.export import EditNet, onnx_bytes, ort_session
from affectedit.networks import build_models

PORTRAIT = ROOT.parent / "shared" / "data" / "london-portraits" / "images" / "neutral_front" / "001_03.jpg"
CHECKPOINT = ROOT.parent / "runs" / "cpu64" / "checkpoint.pt"
SECTIONS = ("ceiling", "inference", "threads", "e2e", "train", "loader", "memory")
PATHS = ("fp32 eager", "channels_last", "bf16 autocast", "torch.compile", "onnxruntime", "editor")
#: Editor rows costing more than this many GFLOP per call are skipped (paper preset, residual, batch 25).
MAX_EDITOR_GFLOP = 400


# ----------------------------------------------------------------------------------- helpers


def timeit(fn, seconds: float, min_reps: int = 3) -> float:
    """Median seconds per call of ``fn`` over about ``seconds`` of repeated calls after warm-up
    (a call slower than ``seconds`` is timed once more after its warm-up call, no more)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    if first > seconds:
        min_reps = 1
    else:
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return int(fc.get_total_flops())


def edit_flops(net, size: int) -> int:
    """FLOPs of one G(E(x), y) on one S x S image."""
    return flops_of(lambda: net(torch.zeros(1, 3, size, size), torch.zeros(1, 2)))


def cpu_flags() -> dict:
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    model = ""
    with contextlib.suppress(OSError):
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    return {"model": model or platform.processor(), "cores": os.cpu_count(),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx")), "isa": torch.backends.cpu.get_cpu_capability()}


class Table:
    def __init__(self):
        self.rows: list[dict] = []
        self.ceiling: float | None = None

    def add(self, section: str, what: str, value: float | None, unit: str, gflops: float | None = None, note: str = "", **extra):
        share = (gflops / self.ceiling) if (gflops is not None and self.ceiling) else None
        row = {"section": section, "what": what, "value": value, "unit": unit, "gflop_s": gflops, "share_of_ceiling": share,
               "note": note, **extra}
        self.rows.append(row)
        v = "-" if value is None else (f"{value:,.1f}" if value >= 10 else f"{value:.3g}")
        g = "" if gflops is None else f"{gflops:8.1f}"
        s = "" if share is None else f"{100 * share:5.1f}%"
        print(f"{section:<9} {what:<58} {v:>10} {unit:<9} {g:>8} {s:>6}  {note}", flush=True)


# ----------------------------------------------------------------------------------- sections


def _timed(m, x) -> float:
    t = time.perf_counter()
    m(x)
    return time.perf_counter() - t


def bench_ceiling(t: Table, seconds: float) -> None:
    """A large convolution, 256 -> 256 channels on 56x56, batch 8, 3x3 and 5x5 (the networks' kernel):
    oneDNN's best case.  The FASTEST call counts (a ceiling, not a typical time)."""
    N, C, H = 8, 256, 56
    x = torch.randn(N, C, H, H)
    best = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rates = []
        for K in (3, 5):
            flops = 2 * N * C * C * H * H * K * K
            conv = torch.nn.Conv2d(C, C, K, padding=K // 2, bias=False).eval()
            for layout in (torch.contiguous_format, torch.channels_last):
                m = conv.to(dtype=dtype, memory_format=layout)
                xi = x.to(dtype=dtype).contiguous(memory_format=layout)
                times = []
                with torch.inference_mode():
                    timeit(lambda m=m, xi=xi, times=times: times.append(_timed(m, xi)), seconds / 2)
                rates.append(flops / min(times) / 1e9)
        best[name] = max(rates)
    t.ceiling = max(best.values())
    for name in ("fp32", "bf16"):
        t.add("ceiling", f"conv 3x3/5x5 {C}->{C} @{H}x{H}, batch {N}, {name} (best of)", best[name], "GFLOP/s", best[name])


def _auto_threads() -> int | None:
    """The thread count the Editor's automatic policy would pick now (None: an Editor without one)."""
    try:
        from affectedit.runtime import ThreadPolicy
    except ImportError:
        return None
    return ThreadPolicy()(torch.get_num_threads())


def _eg(preset: str):
    cfg = get_config(preset)
    torch.manual_seed(0)
    m = build_models(cfg.model)
    return cfg, EditNet(m["encoder"], m["generator"]).eval()


def bench_inference(t: Table, presets, batches, paths, seconds: float) -> None:
    for preset in presets:
        cfg, net = _eg(preset)
        S = cfg.model.image_size
        per_edit = edit_flops(net, S)
        ort_model = None
        for B in batches:
            x = torch.rand(B, 3, S, S) * 2 - 1
            y = torch.rand(B, 2) * 2 - 1
            for path in [p for p in paths if p != "editor"]:
                note = ""
                try:
                    if path == "fp32 eager":
                        fn = lambda net=net, x=x, y=y: net(x, y)
                    elif path == "channels_last":
                        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
                        xc = x.contiguous(memory_format=torch.channels_last)
                        fn = lambda cl=cl, xc=xc, y=y: cl(xc, y)
                    elif path == "bf16 autocast":
                        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
                        xc = x.contiguous(memory_format=torch.channels_last)

                        def fn(cl=cl, xc=xc, y=y):
                            with torch.autocast("cpu", dtype=torch.bfloat16):
                                return cl(xc, y)
                    elif path == "torch.compile":
                        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
                        xc = x.contiguous(memory_format=torch.channels_last)
                        compiled = torch.compile(cl, dynamic=False)
                        t0 = time.perf_counter()
                        with torch.inference_mode():
                            compiled(xc, y)
                        note = f"compile {time.perf_counter() - t0:.0f} s"
                        fn = lambda compiled=compiled, xc=xc, y=y: compiled(xc, y)
                    elif path == "onnxruntime":
                        t0 = time.perf_counter()
                        if ort_model is None:
                            ort_model = onnx_bytes(net.encoder, net.generator, S)
                        sess = ort_session(ort_model)
                        note = f"export+load {time.perf_counter() - t0:.1f} s"
                        feeds = {"image": x.numpy(), "label": y.numpy()}
                        fn = lambda sess=sess, feeds=feeds: sess.run(None, feeds)
                    else:
                        raise ValueError(path)
                    with torch.inference_mode():
                        sec = timeit(fn, seconds)
                except Exception as e:  # noqa: BLE001 - a path that fails here is a result, not a crash
                    t.add("inference", f"{preset} {S}px batch {B:>2}  {path}", None, "edits/s", None,
                          note=f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}",
                          preset=preset, batch=B, path=path)
                    continue
                rate = B / sec
                t.add("inference", f"{preset} {S}px batch {B:>2}  {path}", rate, "edits/s", rate * per_edit / 1e9, note=note,
                      preset=preset, batch=B, path=path, gflop_per_edit=per_edit / 1e9)
            if "editor" not in paths:
                continue
            # The Editor as shipped (its default precision, layout and threads), both modes, on tensors.
            from affectedit.editor import LABEL_GRID

            editor = Editor(copy.deepcopy(net.encoder), copy.deepcopy(net.generator), cfg, "cpu")
            for mode in ("paper", "residual"):
                what = f"{preset} {S}px batch {B:>2}  Editor.edit_crops {mode}"
                if mode == "residual" and B * (len(LABEL_GRID) + 2) * per_edit / 1e9 > MAX_EDITOR_GFLOP:
                    t.add("inference", what, None, "edits/s", note=f"skipped: over {MAX_EDITOR_GFLOP} GFLOP per call", preset=preset, batch=B, path=f"editor-{mode}")
                    continue
                fn = lambda mode=mode, editor=editor, x=x, y=y: editor.edit_crops(x, y, mode=mode)
                work = flops_of(fn) / B
                threads = _auto_threads()
                sec = timeit(fn, seconds)
                rate = B / sec
                t.add("inference", what, rate, "edits/s", rate * work / 1e9,
                      note=f"{work / 1e9:.2f} GFLOP/edit, auto threads {threads}", preset=preset, batch=B, path=f"editor-{mode}",
                      gflop_per_edit=work / 1e9, threads=threads)


def bench_threads(t: Table, presets, seconds: float) -> None:
    """Batch-1 edits/s of the Editor (paper mode) with 1 and with all torch threads."""
    n0 = torch.get_num_threads()
    for preset in presets:
        cfg, net = _eg(preset)
        S = cfg.model.image_size
        x = torch.rand(1, 3, S, S) * 2 - 1
        for n in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(n)
            try:
                editor = Editor(copy.deepcopy(net.encoder), copy.deepcopy(net.generator), cfg, "cpu", threads=n)
            except TypeError:  # an Editor without the threads option (before it existed): torch's setting
                editor = Editor(copy.deepcopy(net.encoder), copy.deepcopy(net.generator), cfg, "cpu")
            sec = timeit(lambda editor=editor, x=x: editor.edit_crops(x, (0.5, 0.5), mode="residual"), seconds)
            t.add("threads", f"{preset} {S}px batch  1  Editor residual, torch threads {n}", 1 / sec, "edits/s", None, preset=preset, threads=n)
    torch.set_num_threads(n0)


def _editor_for(preset: str, checkpoint: Path | None):
    if checkpoint is not None and checkpoint.is_file():
        ed = Editor.from_checkpoint(checkpoint, device="cpu")
        if ed.config.model.image_size == get_config(preset).model.image_size and preset == "cpu":
            return ed, f"trained {checkpoint.parent.name} step {ed.step}"
    cfg, net = _eg(preset)
    return Editor(net.encoder, net.generator, cfg, "cpu"), "random weights"


def bench_e2e(t: Table, presets, checkpoint: Path | None, image: Path, repeats: int) -> None:
    import edit_latency

    for preset in presets:
        editor, what = _editor_for(preset, checkpoint)
        for mode in ("residual", "paper"):
            editor.edit_config = editor.edit_config.update(mode=mode)
            res = edit_latency.measure(editor, image, repeats)
            note = ", ".join(f"{k} {res[k]:.0f}" for k in ("decode", "detect", "align", "network", "paste"))
            t.add("e2e", f"{preset} {editor.image_size}px {mode} mode, 1 face of {image.name} ({what})", res["end-to-end"], "ms",
                  None, note=f"stages ms: {note}", preset=preset, mode=mode, stages=res)


def bench_train(t: Table, presets, steps: int) -> None:
    import logging

    from affectedit.train import seconds_per_step

    logging.getLogger().setLevel(logging.ERROR)
    caches = {96: ROOT / "cache" / "lfw-train-96", 64: ROOT / "cache" / "lfw-train-64"}
    for preset in presets:
        cfg = get_config(preset, ["train.batch_size=49"])
        data = caches.get(cfg.model.image_size)
        if data is None or not (data / "meta.json").is_file():
            t.add("train", f"{preset} batch 49", None, "images/s", note=f"no cache {data}")
            continue
        # FLOPs of a step: the timed run itself under the counter (its overhead is per op, not per
        # FLOP: negligible next to these convolutions), less the 8-image sample grid it ends with.
        _, net = _eg(preset)
        S = cfg.model.image_size
        grid = 8 * edit_flops(net, S)
        with FlopCounterMode(display=False) as fc, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sec = seconds_per_step(cfg, data, steps=steps)  # steps + 1 steps; s/step averaged over all
        step_flops = (fc.get_total_flops() - grid) / (steps + 1)
        rate = 49 / sec
        t.add("train", f"{preset} {S}px batch 49 (identity loss on), {steps + 1} steps", rate, "images/s", step_flops / sec / 1e9,
              note=f"{sec:.2f} s/step, {step_flops / 1e9:.0f} GFLOP/step", preset=preset, sec_per_step=sec, gflop_per_step=step_flops / 1e9)


def bench_loader(t: Table, seconds: float) -> None:
    import data as data_bench
    from affectedit.data.cache import FaceCache

    for size in (96, 64):
        path = ROOT / "cache" / f"lfw-train-{size}"
        if not (path / "meta.json").is_file():
            t.add("loader", f"batches(49, hflip) lfw-train-{size}", None, "images/s", note="cache not prepared")
            continue
        rate = data_bench.bench_loader(FaceCache(path), 49, seconds, True)
        t.add("loader", f"batches(49, hflip) from cache/lfw-train-{size}, torch threads {torch.get_num_threads()}", rate, "images/s")


def bench_memory(t: Table, checkpoint: Path | None, image: Path) -> None:
    from PIL import Image, ImageFilter

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / "12mp.jpg"
        with Image.open(image) as im:
            im = im.convert("RGB")
            canvas = im.resize((4000, 3000), Image.BILINEAR).filter(ImageFilter.GaussianBlur(20))
            canvas.paste(im.resize((3000, 3000), Image.LANCZOS), (500, 0))
            canvas.save(big, quality=92)
        editor, what = _editor_for("cpu", checkpoint)
        weights = editor.save_pretrained(tmp / "weights")
        for mode_flag, mode in (([], "default"), (["--fp32"], "--fp32")):
            # VmHWM of the child's own address space: ru_maxrss would include this (large) parent's
            # resident size, which Linux carries over fork and exec.
            wrapper = ("import sys; from affectedit.cli import main; rc = main(sys.argv[1:]); "
                       "sys.stderr.write(''.join(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))); sys.exit(rc)")
            cmd = [sys.executable, "-c", wrapper, "edit", str(big), "--valence", "0.8", "--arousal", "0.5",
                   "-o", str(tmp / "out.jpg"), "--checkpoint", str(weights), "--force", *mode_flag]
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            err = p.stderr.read().decode(errors="replace").strip().splitlines() if p.stderr else []
            err = [ln.strip() for ln in err]
            p.returncode = os.waitstatus_to_exitcode(status)
            hwm = [ln.split()[1] for ln in err if ln.startswith("VmHWM:")]
            rss = (int(hwm[0]) if hwm else usage.ru_maxrss) / 1024  # KiB on Linux
            note = f"wall {wall:.1f} s, {what}" + ("" if p.returncode == 0 else f"; FAILED rc {p.returncode}: {err[-1] if err else ''}")
            t.add("memory", f"peak RSS of `affectedit edit` {mode} on a 4000x3000 photo", rss, "MiB", None, note=note, wall_s=wall)


# ----------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="a fast subset (about a minute when idle): cpu preset only, no "
                    "torch.compile, short timings, 1 training step, no memory test")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    ap.add_argument("--presets", default=None, help="presets for inference/e2e/train (default paper,cpu; --quick: cpu)")
    ap.add_argument("--batches", default="1,25")
    ap.add_argument("--paths", default=None, help=f"inference paths (default all: {', '.join(PATHS)}; --quick drops torch.compile)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per timing (default 2; --quick 0.7)")
    ap.add_argument("--repeats", type=int, default=None, help="end-to-end repeats (default 5; --quick 3)")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps after the first (default 1; --quick 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="trained cpu-preset checkpoint for e2e/memory (random weights if absent)")
    ap.add_argument("--image", type=Path, default=PORTRAIT)
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    presets = [p for p in (args.presets or ("cpu" if q else "paper,cpu")).split(",") if p]
    batches = [int(b) for b in args.batches.split(",")]
    paths = [p.strip() for p in args.paths.split(",")] if args.paths else [p for p in PATHS if not (q and p == "torch.compile")]
    seconds = args.seconds or (0.7 if q else 2.0)
    repeats = args.repeats or (3 if q else 5)
    train_steps = args.train_steps if args.train_steps is not None else (0 if q else 1)
    if q and "memory" in sections and args.only == ",".join(SECTIONS):
        sections.remove("memory")

    load0 = os.getloadavg()
    flags = cpu_flags()
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg_before": load0, "cpu": flags,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "quick": q, "sections": sections}
    with contextlib.suppress(ImportError):
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    print(f"# {meta['date']}  {flags['model']}, {flags['cores']} cores, ISA {flags['isa']}, avx512_bf16 {flags['avx512_bf16']}, "
          f"AMX {flags['amx'] or 'no'}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"{'section':<9} {'what':<58} {'value':>10} {'unit':<9} {'GFLOP/s':>8} {'% ceil':>6}  note")
    t = Table()
    t0 = time.perf_counter()
    if "ceiling" in sections:
        bench_ceiling(t, seconds)
    if "inference" in sections:
        bench_inference(t, presets, batches, paths, seconds)
    if "threads" in sections:
        bench_threads(t, presets, seconds)
    if "e2e" in sections:
        bench_e2e(t, presets, args.checkpoint, args.image, repeats)
    if "train" in sections:
        bench_train(t, presets, train_steps)
    if "loader" in sections:
        bench_loader(t, seconds)
    if "memory" in sections:
        bench_memory(t, args.checkpoint, args.image)
    meta["loadavg_after"] = os.getloadavg()
    meta["seconds"] = time.perf_counter() - t0
    meta["ceiling_gflop_s"] = t.ceiling
    print(f"# load average after: {meta['loadavg_after'][0]:.2f} {meta['loadavg_after'][1]:.2f} {meta['loadavg_after'][2]:.2f}; "
          f"{meta['seconds']:.0f} s; self max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": t.rows}, indent=2) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
