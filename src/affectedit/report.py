"""The evaluation report: ``README.md`` (Markdown tables with the paper's numbers beside ours,
embedded figures), ``metrics.json`` (every number) and the PNG figures, written from the result
dict that ``evaluate.evaluate`` assembles. Every file is written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from affectedit.errors import UserError
from affectedit.figures import examples_figure, heatmap_figure
from affectedit.io import atomic_path

__all__ = ["public", "write_report", "write_texts"]

DIMENSIONS = ("valence", "arousal")


def _file_part(mode: str) -> str:
    return mode.replace("@", "-strength").replace("+", "-").replace("=", "-")


def public(obj):
    """The result without the private (underscored) arrays kept for the figures, JSON-ready."""
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [public(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _row(name: str, scores: dict, comparable: str = "", subsets=("all", "extreme")) -> str:
    cells = [_f(scores[s][m]) if s in scores else "n/a" for s in subsets for m in ("rmse", "sagr", "ccc")]
    return f"| {name} | " + " | ".join(cells) + (f" | {comparable} |" if comparable else " |")


def _data_kind(data: dict) -> str:
    """What the evaluation data's labels are, in words."""
    if data.get("format") == "affectnet":
        return "AffectNet: human valence/arousal annotations"
    if data.get("format") in ("lfw", "london"):
        return ("labels derived from expression classes (LFW's crowd labels through the FER-2013 classifier and "
                "circumplex anchors, `data/labels.py`), not human valence/arousal annotations")
    return "labels of the cache (origin not recorded)"


def _selection(data: dict) -> str:
    if data.get("selection"):
        return f"{data['selection']}; {data.get('people', data['faces'])} people"
    return "spread evenly over the cache" + (f" and shifted by {data['offset']} images" if data.get("offset") else "")


def _label_facts(data: dict, labels: dict) -> list[str]:
    """The evaluation data's label distribution and the training span, as report lines."""
    out = []
    st = data.get("label_stats")
    if st:
        out.append("Labels of the evaluation data: " + "; ".join(
            f"{d} from {st[d]['min']:+.2f} to {st[d]['max']:+.2f}, {100 * st[d]['positive_share']:.1f}% positive"
            for d in DIMENSIONS) + ".")
    tr = labels.get("train_range")
    if tr:
        inside = labels.get("in_range") or []
        out.append(f"Training labels (`{labels.get('train_labels')}`) span valence {tr['valence'][0]:+.2f} to "
                   f"{tr['valence'][1]:+.2f} and arousal {tr['arousal'][0]:+.2f} to {tr['arousal'][1]:+.2f}: "
                   f"{len(inside)} of the grid's {labels['count']} targets lie inside that span in both dimensions "
                   "(\"in range\" below); the others, the corners and every -1 among them, ask for labels that neither the "
                   "editing model nor the regressors were trained on.")
    return out


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
        f"{data['faces']} faces of `{data['path']}` ({data['images']} images): {_selection(data)}; "
        f"{r['labels']['count']} target labels on a {r['labels']['grid']}x{r['labels']['grid']} grid of [-1, 1]^2 "
        f"-> {t4['edits']} edits per mode, {t4['extreme_edits']} for extreme labels. Edit modes: "
        + ", ".join(f"`{m}`" for m in modes) + ". Settings a mode does not name are those stored with the weights: "
        + ", ".join(f"{k} {v}" for k, v in ck.get("edit", {}).items() if k != "label_range")
        + (" (`paper`: the crop replaced by the output G(E(x), y) as a whole, as Lindt et al. use G; for this warp-head "
           "model that is the input's pixels moved and repainted over the whole crop, not the paper's pixel generator"
           if ck.get("head") == "warp" else " (`paper`: the face replaced by x_gen = G(E(x), y), as Lindt et al.")
        + "; `residual`: x + S (G(E(x), y) - "
        "G(E(x), y_x)), y_x the label the face already shows (estimated), with colour `keep` only the brightness "
        "(BT.601 luma) of that change, the same in R, G and B; `warp`: the input's pixels moved by the warp "
        "head's flow and repainted where its mask says; `@S`: strength S; `+mask`: the edit blended into x with "
        "the feathered face ellipse, x + m (edit - x), as an edited photo receives it).",
        "",
        "Regressors: " + "; ".join(f"{d} `{v['path']}` (width {v['width']}, input {v['image_size']}, "
                                    f"{v.get('step')} steps)"
                                    for d, v in r["regressors"].items()) + ".",
        "",
        *_label_facts(data, r["labels"]),
        "",
        "## Table III: regressors on the validation data (ground truth vs prediction)",
        "",
        "| | RMSE | SAGR | CCC | data | comparable to the paper? |",
        "|---|---|---|---|---|---|",
    ]
    affectnet = data.get("format") == "affectnet"
    ours_t3 = ("partly: same kind of labels, other images, our regressors" if affectnet else
               "no: other data, derived labels, our regressors (read it as how well they learnt these labels)")
    for d in DIMENSIONS:
        o, p = t3["ours"].get(d), t3["paper"][d]
        lines.append(f"| Lindt et al., {d} | {_f(p['rmse'])} | {_f(p['sagr'])} | {_f(p['ccc'])} | "
                     "4,500 held-out AffectNet images, human annotations | (the reference) |")
        if o:
            lines.append(f"| ours, {d} | {_f(o['rmse'])} | {_f(o['sagr'])} | {_f(o['ccc'])} | "
                         f"all {data['images']} images of the cache, {_data_kind(data)} | {ours_t3} |")
    ours_t4 = ("partly: AffectNet faces, but our regressors, resolution and face count" if affectnet else
               f"no: {data['faces']} LFW faces at {ck['image_size']}x{ck['image_size']}, derived labels, our regressors")
    lines += [
        "",
        "## Table IV: regressors on the edited faces (target label vs prediction)",
        "",
        ("Only the paper's rows are Lindt et al.'s numbers. Our rows are scored by other regressors trained on other "
         "labels, on other faces, so the two columns of numbers are not the same measurement: compare our modes with "
         "each other and with \"no edit\", not with the paper."
         + (" The evaluation labels are derived partly from the FER-2013 classifier (`fer`) that this model is trained "
            "against, and the regressors learnt those labels: Table IV is not independent of this model's training signal."
            if ck.get("trained_against_fer") and data.get("format") in ("lfw", "london") else "")),
        "",
    ]
    for d in DIMENSIONS:
        lines += [
            f"**{d.capitalize()}**",
            "",
            "| | All RMSE | All SAGR | All CCC | Extreme RMSE | Extreme SAGR | Extreme CCC | comparable to the paper? |",
            "|---|---|---|---|---|---|---|---|",
            _row("Lindt et al. (published)", {s: r["table_iv"]["paper"][s][d] for s in ("all", "extreme")},
                 "(the reference: 4,500 AffectNet faces x 49 labels, 96x96, their regressors)"),
        ]
        for m in modes:
            lines.append(_row(f"ours, mode `{m}`", {s: t4["modes"][m][s][d] for s in ("all", "extreme")}, ours_t4))
        lines.append(_row("ours, no edit (input as is)", {s: t4["unedited"][s][d] for s in ("all", "extreme")},
                          "no: the floor of an editor that changes nothing"))
        lines.append("")
    if r["labels"].get("train_range"):
        n_in = len(r["labels"].get("in_range") or [])
        lines += [
            f"**Targets inside the training label range** ({n_in} of {r['labels']['count']} labels, "
            f"{t4.get('in_range_edits')} edits per mode; the paper reports no such subset)",
            "",
            "| | valence RMSE | valence SAGR | valence CCC | arousal RMSE | arousal SAGR | arousal CCC | comparable to the paper? |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [(f"ours, mode `{m}`", t4["modes"][m]) for m in modes] + [("ours, no edit (input as is)", t4["unedited"])]
        for name, sc in rows:
            sub = sc.get("in_range")
            cells = [_f(sub[d][k]) if sub else "n/a" for d in DIMENSIONS for k in ("rmse", "sagr", "ccc")]
            lines.append(f"| {name} | " + " | ".join(cells) + " | no: a subset the paper does not report |")
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
        trained = idt.get("trained_against")
        caveat = {
            True: ("**This model's identity loss was computed with the same dlib network** (its stage outputs and this "
                   "descriptor): the edits were optimised to keep exactly this distance small, so the share below is "
                   "optimistic by construction and is not an independent measure of identity. No face-recognition "
                   "network independent of training is available here (facenet-pytorch's wheel ships only its MTCNN "
                   "detector; its recognition weights are downloaded at run time, which this project does not do)."),
            False: ("The model was not trained against dlib's network (its identity loss used another network, or "
                    "none), so this measure is independent of its training."),
            None: "Which network the model's identity loss used is not recorded with the weights.",
        }[trained]
        lines += [
            "## Identity preservation",
            "",
            (f"Euclidean distance between the dlib descriptors of the input crop and the edit; "
            f"below {idt['threshold']} = the same person by dlib's rule. " + caveat),
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
    if r.get("notes"):
        lines += ["## Notes", ""]
        for note in r["notes"]:
            lines += [note, ""]
    t = r["timings"]
    lines += ["## Timings", "", ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_report(result: dict, out_dir, fig3: dict | None = None, fig3_inputs=None, fig3_labels=None) -> dict:
    """Write the figures, ``README.md`` and ``metrics.json`` into ``out_dir`` (created if missing).
    ``result``: what ``evaluate`` assembles (with the private heatmap arrays ``_maps``/``_neutral``
    per mode); ``fig3``: {mode: B x L x 3 x S x S edits} of the faces ``fig3_inputs`` for the labels
    ``fig3_labels`` (L x 2). Returns ``result`` with the figure file names added."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the report folder {out}: {e.strerror}") from None
    labels = np.asarray(result["labels"]["values"], dtype=np.float32)
    figures: dict = {"heatmaps": {}, "fig3": {}}
    for m, h in result["heatmaps"]["modes"].items():
        name = f"fig2-heatmaps-{_file_part(m)}.png"
        heatmap_figure(h["_maps"], h["_neutral"], labels, result["heatmaps"]["neutral_index"],
                       f"Fig. 2 heatmaps, mode {m} ({result['data']['faces']} faces, step {result['checkpoint']['step']})",
                       out / name)
        h["file"] = name
        figures["heatmaps"][m] = name
    for m, e in (fig3 or {}).items():
        name = f"fig3-examples-{_file_part(m)}.png"
        examples_figure(fig3_inputs, e, np.asarray(fig3_labels), f"Fig. 3 layout, mode {m}", out / name)
        figures["fig3"][m] = name
    result["figures"] = figures
    write_texts(result, out)
    return result


def write_texts(result: dict, out: Path) -> None:
    """``README.md`` and ``metrics.json`` of ``result`` in the folder ``out``."""
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(_markdown(result))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(public(result), indent=2) + "\n")
