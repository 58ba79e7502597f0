"""Figures: the n x n grid of edits (the paper's Fig. 3, with Pillow), the photo report's grid of
face cuts (Pillow), animations (GIF with Pillow, MP4 with OpenCV) and the evaluation report's
figures (Fig. 2 heatmaps and Fig. 3 mosaics, with matplotlib).

Layout convention of every grid (the paper's): rows valence high -> low top to bottom, columns
arousal high -> low left to right.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from affectedit.errors import UserError
from affectedit.io import atomic_path

__all__ = ["edit_grid", "face_cell", "heatmap_figure", "examples_figure", "photo_grid", "write_animation"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return math.ceil(x1 - min(0, x0)), math.ceil(y1 - min(0, y0))


def edit_grid(face: np.ndarray, tiles: np.ndarray, levels, cell: int) -> Image.Image:
    """The grid figure: ``tiles`` (n*n x S x S x 3 uint8, row-major: row r = valence levels[r],
    column c = arousal levels[c]) as ``cell``-pixel cells with axis labels, and the aligned input
    ``face`` (S x S x 3 uint8) beside them. The layout is in ``result.info["grid"]``: {"n", "cell",
    "origin": (x, y) of the top-left cell, "input": its box}."""
    n = len(levels)
    font, small = _font(max(11, cell // 9)), _font(max(10, cell // 11))
    pad = max(6, cell // 16)
    # columns: [input] gap [valence title][row labels] [grid]
    title_h = _text_size(font, "arousal")[1] + pad
    collab_h = _text_size(small, "-1.0")[1] + pad
    rowlab_w = _text_size(small, "-1.00")[0] + pad
    vtitle_w = _text_size(font, "valence")[1] + pad
    input_w = cell + 2 * pad
    gx0, gy0 = input_w + pad + vtitle_w + rowlab_w, pad + title_h + collab_h
    canvas = Image.new("RGB", (gx0 + n * cell + pad, gy0 + n * cell + pad), "white")
    draw = ImageDraw.Draw(canvas)

    def resized(a: np.ndarray) -> Image.Image:
        img = Image.fromarray(a, "RGB")
        return img if img.size == (cell, cell) else img.resize((cell, cell), Image.BICUBIC)

    iy = gy0 + (n * cell - cell) // 2  # the input, vertically centred beside the grid
    canvas.paste(resized(face), (pad, iy))
    draw.text((pad + cell / 2, iy - pad / 2), "input", fill="black", font=small, anchor="md")
    for k, tile in enumerate(tiles):
        r, c = divmod(k, n)
        canvas.paste(resized(tile), (gx0 + c * cell, gy0 + r * cell))
    fmt = "{:.1f}" if n <= 11 else "{:.2f}"
    draw.text((gx0 + n * cell / 2, pad), "arousal (high to low)", fill="black", font=font, anchor="mt")
    for i, value in enumerate(levels):
        draw.text((gx0 + i * cell + cell / 2, gy0 - pad / 2), fmt.format(value), fill="black", font=small, anchor="md")
        draw.text((gx0 - pad / 2, gy0 + i * cell + cell / 2), fmt.format(value), fill="black", font=small, anchor="rm")
    # the valence title, written horizontally and turned to read bottom-to-top
    tw, th = _text_size(font, "valence (high to low)")
    label = Image.new("RGB", (tw + 4, th + 4), "white")
    ImageDraw.Draw(label).text((2, 2), "valence (high to low)", fill="black", font=font)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (input_w + pad, gy0 + (n * cell - label.height) // 2))
    canvas.info["grid"] = {"n": n, "cell": cell, "origin": (gx0, gy0), "input": (pad, iy, pad + cell, iy + cell)}
    return canvas


# --------------------------------------------------------------------------------------------- the photo report's grid


def face_cell(photo: Image.Image, face, cell: int, scale: float = 1.6) -> Image.Image:
    """A ``cell`` x ``cell`` cut of ``photo`` around ``face`` (a square ``scale`` times the face box,
    centred a little above the box's centre), for the photo report's grid."""
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.05 * (y1 - y0)
    side = scale * max(x1 - x0, y1 - y0)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return photo.crop(tuple(int(round(v)) for v in box)).resize((cell, cell), Image.LANCZOS)


def photo_grid(rows: list[list[Image.Image]], titles: list[str], labels: list[str], cell: int) -> Image.Image:
    """The photo report's grid: ``rows`` of ``cell``-pixel images, column ``titles`` above, row
    ``labels`` at the left."""
    head, side = max(28, cell // 10), max(120, cell // 2)
    font = _font(max(14, cell // 16))
    W = side + cell * len(titles)
    H = head + cell * len(rows)
    out = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(out)
    for j, t in enumerate(titles):
        d.text((side + j * cell + cell // 2, head // 2), t, fill="black", font=font, anchor="mm")
    for i, (row, lab) in enumerate(zip(rows, labels)):
        d.text((side // 2, head + i * cell + cell // 2), lab, fill="black", font=font, anchor="mm")
        for j, im in enumerate(row):
            out.paste(im, (side + j * cell, head + i * cell))
    return out


# --------------------------------------------------------------------------------------------- animations


def write_animation(path: Path, frames: list[Image.Image], fps: int) -> None:
    """Frames as an animated GIF (``path`` ending in .gif) or an MPEG-4 video (.mp4)."""
    if Path(path).suffix.lower() == ".gif":
        _write_gif(path, frames, fps)
    else:
        _write_mp4(path, frames, fps)


def _write_gif(path: Path, frames: list[Image.Image], fps: int) -> None:
    """Animated GIF with one palette for all frames: no colour flicker, and ~20x faster than letting
    Pillow build a palette per frame. The palette comes from the first, middle and last frames."""
    keys = [f.reduce(2) if min(f.size) >= 64 else f for f in (frames[0], frames[len(frames) // 2], frames[-1])]
    w, h = keys[0].size
    montage = Image.new("RGB", (w * len(keys), h))
    for i, f in enumerate(keys):
        montage.paste(f, (i * w, 0))
    palette = montage.quantize(256, method=Image.Quantize.MEDIANCUT)
    q = [f.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for f in frames]
    q[0].save(path, format="GIF", save_all=True, append_images=q[1:], duration=round(1000 / fps), loop=0)


def _write_mp4(path: Path, frames: list[Image.Image], fps: int) -> None:
    import cv2

    w, h = frames[0].size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise UserError("this OpenCV build cannot write MP4 video; write a .gif instead")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if Path(path).stat().st_size == 0:
        raise UserError("OpenCV wrote an empty MP4 file; write a .gif instead")


# --------------------------------------------------------------------------------------------- report figures


def _to_image(t) -> np.ndarray:
    """3 x H x W tensor in [-1, 1] -> H x W x 3 float in [0, 1]."""
    return ((t.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def _mosaic(tiles: list[np.ndarray], n: int, gap: int) -> np.ndarray:
    """n x n H x W x 3 tiles (row-major) on a white mosaic with ``gap`` pixels between them."""
    S = tiles[0].shape[0]
    cell = S + gap
    out = np.ones((n * cell - gap, n * cell - gap, 3), dtype=np.float32)
    for k, tile in enumerate(tiles):
        i, j = divmod(k, n)
        out[i * cell:i * cell + S, j * cell:j * cell + S] = tile
    return out


def _label_axes(ax, labels: np.ndarray, n: int, S: int, gap: int, digits: int) -> None:
    ticks = np.arange(n) * (S + gap) + S / 2
    ax.set_xticks(ticks, [f"{a:+.{digits}f}" for a in labels[:n, 1]], fontsize=7)
    ax.set_yticks(ticks, [f"{v:+.{digits}f}" for v in labels[::n, 0]], fontsize=7)
    ax.set_xlabel("arousal (high -> low)", fontsize=8)
    ax.set_ylabel("valence (high -> low)", fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def heatmap_figure(maps: np.ndarray, neutral_face, labels: np.ndarray, neutral: int, title: str, path: Path) -> None:
    """The paper's Fig. 2: the n x n heatmaps ``maps`` (L x S x S in [0, 1]; grey, 0 black .. 1
    white) as one mosaic, the mean edit for the neutral label (index ``neutral``; a 3 x S x S tensor)
    in its place."""
    plt = _pyplot()
    n, S = round(math.sqrt(len(labels))), maps.shape[-1]
    gap = max(1, S // 16)
    tiles = [_to_image(neutral_face) if k == neutral else np.repeat(np.clip(maps[k], 0, 1)[..., None], 3, axis=2)
             for k in range(len(labels))]
    fig, ax = plt.subplots(figsize=(1.0 * n + 1.2, 1.0 * n + 1.0))
    ax.imshow(_mosaic(tiles, n, gap), interpolation="nearest")
    _label_axes(ax, labels, n, S, gap, 2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)


def examples_figure(inputs, edits, labels: np.ndarray, title: str, path: Path) -> None:
    """The paper's Fig. 3 for several faces: one row per face, the input (``inputs`` B x 3 x S x S)
    beside the n x n mosaic of its edits (``edits`` B x L x 3 x S x S, in [-1, 1])."""
    plt = _pyplot()
    B, L = edits.shape[:2]
    n, S = round(math.sqrt(L)), edits.shape[-1]
    gap = max(1, S // 32)
    fig, axes = plt.subplots(B, 2, figsize=(1.1 * n + 2.6, (1.1 * n + 0.6) * B), squeeze=False,
                             gridspec_kw={"width_ratios": [1, n]})
    for b in range(B):
        ax_in, ax = axes[b, 0], axes[b, 1]
        ax_in.imshow(_to_image(inputs[b]))
        ax_in.set_title("input", fontsize=8)
        ax_in.axis("off")
        ax.imshow(_mosaic([_to_image(e) for e in edits[b]], n, gap))
        _label_axes(ax, labels, n, S, gap, 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    _savefig(fig, path)
