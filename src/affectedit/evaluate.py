"""Evaluation of the trained editor, following Lindt et al. 2019 (Sec. IV-C and V), for several
edit modes side by side (``Editor`` modes "paper" and "residual").

``evaluate(checkpoint, data, regressors, out_dir)`` writes ``out_dir/README.md`` (Markdown tables
with the paper's numbers beside ours, embedded figures) and ``out_dir/metrics.json`` (every
number). What it measures, on ``faces`` held-out aligned crops of a labelled cache:

* Table III: the valence/arousal regressors on the whole cache (ground truth vs prediction).
* Table IV: every face edited to every label of an ``n x n`` grid of [-1, 1]^2 (the paper: 7 x 7
  = 49 labels including (0, 0)); the regressors score the edits against their target labels
  (RMSE, SAGR, CCC), for all edits and for the *extreme* labels. Extreme = the four corners
  (|valence| = 1 and |arousal| = 1): the paper calls them "very low/high arousal and very
  low/high valence" and counts 18,000 of 220,500 images, i.e. exactly 4 of 49 labels for each of
  its 4,500 validation images. A "no edit" row scores the unedited input against the same
  targets: the floor an editor that changes nothing would reach.
* Fig. 2: for each non-neutral label the per-pixel max(|R1-R2|, |G1-G2|, |B1-B2|) between the
  edit for that label and the edit for (0, 0) (not the input), summed over the faces; all 48 sums
  are divided by their common maximum, so brightness is comparable across labels (the paper's
  text: weaker emotions change less).
* Identity: Euclidean distance between the dlib descriptors of the input crop and each edit;
  share of edits under ``metrics.SAME_PERSON_THRESHOLD`` (0.6, dlib's same-person threshold).
* Background: mean absolute change of the crop's pixels outside the face (``faces.face_mask`` == 0),
  as a fraction of the 8-bit range; the change inside the face (mask >= 0.5) beside it.
* Fig. 3: 5 x 5 grids of labels for a few faces (arousal high to low left to right, valence high
  to low top to bottom), one figure per mode.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from affectedit import metrics
from affectedit.errors import UserError
from affectedit.io import atomic_path

__all__ = [
    "PAPER_TABLE_IV",
    "difference_map",
    "evaluate",
    "extreme_mask",
    "grid_edits",
    "heatmap_sums",
    "label_grid",
    "neutral_index",
    "normalise_heatmaps",
    "parse_mode",
    "resolve_regressors",
    "score_labels",
    "select_faces",
    "write_report",
]

DIMENSIONS = ("valence", "arousal")

# Table IV of the paper: the regressors on 220,500 generated images (18,000 for extreme labels).
PAPER_TABLE_IV = {
    "all": {
        "valence": {"rmse": 0.528, "sagr": 0.567, "ccc": 0.312},
        "arousal": {"rmse": 0.607, "sagr": 0.483, "ccc": 0.210},
    },
    "extreme": {
        "valence": {"rmse": 0.671, "sagr": 0.691, "ccc": 0.353},
        "arousal": {"rmse": 0.720, "sagr": 0.624, "ccc": 0.267},
    },
}

REGRESSOR_HINT = ("train them with `affectedit regressor train --train cache/lfw-train-64 --val cache/lfw-val-64 "
                  "--width 0.25 -o runs/regressors/reg64` (writes reg64-valence.pt and reg64-arousal.pt)")


# ---------------------------------------------------------------------------------------------
# Labels.

def label_grid(n: int = 7) -> np.ndarray:
    """The ``n x n`` grid of [-1, 1]^2 as ``n*n x 2`` [valence, arousal], row-major in the paper's
    figure layout: row i has valence ``1 - 2i/(n-1)`` (high to low, top to bottom), column j has
    arousal ``1 - 2j/(n-1)`` (high to low, left to right). ``n`` odd, so (0, 0) is included."""
    if n < 3 or n % 2 == 0:
        raise UserError(f"the label grid needs an odd size >= 3 so that it includes (0, 0), got {n}")
    values = np.linspace(1.0, -1.0, n)
    values[n // 2] = 0.0  # exactly zero, not 1e-16
    v, a = np.meshgrid(values, values, indexing="ij")
    return np.stack([v.ravel(), a.ravel()], axis=1).astype(np.float32)


def extreme_mask(labels, tol: float = 1e-6) -> np.ndarray:
    """True for the paper's extreme labels: |valence| = 1 and |arousal| = 1 (the grid's corners)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return (np.abs(np.abs(labels[:, 0]) - 1) <= tol) & (np.abs(np.abs(labels[:, 1]) - 1) <= tol)


def neutral_index(labels) -> int:
    """Index of the neutral label (0, 0) in ``labels`` (n x 2)."""
    labels = np.asarray(labels).reshape(-1, 2)
    hits = np.flatnonzero(np.all(np.abs(labels) < 1e-6, axis=1))
    if len(hits) != 1:
        raise ValueError("the labels must contain (0, 0) exactly once")
    return int(hits[0])


def select_faces(total: int, n: int, offset: int = 0) -> np.ndarray:
    """``n`` indices spread evenly over ``range(total)`` (caches are ordered by file, so the first
    n would come from few people); all of them if n >= total. ``offset`` shifts them (modulo
    total): with n well below total / 2, offsets 0 and a few give disjoint sets of images, e.g. one
    to choose settings on (calibration) and one to report."""
    if total < 1:
        raise UserError("the evaluation cache holds no images")
    n = min(int(n), total)
    return np.unique((np.linspace(0, total - 1, n).round().astype(int) + int(offset)) % total)


# ---------------------------------------------------------------------------------------------
# Heatmaps (Fig. 2).

def difference_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel max(|R1-R2|, |G1-G2|, |B1-B2|): ``... x 3 x H x W`` -> ``... x H x W``, in the
    images' own units (for [-1, 1] images the range is [0, 2])."""
    if a.shape != b.shape or a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"images must be ... x 3 x H x W of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.float() - b.float()).abs().amax(dim=-3)


def heatmap_sums(edits: torch.Tensor, neutral: int) -> torch.Tensor:
    """``edits``: N faces x L labels x 3 x H x W. Returns L x H x W: for every label the sum over
    the faces of ``difference_map(edit for that label, edit for label `neutral`)`` (zero at
    ``neutral``). Add the sums of several batches of faces to cover more faces."""
    if edits.ndim != 5:
        raise ValueError(f"edits must be N x L x 3 x H x W, got {tuple(edits.shape)}")
    reference = edits[:, neutral:neutral + 1].expand_as(edits)
    return difference_map(edits, reference).sum(dim=0)


def normalise_heatmaps(sums: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Divide all heatmaps by their common maximum (-> [0, 1]; labels stay comparable).
    Returns (normalised, the maximum); all-zero sums stay zero."""
    peak = float(sums.max()) if sums.numel() else 0.0
    return (sums / peak if peak > 0 else torch.zeros_like(sums)), peak


# ---------------------------------------------------------------------------------------------
# Scores.

def score_labels(targets, predictions) -> dict[str, float]:
    """RMSE, SAGR, CCC of predictions against target labels (1-D arrays). ``sagr_nonzero`` is SAGR
    over the targets that are not 0: a target of exactly 0 has sign 0, which no prediction shares,
    so SAGR over a grid containing 0 cannot reach 1."""
    targets = np.asarray(targets, dtype=np.float64).ravel()
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    nonzero = targets != 0
    return {
        "rmse": metrics.rmse(predictions, targets),
        "sagr": metrics.sagr(predictions, targets),
        "ccc": metrics.ccc(predictions, targets),
        "sagr_nonzero": metrics.sagr(predictions[nonzero], targets[nonzero]) if nonzero.any() else float("nan"),
        "count": len(targets),
    }


def _table_iv(targets: np.ndarray, predictions: dict[str, np.ndarray]) -> dict:
    """{"all"|"extreme": {dimension: scores}} for targets K x 2 and predictions {dim: K}."""
    extreme = extreme_mask(targets)
    out = {}
    for subset, keep in (("all", np.ones(len(targets), bool)), ("extreme", extreme)):
        out[subset] = {d: score_labels(targets[keep, i], predictions[d][keep]) for i, d in enumerate(DIMENSIONS)}
    return out


def _summary(values) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max()), "count": len(v)}


# ---------------------------------------------------------------------------------------------
# Editing a batch of faces to every label.

def parse_mode(name: str) -> tuple[str, float | None, bool, bool]:
    """An edit mode as the report names it: "paper" or "residual", then optionally "+mask" (the
    edit blended into the input with the feathered face ellipse ``faces.face_mask``, exactly what
    ``faces.paste_back`` does when a photo is edited: pixels outside the ellipse keep the input's
    values), for residual optionally "+luma" (only the brightness part of the change,
    ``editor.luma_change``: the photo keeps its colours), then, for residual, optionally "@S"
    (strength S in (0, 4]). E.g. "residual@2", "residual+mask+luma@2", "paper+mask".
    Returns (base mode, strength or None, masked, luma)."""
    text, _, strength = str(name).partition("@")
    base, *suffixes = text.split("+")
    usage = "use paper or residual, optionally +mask, and for residual +luma and @STRENGTH (e.g. residual+mask+luma@2)"
    if (base not in ("residual", "paper") or (strength and base != "residual") or len(set(suffixes)) != len(suffixes)
            or not set(suffixes) <= {"mask", "luma"} or (base == "paper" and "luma" in suffixes)):
        raise UserError(f"unknown edit mode {name!r}; {usage}")
    masked, luma = "mask" in suffixes, "luma" in suffixes
    if not strength:
        return base, None, masked, luma
    try:
        value = float(strength)
    except ValueError:
        raise UserError(f"edit mode {name!r}: the strength after @ must be a number, e.g. residual@2") from None
    if not (math.isfinite(value) and 0 < value <= 4):
        raise UserError(f"edit mode {name!r}: the strength must be in (0, 4]")
    return base, value, masked, luma


@torch.inference_mode()
def grid_edits(editor, crops: torch.Tensor, labels, modes=("residual", "paper")) -> dict[str, torch.Tensor]:
    """Every crop (B x 3 x S x S in [-1, 1]) edited to every label (L x 2), for each mode (see
    ``parse_mode``): {mode: B x L x 3 x S x S}. Equal to ``editor.edit_crops(crops repeated, labels
    tiled, mode, strength)`` (then, for "+mask", blended into the crop with ``face_mask``) but E(x),
    the estimate of the face's own label and G(E(x), y_x) run once per face instead of once per
    (face, label), and G(E(x), y) is shared by the modes."""
    from affectedit.faces import face_mask

    x = editor._as_crops(crops)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(-1, 2)
    B, L = len(x), len(y)
    z = editor.encode(x)
    target = editor.generate(z.repeat_interleave(L, 0), y.repeat(B, 1)).view(B, L, *x.shape[1:])
    source = None
    out = {}
    for mode in modes:
        base, strength, masked, luma = parse_mode(mode)
        if base == "paper":
            edit = target
        else:
            if source is None:
                source = editor.generate(z, editor.estimate_labels(x, z))
            edit = editor.apply_change(x[:, None], target, source[:, None], strength, keep_colour=luma)
        if masked:
            alpha = torch.tensor(face_mask(x.shape[-1]), device=x.device, dtype=x.dtype)
            edit = x[:, None] + alpha * (edit - x[:, None])
        out[mode] = edit
    return out


def _file_part(mode: str) -> str:
    return mode.replace("@", "-strength").replace("+", "-")


# ---------------------------------------------------------------------------------------------
# Inputs.

def resolve_regressors(spec) -> dict[str, Path]:
    """{"valence": path, "arousal": path} from one PREFIX (PREFIX-valence.pt and PREFIX-arousal.pt,
    as `affectedit regressor train --dimension both -o PREFIX` writes them), a folder holding one
    *valence*.pt and one *arousal*.pt, or two checkpoint paths (their dimension is read from them)."""
    from affectedit.regressor import load_regressor

    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if len(items) == 1:
        p = Path(items[0])
        if p.is_dir():
            found = {d: sorted(p.glob(f"*{d}*.pt")) for d in DIMENSIONS}
            for d, files in found.items():
                if len(files) != 1:
                    what = "no" if not files else f"{len(files)}"
                    raise UserError(f"{what} {d} regressor (*{d}*.pt) in {p}; pass the two checkpoints explicitly, "
                                    f"or {REGRESSOR_HINT}")
            return {d: files[0] for d, files in found.items()}
        if p.suffix == ".pt" and p.is_file():
            raise UserError(f"--regressors got one checkpoint ({p}); pass a valence and an arousal checkpoint, "
                            "or their common PREFIX")
        stem = p.with_suffix("") if p.suffix == ".pt" else p
        paths = {d: stem.with_name(f"{stem.name}-{d}.pt") for d in DIMENSIONS}
        missing = [str(q) for q in paths.values() if not q.is_file()]
        if missing:
            raise UserError(f"regressor checkpoint(s) not found: {', '.join(missing)}; {REGRESSOR_HINT}")
        return paths
    if len(items) != 2:
        raise UserError(f"--regressors takes one PREFIX or two checkpoints (valence and arousal), got {len(items)}")
    out: dict[str, Path] = {}
    for item in items:
        p = Path(item)
        if not p.is_file():
            raise UserError(f"regressor checkpoint {p} not found; {REGRESSOR_HINT}")
        dimension = load_regressor(p, device="cpu").dimension
        if dimension in out:
            raise UserError(f"{out[dimension]} and {p} are both {dimension} regressors; pass one valence and one arousal")
        out[dimension] = p
    return out


def _open_data(data):
    from affectedit.data.cache import FaceCache

    p = Path(data)
    if not p.is_dir():
        raise UserError(f"evaluation cache {p} does not exist; make it with `affectedit prepare --data "
                        "../shared/data/lfw-expressions --format lfw --labels data/lfw-expressions-va.csv "
                        f"--split val --size 64 -o {p}`")
    try:
        return FaceCache(p)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign folder
        raise UserError(f"{p} is not a readable face cache ({type(e).__name__}: {e}); rebuild it with `affectedit prepare`") from None


# ---------------------------------------------------------------------------------------------
# The run.

def evaluate(checkpoint, data, regressors, out_dir, faces: int = 100, modes=("residual", "paper"),
             grid: int = 7, examples: int = 3, batch_faces: int = 8, identity: bool = True, offset: int = 0,
             device=None, progress: bool = True) -> dict:
    """Run the whole evaluation and write ``out_dir/README.md``, ``out_dir/metrics.json`` and the
    figures (PNG). ``regressors``: see ``resolve_regressors``. Returns the metrics dict."""
    from tqdm.auto import tqdm

    from affectedit.data.cache import denormalize, normalize
    from affectedit.editor import Editor
    from affectedit.faces import face_mask
    from affectedit.regressor import evaluate_regressor, load_regressor, predict

    modes = tuple(dict.fromkeys(modes))
    for mode in modes:
        parse_mode(mode)
    if not modes:
        raise UserError("no edit mode to evaluate; pass --modes residual,paper")
    if faces < 1:
        raise UserError(f"--faces must be at least 1, got {faces}")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    cache = _open_data(data)
    reg_paths = resolve_regressors(regressors)
    editor = Editor.from_checkpoint(checkpoint, device=device, strength=1.0)  # "residual" = strength 1; residual@S for others
    S = editor.image_size
    cache_size = int(cache.images.shape[1])
    if cache_size != S:
        raise UserError(f"the cache {data} holds {cache_size}x{cache_size} crops but the model edits {S}x{S}; "
                        f"prepare the evaluation cache with --size {S}")
    regs = {d: load_regressor(p, device=editor.device) for d, p in reg_paths.items()}
    for d, net in regs.items():
        if net.dimension != d:
            raise UserError(f"{reg_paths[d]} holds a {net.dimension} regressor, expected {d}")
    id_net = None
    if identity:
        from affectedit.identity import build_identity_net

        id_net = build_identity_net("dlib").to(editor.device).eval()
    timings["load_s"] = time.perf_counter() - t_start

    # Table III on the whole cache.
    t0 = time.perf_counter()
    table_iii = {d: evaluate_regressor(net, cache) for d, net in regs.items()}
    timings["table_iii_s"] = time.perf_counter() - t0

    labels = label_grid(grid)
    L = len(labels)
    neutral = neutral_index(labels)
    chosen = select_faces(len(cache), faces, offset)
    mask = face_mask(S)
    background = mask == 0
    inner = mask >= 0.5
    if not background.any():
        raise UserError(f"the face mask at {S}x{S} leaves no background pixels to measure")

    sums = {m: torch.zeros(L, S, S, dtype=torch.float64) for m in modes}
    neutral_sum = {m: torch.zeros(3, S, S, dtype=torch.float64) for m in modes}
    preds = {m: {d: [] for d in DIMENSIONS} for m in modes}
    input_preds = {d: [] for d in DIMENSIONS}
    id_dist = {m: [] for m in modes}
    bg_change = {m: [] for m in modes}
    face_change = {m: [] for m in modes}

    t0 = time.perf_counter()
    bar = tqdm(total=len(chosen), desc="evaluate", unit="face", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(chosen), batch_faces):
        index = chosen[start:start + batch_faces]
        raw = np.ascontiguousarray(cache.images[index])  # B x S x S x 3 uint8
        x = normalize(raw)
        B = len(x)
        for d, net in regs.items():
            input_preds[d].append(predict(net, x))
        desc_in = _descriptors(id_net, x, editor.device) if id_net is not None else None
        edits = grid_edits(editor, x, labels, modes)
        for m, e in edits.items():
            sums[m] += heatmap_sums(e, neutral).double()
            neutral_sum[m] += e[:, neutral].double().sum(0)
            flat = e.reshape(B * L, 3, S, S)
            for d, net in regs.items():
                preds[m][d].append(predict(net, flat))
            if id_net is not None:
                desc_out = _descriptors(id_net, flat, editor.device)
                id_dist[m].append(metrics.identity_distance(np.repeat(desc_in, L, axis=0), desc_out))
            out_u8 = denormalize(flat).astype(np.int16)
            in_u8 = np.repeat(raw, L, axis=0).astype(np.int16)
            diff = np.abs(out_u8 - in_u8)  # K x S x S x 3
            bg_change[m].append(diff[:, background].mean(axis=(1, 2)) / 255.0)
            face_change[m].append(diff[:, inner].mean(axis=(1, 2)) / 255.0)
        bar.update(B)
    bar.close()
    timings["edits_s"] = time.perf_counter() - t0

    n = len(chosen)
    targets = np.tile(labels, (n, 1))  # face-major, label-minor: the order of the predictions
    result: dict = {
        "checkpoint": {"path": str(checkpoint), "step": int(editor.step), "image_size": S,
                       "label_range": editor.label_range},
        "data": {"path": str(data), "images": len(cache), "faces": n, "offset": int(offset), "indices": chosen.tolist()},
        "labels": {"grid": grid, "values": labels.tolist(), "count": L,
                   "extreme": labels[extreme_mask(labels)].tolist(),
                   "extreme_definition": "|valence| = 1 and |arousal| = 1 (the four corners of the grid)"},
        "regressors": {d: {"path": str(p), **regs[d].config, "step": _regressor_step(p)} for d, p in reg_paths.items()},
        "table_iii": {"ours": table_iii, "paper": _paper_table_iii()},
        "table_iv": {"paper": PAPER_TABLE_IV, "edits": n * L, "extreme_edits": int(extreme_mask(targets).sum()),
                     "unedited": _table_iv(targets, {d: np.repeat(np.concatenate(input_preds[d]), L) for d in DIMENSIONS}),
                     "modes": {}},
        "identity": {"threshold": metrics.SAME_PERSON_THRESHOLD, "modes": {}} if id_net is not None else None,
        "background": {"definition": "mean |edit - input| over the pixels with face_mask == 0, fraction of 255; "
                       "face = pixels with face_mask >= 0.5", "background_pixels": int(background.sum()),
                       "face_pixels": int(inner.sum()), "modes": {}},
        "heatmaps": {"definition": "sum over faces of per-pixel max channel |edit(y) - edit(0,0)|, divided by the "
                     "maximum over all 48 sums", "modes": {}},
        "modes": list(modes),
        "timings": timings,
    }
    ex = extreme_mask(targets)
    for m in modes:
        result["table_iv"]["modes"][m] = _table_iv(targets, {d: np.concatenate(preds[m][d]) for d in DIMENSIONS})
        if id_net is not None:
            dist = np.concatenate(id_dist[m])
            same = dist < metrics.SAME_PERSON_THRESHOLD
            result["identity"]["modes"][m] = {
                "all": {**_summary(dist), "same_person_share": float(same.mean())},
                "extreme": {**_summary(dist[ex]), "same_person_share": float(same[ex].mean())},
                "neutral": {**_summary(dist[np.tile(np.arange(L) == neutral, n)]),
                            "same_person_share": float(same[np.tile(np.arange(L) == neutral, n)].mean())},
            }
        bg, fc = np.concatenate(bg_change[m]), np.concatenate(face_change[m])
        result["background"]["modes"][m] = {"background": _summary(bg), "face": _summary(fc)}
        normalised, peak = normalise_heatmaps(sums[m])
        mean_diff = (sums[m] / n).mean(dim=(1, 2)) / 2.0  # mean per-pixel max channel change, fraction of range
        result["heatmaps"]["modes"][m] = {
            "normaliser": peak, "mean_difference": mean_diff.view(grid, grid).tolist(),
            "_maps": normalised.float().numpy(), "_neutral": (neutral_sum[m] / n).float(),
        }
    # Fig. 3 grids for a few faces.
    t0 = time.perf_counter()
    examples = max(0, min(int(examples), n))
    fig3_labels = label_grid(5)
    fig3 = {}
    if examples:
        x = normalize(np.ascontiguousarray(cache.images[chosen[:examples]]))
        fig3 = grid_edits(editor, x, fig3_labels, modes)
        result["examples"] = {"indices": chosen[:examples].tolist(),
                              "sources": [cache.sources[i] for i in chosen[:examples]]}
    timings["fig3_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(result, out_dir, fig3=fig3, fig3_inputs=x if examples else None)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    # write_report wrote the texts before the last timings were known: rewrite them with them.
    _write_texts(result, Path(out_dir))
    return _public(result)


@torch.inference_mode()
def _descriptors(net, images: torch.Tensor, device, batch_size: int = 32) -> np.ndarray:
    """dlib descriptors (N x 128) in batches (the network runs at 150 x 150 internally)."""
    out = [net.descriptor(images[i:i + batch_size].to(device)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def _regressor_step(path) -> int | None:
    from affectedit.regressor import _read_checkpoint

    try:
        return int(_read_checkpoint(path).get("step", 0))
    except Exception:  # noqa: BLE001 - informational only
        return None


def _paper_table_iii() -> dict:
    from affectedit.regressor import PAPER_TABLE_III

    return PAPER_TABLE_III


def _public(obj):
    """The result without the private (underscored) arrays kept for the figures."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_public(result), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Figures and report.

def _to_image(t: torch.Tensor) -> np.ndarray:
    """3 x H x W in [-1, 1] -> H x W x 3 float in [0, 1]."""
    return ((t.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _heatmap_figure(maps: np.ndarray, neutral_face: torch.Tensor, labels: np.ndarray, title: str, path: Path) -> None:
    """The n x n heatmaps as one mosaic (grey, 0 black .. 1 white), the mean (0, 0) edit in the
    centre; rows valence high -> low, columns arousal high -> low, as the paper's Fig. 2."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = round(math.sqrt(len(labels)))
    S = maps.shape[-1]
    gap = max(1, S // 16)
    cell = S + gap
    mosaic = np.ones((n * cell - gap, n * cell - gap, 3), dtype=np.float32)
    centre = neutral_index(labels)
    for k in range(len(labels)):
        i, j = divmod(k, n)
        tile = _to_image(neutral_face) if k == centre else np.repeat(np.clip(maps[k], 0, 1)[..., None], 3, axis=2)
        mosaic[i * cell:i * cell + S, j * cell:j * cell + S] = tile
    fig, ax = plt.subplots(figsize=(1.0 * n + 1.2, 1.0 * n + 1.0))
    ax.imshow(mosaic, interpolation="nearest")
    ticks = np.arange(n) * cell + S / 2
    ax.set_xticks(ticks, [f"{a:+.2f}" for a in labels[:n, 1]], fontsize=7)
    ax.set_yticks(ticks, [f"{v:+.2f}" for v in labels[::n, 0]], fontsize=7)
    ax.set_xlabel("arousal (high -> low)", fontsize=8)
    ax.set_ylabel("valence (high -> low)", fontsize=8)
    ax.set_title(title, fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _grid_figure(inputs: torch.Tensor, edits: torch.Tensor, labels: np.ndarray, title: str, path: Path) -> None:
    """One row per face: the input, then the n x n mosaic of its edits (valence high -> low top to
    bottom, arousal high -> low left to right), as the paper's Fig. 3."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    B, L = edits.shape[:2]
    n = round(math.sqrt(L))
    S = edits.shape[-1]
    gap = max(1, S // 32)
    cell = S + gap
    fig, axes = plt.subplots(B, 2, figsize=(1.1 * n + 2.6, (1.1 * n + 0.6) * B), squeeze=False,
                             gridspec_kw={"width_ratios": [1, n]})
    ticks = np.arange(n) * cell + S / 2
    for b in range(B):
        ax_in, ax = axes[b, 0], axes[b, 1]
        ax_in.imshow(_to_image(inputs[b]))
        ax_in.set_title("input", fontsize=8)
        ax_in.axis("off")
        mosaic = np.ones((n * cell - gap, n * cell - gap, 3), dtype=np.float32)
        for k in range(L):
            i, j = divmod(k, n)
            mosaic[i * cell:i * cell + S, j * cell:j * cell + S] = _to_image(edits[b, k])
        ax.imshow(mosaic)
        ax.set_xticks(ticks, [f"{a:+.1f}" for a in labels[:n, 1]], fontsize=7)
        ax.set_yticks(ticks, [f"{v:+.1f}" for v in labels[::n, 0]], fontsize=7)
        ax.set_xlabel("arousal (high -> low)", fontsize=8)
        ax.set_ylabel("valence (high -> low)", fontsize=8)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    _savefig(fig, path)
    plt.close(fig)


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _row(name: str, scores: dict) -> str:
    cells = [_f(scores[s][m]) for s in ("all", "extreme") for m in ("rmse", "sagr", "ccc")]
    return f"| {name} | " + " | ".join(cells) + " |"


def _markdown(r: dict) -> str:
    modes = r["modes"]
    ck, data = r["checkpoint"], r["data"]
    t3, t4 = r["table_iii"], r["table_iv"]
    lines = [
        "# Evaluation report",
        "",
        f"Checkpoint `{ck['path']}` (step {ck['step']}, {ck['image_size']}x{ck['image_size']}"
        + (f"; target labels mapped onto the training range valence {ck['label_range'][0]}, arousal "
           f"{ck['label_range'][1]} before G sees them, scored against the targets as asked" if ck.get("label_range") else "")
        + "); "
        f"{data['faces']} faces of `{data['path']}` ({data['images']} images), spread evenly over the cache"
        + (f" and shifted by {data['offset']} images" if data.get("offset") else "") + "; "
        f"{r['labels']['count']} target labels on a {r['labels']['grid']}x{r['labels']['grid']} grid of [-1, 1]^2 "
        f"-> {t4['edits']} edits per mode, {t4['extreme_edits']} for extreme labels. Edit modes: "
        + ", ".join(f"`{m}`" for m in modes) + " (`paper`: x_gen = G(E(x), y), as Lindt et al.; "
        "`residual`: x + G(E(x), y) - G(E(x), y_x), y_x the label the face already shows (estimated); "
        "`residual@S`: x + S (G(E(x), y) - G(E(x), y_x)); `+mask`: the edit blended into x with the feathered "
        "face ellipse, x + m (edit - x), as an edited photo receives it from paste-back; `+luma`: only the "
        "brightness (BT.601 luma) of the change, the same in R, G and B, so the input keeps its colours).",
        "",
        "Regressors: " + "; ".join(f"{d} `{v['path']}` (width {v['width']}, input {v['image_size']}, "
                                    f"{v.get('step')} steps)"
                                    for d, v in r["regressors"].items()) + ".",
        "",
        "## Table III: regressors on the validation data (ground truth vs prediction)",
        "",
        "| | RMSE | SAGR | CCC | paper RMSE | paper SAGR | paper CCC |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in DIMENSIONS:
        o, p = t3["ours"].get(d), t3["paper"][d]
        if o:
            lines.append(f"| {d} | {_f(o['rmse'])} | {_f(o['sagr'])} | {_f(o['ccc'])} | "
                         f"{_f(p['rmse'])} | {_f(p['sagr'])} | {_f(p['ccc'])} |")
    lines += [
        "",
        f"Ours: all {data['images']} images of the cache. Paper: 4,500 held-out AffectNet images.",
        "",
        "## Table IV: regressors on the edited faces (target label vs prediction)",
        "",
    ]
    for d in DIMENSIONS:
        lines += [
            f"**{d.capitalize()}**",
            "",
            "| | All RMSE | All SAGR | All CCC | Extreme RMSE | Extreme SAGR | Extreme CCC |",
            "|---|---|---|---|---|---|---|",
            _row("Lindt et al. (published)", {s: PAPER_TABLE_IV[s][d] for s in ("all", "extreme")}),
        ]
        for m in modes:
            lines.append(_row(f"ours, mode `{m}`", {s: t4["modes"][m][s][d] for s in ("all", "extreme")}))
        lines.append(_row("ours, no edit (input as is)", {s: t4["unedited"][s][d] for s in ("all", "extreme")}))
        lines.append("")
    lines += [
        ("Extreme labels: |valence| = 1 and |arousal| = 1, the four corners of the grid (the paper's "
        "18,000 of 220,500 images = 4 of 49 labels per validation image). \"No edit\" scores the "
        "regressors' predictions for the unedited input against the same targets: an editor that "
        "changes nothing would score this. Table IV alone rewards an output that shows the target label "
        "whatever the face it came from: read it together with identity and background below."),
        "",
        ("SAGR counts sign agreement; targets of exactly 0 (1/7 of each dimension on the 7x7 grid) can "
        "never agree, so SAGR over all labels is at most 6/7. SAGR over the non-zero targets only:"),
        "",
        "| | valence | arousal |",
        "|---|---|---|",
    ]
    for m in modes:
        s = t4["modes"][m]["all"]
        lines.append(f"| mode `{m}` | {_f(s['valence']['sagr_nonzero'])} | {_f(s['arousal']['sagr_nonzero'])} |")
    s = t4["unedited"]["all"]
    lines.append(f"| no edit | {_f(s['valence']['sagr_nonzero'])} | {_f(s['arousal']['sagr_nonzero'])} |")
    lines.append("")

    if r.get("identity"):
        idt = r["identity"]
        lines += [
            "## Identity preservation",
            "",
            (f"Euclidean distance between the dlib descriptors of the input crop and the edit; "
            f"below {idt['threshold']} = the same person by dlib's rule."),
            "",
            ("| mode | mean distance | median | 95th pct | same person (all) | same person (extreme) | "
            "same person (label (0, 0)) |"),
            "|---|---|---|---|---|---|---|",
        ]
        for m in modes:
            s = idt["modes"][m]
            lines.append(f"| `{m}` | {_f(s['all']['mean'])} | {_f(s['all']['median'])} | {_f(s['all']['p95'])} | "
                         f"{100 * s['all']['same_person_share']:.1f}% | {100 * s['extreme']['same_person_share']:.1f}% | "
                         f"{100 * s['neutral']['same_person_share']:.1f}% |")
        lines.append("")
    bg = r["background"]
    lines += [
        "## Background preservation",
        "",
        (f"Mean absolute change |edit - input| as a fraction of the 8-bit range, outside the face "
        f"(face_mask == 0, {bg['background_pixels']} pixels of the crop) and, for comparison, inside it "
        f"(face_mask >= 0.5, {bg['face_pixels']} pixels)."
        + (" `+mask` modes leave the background unchanged by construction (0 here)." if any("+mask" in m for m in modes) else "")),
        "",
        "| mode | background mean | background 95th pct | face mean | face 95th pct |",
        "|---|---|---|---|---|",
    ]
    for m in modes:
        s = bg["modes"][m]
        lines.append(f"| `{m}` | {_f(s['background']['mean'])} | {_f(s['background']['p95'])} | "
                     f"{_f(s['face']['mean'])} | {_f(s['face']['p95'])} |")
    lines += [
        "",
        "## Fig. 2: heatmaps",
        "",
        ("Per pixel max(|R1-R2|, |G1-G2|, |B1-B2|) between the edit for each label and the edit for "
        "(0, 0), summed over the faces, divided by the largest value over all 48 maps (white = that "
        "maximum). Rows: valence high to low; columns: arousal high to low; centre: the mean edit for (0, 0)."),
        "",
    ]
    for m in modes:
        h = r["heatmaps"]["modes"][m]
        md = np.asarray(h["mean_difference"])
        lines += [f"![heatmaps, mode {m}]({h['file']})", "",
                  (f"Mode `{m}`: mean per-pixel change against (0, 0), fraction of the range "
                  f"(rows valence high -> low, columns arousal high -> low):"), "",
                  "| v \\ a | " + " | ".join(f"{a:+.2f}" for a in np.asarray(r['labels']['values'])[:md.shape[1], 1]) + " |",
                  "|---" * (md.shape[1] + 1) + "|"]
        values = np.asarray(r["labels"]["values"])
        for i in range(md.shape[0]):
            lines.append(f"| {values[i * md.shape[1], 0]:+.2f} | " + " | ".join(f"{v:.4f}" for v in md[i]) + " |")
        lines.append("")
    if r.get("figures", {}).get("fig3"):
        lines += ["## Fig. 3: examples", "",
                  "Input, then 5 x 5 labels: arousal high to low left to right, valence high to low top to bottom.", ""]
        for m, f in r["figures"]["fig3"].items():
            lines += [f"![examples, mode {m}]({f})", ""]
    t = r["timings"]
    lines += ["## Timings", "", ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_report(result: dict, out_dir, fig3: dict | None = None, fig3_inputs: torch.Tensor | None = None) -> dict:
    """Write the figures, ``README.md`` and ``metrics.json`` into ``out_dir`` (created if missing);
    every file atomically. ``result`` is what ``evaluate`` assembles (with the private heatmap
    arrays ``_maps``/``_neutral`` per mode). Returns ``result`` with the figure file names added."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the report folder {out}: {e.strerror}") from None
    labels = np.asarray(result["labels"]["values"], dtype=np.float32)
    figures: dict = {"heatmaps": {}, "fig3": {}}
    for m, h in result["heatmaps"]["modes"].items():
        name = f"fig2-heatmaps-{_file_part(m)}.png"
        _heatmap_figure(h["_maps"], h["_neutral"], labels, f"Fig. 2 heatmaps, mode {m} "
                        f"({result['data']['faces']} faces, step {result['checkpoint']['step']})", out / name)
        h["file"] = name
        figures["heatmaps"][m] = name
    if fig3:
        fig3_labels = label_grid(round(math.sqrt(next(iter(fig3.values())).shape[1])))
        for m, e in fig3.items():
            name = f"fig3-examples-{_file_part(m)}.png"
            _grid_figure(fig3_inputs, e, fig3_labels, f"Fig. 3 layout, mode {m}", out / name)
            figures["fig3"][m] = name
    result["figures"] = figures
    _write_texts(result, out)
    return result


def _write_texts(result: dict, out: Path) -> None:
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_markdown(result))
    _write_json(out / "metrics.json", result)
