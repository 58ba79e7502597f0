"""Evaluation of the trained editor, following Lindt et al. 2019 (Sec. IV-C and V), for several
edit modes side by side (``EditConfig`` modes "paper", "residual", "warp" and variants, see
``parse_mode``); every edit is made by ``Editor.crop_edit``, the function ``affectedit edit`` uses.

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

The measures themselves (label grid, heatmaps, scores) are in ``scores``, the choice of faces by
person in ``selection``, the report's files in ``report``; all are importable from here.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from affectedit import metrics
from affectedit.errors import UserError
from affectedit.report import public, write_report, write_texts
from affectedit.scores import (
    DIMENSIONS,
    difference_map,
    extreme_mask,
    heatmap_sums,
    in_range_mask,
    label_grid,
    label_stats,
    neutral_index,
    normalise_heatmaps,
    score_labels,
    summary,
    table_iv,
)
from affectedit.selection import CALIBRATION_PART, REPORT_PART, SELECTION_PARTS, identity_part, select_faces

__all__ = [
    "CALIBRATION_PART",
    "PAPER_TABLE_IV",
    "REPORT_PART",
    "SELECTION_PARTS",
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
    "identity_part",
    "in_range_mask",
    "label_stats",
    "select_faces",
    "write_report",
]


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
# Editing a batch of faces to every label.

def parse_mode(name: str) -> tuple[dict, bool]:
    """An edit mode as the report names it: an ``EditConfig`` mode ("residual", "paper" or "warp"),
    then optionally "+mask" (the edit blended into the input with the feathered face ellipse
    ``faces.face_mask``, as a photo receives it: pixels outside the ellipse keep the input's
    values), "+colour=keep" or "+colour=change" and "@S" (strength S in [0, 4]). What a mode does
    not say is the value stored with the weights, as for ``affectedit edit``: "residual" scores the
    edit ``affectedit edit --mode residual`` makes. E.g. "residual@2", "residual+mask+colour=change@2".
    Returns (the EditConfig fields it sets, masked)."""
    text, at, strength = str(name).partition("@")
    base, *suffixes = text.split("+")
    usage = ("use residual, paper or warp, optionally +mask, +colour=keep or +colour=change, and @STRENGTH "
             "(e.g. residual+mask+colour=change@2)")
    colours = [s.partition("=")[2] for s in suffixes if s.startswith("colour=")]
    if (base not in ("residual", "paper", "warp") or len(set(suffixes)) != len(suffixes) or len(colours) > 1
            or not set(suffixes) <= {"mask", "colour=keep", "colour=change"} or (at and not strength)):
        raise UserError(f"unknown edit mode {name!r}; {usage}")
    options = {"mode": base, "colour": colours[0] if colours else None, "strength": None}
    if strength:
        try:
            options["strength"] = float(strength)
        except ValueError:
            raise UserError(f"edit mode {name!r}: the strength after @ must be a number, e.g. residual@2") from None
        if not (math.isfinite(options["strength"]) and 0 <= options["strength"] <= 4):
            raise UserError(f"edit mode {name!r}: the strength must be in [0, 4]")
    return options, "mask" in suffixes


@torch.inference_mode()
def grid_edits(editor, crops: torch.Tensor, labels, modes=("residual", "paper")) -> dict[str, torch.Tensor]:
    """Every crop (B x 3 x S x S in [-1, 1], or uint8 B x S x S x 3) edited to every label (L x 2),
    for each mode (see ``parse_mode``): {mode: B x L x 3 x S x S}, each equal to
    ``compose(x, editor.crop_edit(x, y, **mode options))`` for the crops repeated and the labels
    tiled (then, for "+mask", blended into the crop with ``face_mask``). E(x) and the face's own
    expression run once per face, and G(E(x), y) once for all modes."""
    from affectedit.faces import face_mask
    from affectedit.warp import compose

    specs = {mode: parse_mode(mode) for mode in modes}
    codes = editor.encode_faces(crops, own=any(o["mode"] == "residual" for o, _ in specs.values()))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(-1, 2)
    B, L = len(codes), len(y)
    rows = codes[torch.arange(B).repeat_interleave(L)]
    y = y.repeat(B, 1)
    target = editor.generate(rows.z, y)
    out = {}
    for mode, (options, masked) in specs.items():
        edit = compose(rows.x, editor.crop_edit(rows, y, target=target, **options))
        if masked:
            alpha = torch.tensor(face_mask(rows.x.shape[-1]), dtype=edit.dtype)
            edit = rows.x + alpha * (edit - rows.x)
        out[mode] = edit.view(B, L, *edit.shape[1:])
    return out


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
             device=None, progress: bool = True, train_labels=None, notes=()) -> dict:
    """Run the whole evaluation and write ``out_dir/README.md``, ``out_dir/metrics.json`` and the
    figures (PNG). ``regressors``: see ``resolve_regressors``. ``train_labels``: the training cache;
    Table IV then also scores the targets inside its labels' span (min to max per dimension)
    separately. ``notes``: Markdown paragraphs for the report's end. Returns the metrics dict."""
    from tqdm.auto import tqdm

    from affectedit.editor import Editor
    from affectedit.faces import face_mask
    from affectedit.images import denormalize, normalize
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
    train_range = None
    if train_labels is not None:
        span = label_stats(_open_data(train_labels).labels)
        train_range = {d: [span[d]["min"], span[d]["max"]] for d in DIMENSIONS}
    reg_paths = resolve_regressors(regressors)
    editor = Editor.from_checkpoint(checkpoint, device=device)  # a mode says what it changes; the rest as stored
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
    chosen = select_faces(cache.identities, faces, offset)
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
                       "head": getattr(getattr(getattr(editor, "config", None), "model", None), "head", None),
                       "trained_against_fer": float(getattr(getattr(getattr(editor, "config", None), "loss", None),
                                                            "expression", 0) or 0) > 0,
                       "label_range": editor.edit_config.label_range,
                       "edit": dataclasses.asdict(editor.edit_config)},
        "data": {"path": str(data), "images": len(cache), "faces": n, "offset": int(offset), "indices": chosen.tolist(),
                 "people": len({cache.identities[i] for i in chosen}),
                 "selection": f"one image per person from part {int(offset)} of {SELECTION_PARTS} of the identities "
                              "(evaluate.identity_part: CRC-32 of the name), disjoint by person from every other part",
                 "label_stats": label_stats(cache.labels),
                 "format": cache.meta.get("config", {}).get("format"), "labels_file": cache.meta.get("config", {}).get("labels")},
        "labels": {"grid": grid, "values": labels.tolist(), "count": L,
                   "extreme": labels[extreme_mask(labels)].tolist(),
                   "extreme_definition": "|valence| = 1 and |arousal| = 1 (the four corners of the grid)",
                   "train_range": train_range, "train_labels": str(train_labels) if train_labels is not None else None,
                   "in_range": labels[in_range_mask(labels, train_range)].tolist() if train_range else None},
        "regressors": {d: {"path": str(p), **regs[d].config, "step": regs[d].step} for d, p in reg_paths.items()},
        "table_iii": {"ours": table_iii, "paper": _paper_table_iii()},
        "table_iv": {"paper": PAPER_TABLE_IV, "edits": n * L, "extreme_edits": int(extreme_mask(targets).sum()),
                     "in_range_edits": int(in_range_mask(targets, train_range).sum()) if train_range else None,
                     "unedited": table_iv(targets, {d: np.repeat(np.concatenate(input_preds[d]), L) for d in DIMENSIONS},
                                           train_range),
                     "modes": {}},
        "identity": {"threshold": metrics.SAME_PERSON_THRESHOLD, "network": "dlib", "modes": {},
                     "trained_against": _trained_against_dlib(editor)} if id_net is not None else None,
        "notes": list(notes),
        "background": {"definition": "mean |edit - input| over the pixels with face_mask == 0, fraction of 255; "
                       "face = pixels with face_mask >= 0.5", "background_pixels": int(background.sum()),
                       "face_pixels": int(inner.sum()), "modes": {}},
        "heatmaps": {"definition": "sum over faces of per-pixel max channel |edit(y) - edit(0,0)|, divided by the "
                     "maximum over all 48 sums", "neutral_index": neutral, "modes": {}},
        "modes": list(modes),
        "timings": timings,
    }
    ex = extreme_mask(targets)
    for m in modes:
        result["table_iv"]["modes"][m] = table_iv(targets, {d: np.concatenate(preds[m][d]) for d in DIMENSIONS}, train_range)
        if id_net is not None:
            dist = np.concatenate(id_dist[m])
            same = dist < metrics.SAME_PERSON_THRESHOLD
            result["identity"]["modes"][m] = {
                "all": {**summary(dist), "same_person_share": float(same.mean())},
                "extreme": {**summary(dist[ex]), "same_person_share": float(same[ex].mean())},
                "neutral": {**summary(dist[np.tile(np.arange(L) == neutral, n)]),
                            "same_person_share": float(same[np.tile(np.arange(L) == neutral, n)].mean())},
            }
        bg, fc = np.concatenate(bg_change[m]), np.concatenate(face_change[m])
        result["background"]["modes"][m] = {"background": summary(bg), "face": summary(fc)}
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
    write_report(result, out_dir, fig3=fig3, fig3_inputs=x if examples else None, fig3_labels=fig3_labels)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    # write_report wrote the texts before the last timings were known: rewrite them with them.
    write_texts(result, Path(out_dir))
    return public(result)


def _trained_against_dlib(editor) -> bool | None:
    """Whether the editing model's identity loss used dlib's network (the one the report measures
    identity with); None when the editor does not say how it was trained."""
    loss = getattr(getattr(editor, "config", None), "loss", None)
    if loss is None:
        return None
    used = float(getattr(loss, "identity", 0)) > 0 or float(getattr(loss, "target_identity", 0)) > 0
    return bool(used and str(getattr(loss, "identity_backbone", "dlib")).lower() == "dlib")


@torch.inference_mode()
def _descriptors(net, images: torch.Tensor, device, batch_size: int = 32) -> np.ndarray:
    """dlib descriptors (N x 128) in batches (the network runs at 150 x 150 internally)."""
    out = [net.descriptor(images[i:i + batch_size].to(device)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def _paper_table_iii() -> dict:
    from affectedit.regressor import PAPER_TABLE_III

    return PAPER_TABLE_III
