"""The aligned-face cache: `prepare` writes it once, `FaceCache` / `batches` read it for training.

A cache is one folder:

| file        | content                                                                          |
|-------------|----------------------------------------------------------------------------------|
| images.npy  | N x S x S x 3 uint8 aligned RGB faces (dlib face-chip geometry, padding 0.25), memory-mapped on read |
| labels.npy  | N x 2 float32 (valence, arousal) in [-1, 1] (NaN for CelebA, which has no V/A labels) |
| meta.json   | size, count, sources (relative image paths, in order), emotions, identities, splits, the preparing config, skipped files with reasons |

``meta.json`` is written last: a folder without it is not a (finished) cache. While ``prepare`` runs,
its work lives in ``<cache>/.partial/`` (a preallocated memmap of all candidates plus
``state.json``, committed every ``chunk`` images), so an interrupted run resumes where it stopped;
``<cache>/.lock`` keeps two runs from writing the same folder.

Alignment (:mod:`affectedit.data.align`, one image per call, in worker processes): faces are
detected and aligned by :mod:`affectedit.faces` unless the data set gives landmarks: AffectNet's
68 iBUG points provide dlib's 5 points exactly (indices 45, 42, 36, 39, 33); CelebA's 5 points (eye
centres, nose tip, mouth corners) are aligned by the two eye centres onto the template's eye
centres (on LFW the detector's alignment puts the eye centres within 0.001 of those, on average). An AffectNet box without landmarks picks the detected face overlapping it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from affectedit.data.align import align_sample, init_worker
from affectedit.errors import UserError
from affectedit.images import denormalize, normalize

log = logging.getLogger(__name__)

__all__ = ["prepare", "FaceCache", "batches", "normalize", "denormalize", "CACHE_VERSION"]

CACHE_VERSION = 1
PARTIAL = ".partial"


def _reason_kind(reason: str) -> str:
    return reason.split(" (", 1)[0]


# --------------------------------------------------------------------------------------------- prepare

def _write_json(path: Path, obj) -> None:
    from affectedit.io import write_text

    write_text(path, json.dumps(obj, indent=1))


def _read_json(path: Path, what: str, fix: str) -> dict:
    """A JSON object from ``path``; a damaged file (cut short, edited) is one UserError line."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} ({what}) is damaged ({type(e).__name__}); {fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} ({what}) is damaged (not a JSON object); {fix}")
    return obj


def _open_memmap_w(path: Path, shape: tuple) -> np.memmap:
    """A new uint8 .npy memmap whose space is reserved first: on a full disk, writing into an
    unreserved memmap kills the process (SIGBUS); a reservation fails with one clear line."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            del arr
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OSError(e.errno, f"no room for {path.name} ({int(np.prod(shape)) / 1e6:.0f} MB)") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            arr = np.load(path, mmap_mode="r+")
    return arr


def _file_id(path) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return hashlib.sha1(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def prepare(
    data,
    fmt: str,
    output,
    labels=None,
    split: str = "all",
    size: int = 96,
    workers: int = 1,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
    chunk: int = 256,
) -> dict:
    """Detect/align every face of a data set and write the cache folder ``output``.

    Resumes an unfinished run with the same configuration; a finished cache with the same
    configuration is left as is. Unreadable, missing, non-image and face-less files are skipped,
    logged and listed in meta.json. Returns a summary dict (count, skipped, skip_reasons, ...)."""
    from affectedit.data.readers import read_dataset

    data, output = Path(data), Path(output)
    reader = read_dataset(fmt, data, labels, split)
    samples = list(reader)
    label_skips = dict(getattr(reader, "skipped", {}) or {})
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise UserError(f"no images found in {data} for format {fmt!r} and split {split!r}")
    names = [_relname(s.path, data) for s in samples]
    config = {
        "version": CACHE_VERSION,
        "data": str(data.resolve()),
        "format": fmt,
        "labels": str(Path(labels).resolve()) if labels else None,
        "labels_sha1": _file_id(labels),
        "split": split,
        "size": int(size),
        "limit": limit,
        "candidates": len(samples),
        "sources_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16],
        "alignment": "affectedit.faces dlib face chip, padding 0.25",
    }

    output.mkdir(parents=True, exist_ok=True)
    with _lock(output):
        return _prepare_locked(samples, names, data, output, config, label_skips, split, size, workers, force,
                               progress, chunk, fmt)


@contextlib.contextmanager
def _lock(output: Path):
    """One prepare run per cache folder at a time (advisory lock on ``<cache>/.lock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    with open(output / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another `affectedit prepare` is writing {output}; wait for it or choose another -o") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_locked(samples, names, data, output, config, label_skips, split, size, workers, force, progress,
                    chunk, fmt) -> dict:
    from tqdm import tqdm

    meta_path, partial = output / "meta.json", output / PARTIAL
    if force:
        for f in ("meta.json", "images.npy", "labels.npy"):
            with contextlib.suppress(FileNotFoundError):
                (output / f).unlink()
        shutil.rmtree(partial, ignore_errors=True)
    if meta_path.is_file():
        meta = _read_json(meta_path, "the cache's index", "prepare it again with --force")
        if meta.get("config") == config:
            log.info("%s is already a finished cache of this data (%d faces); nothing to do", output, meta["count"])
            return _summary(meta, label_skips)
        raise UserError(f"{output} holds a cache made with other settings; pass --force to replace it or choose another -o")

    n = len(samples)
    state_path, work_path = partial / "state.json", partial / "images.npy"
    state = None
    if state_path.is_file() and work_path.is_file():
        state = _read_json(state_path, "an unfinished run's state", "pass --force to start over")
        if state.get("config") != config:
            raise UserError(f"{output} holds an unfinished run with other settings; pass --force to discard it or choose another -o")
        try:
            work = np.load(work_path, mmap_mode="r+")
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{work_path} (an unfinished run's faces) is damaged ({type(e).__name__}); pass --force to start over") from None
        if work.shape != (n, size, size, 3) or not isinstance(state.get("done"), int) or not isinstance(state.get("skipped"), dict):
            raise UserError(f"{output}/{PARTIAL} does not match its state (damaged); pass --force to start over")
        log.info("resuming %s at %d of %d", output, state["done"], n)
    else:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            work = _open_memmap_w(work_path, (n, size, size, 3))
        except OSError as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"disk full: {e.strerror or e}; free some space in {output} and retry") from None
        state = {"config": config, "done": 0, "skipped": {}}
        _write_json(state_path, state)

    skipped: dict = state["skipped"]  # str(index) -> reason
    done = int(state["done"])
    prefer_center = fmt in ("lfw", "london")
    tasks = ((str(s.path), s.box, s.landmarks, size, prefer_center) for s in samples[done:])

    def commit(k):
        work.flush()
        state["done"] = k
        _write_json(state_path, state)

    bar = tqdm(total=n, initial=done, desc=f"prepare {output.name}", unit="img", disable=not progress)
    pool = None
    try:
        if workers > 1 and n - done > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, initializer=init_worker)
            # windows keep the queue of pickled tasks short (Pool.imap consumes its input eagerly)
            results = (r for window in _windows(tasks, 2048) for r in pool.imap(align_sample, window, chunksize=8))
        else:
            results = map(align_sample, tasks)
        i = done
        for img, reason in results:
            if img is None:
                skipped[str(i)] = reason
                log.warning("skipped %s: %s", names[i], reason)
            else:
                work[i] = img
            i += 1
            bar.update(1)
            if (i - done) % chunk == 0:
                commit(i)
        commit(i)
    except BaseException:
        # keep what finished (state never claims more than what is flushed)
        with contextlib.suppress(Exception):
            commit(locals().get("i", done))
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    # Compact the kept faces into the final files; meta.json last.
    from affectedit.io import atomic_path

    keep = np.array([i for i in range(n) if str(i) not in skipped], dtype=np.int64)
    if len(keep) == 0:
        raise UserError(f"none of the {n} images of {data} gave a face; see the log for reasons")
    lab = np.array([[samples[i].valence, samples[i].arousal] for i in keep], dtype=np.float64).reshape(-1, 2)
    bad = np.argwhere(np.isinf(lab) | (np.isfinite(lab) & (np.abs(lab) > 1.0)))
    if len(bad):
        i, j = (int(k) for k in bad[0])
        raise UserError(f"the labels give {names[int(keep[i])]} {('valence', 'arousal')[j]} {lab[i, j]:g}, outside [-1, 1] "
                        f"({len({int(r) for r, _ in bad})} faces); fix the labels and run prepare again with --force")
    lab = lab.astype(np.float32)
    shape = (len(keep), size, size, 3)
    with atomic_path(output / "images.npy", check=lambda tmp: _check_npy(tmp, shape)) as tmp:
        final = _open_memmap_w(tmp, shape)
        for a in range(0, len(keep), 1024):
            final[a : a + 1024] = work[keep[a : a + 1024]]
        final.flush()
        del final
    with atomic_path(output / "labels.npy", check=lambda tmp: _check_npy(tmp, lab.shape)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, lab)
    skip_list = [{"source": names[int(k)], "reason": r} for k, r in sorted(skipped.items(), key=lambda kv: int(kv[0]))]
    meta = {
        "version": CACHE_VERSION,
        "size": int(size),
        "count": int(len(keep)),
        "sources": [names[i] for i in keep],
        "emotions": [samples[i].emotion for i in keep],
        "identities": [samples[i].identity for i in keep],
        "splits": [samples[i].split for i in keep],
        "split": split,
        "config": config,
        "skipped": skip_list,
        "skip_reasons": dict(Counter(_reason_kind(s["reason"]) for s in skip_list)),
        "label_skips": label_skips,
    }
    _write_json(meta_path, meta)
    shutil.rmtree(partial, ignore_errors=True)
    s = _summary(meta, label_skips)
    log.info("prepared %s: %d faces, %d skipped%s", output, s["count"], s["skipped"],
             "".join(f"; {k}: {v}" for k, v in s["skip_reasons"].items()))
    return s


def _check_npy(path: Path, shape: tuple) -> None:
    a = np.load(path, mmap_mode="r")
    if a.shape != tuple(shape):
        raise ValueError(f"shape {a.shape}, not {tuple(shape)}")


def _windows(it, n):
    window = []
    for x in it:
        window.append(x)
        if len(window) == n:
            yield window
            window = []
    if window:
        yield window


def _relname(path: Path, root: Path) -> str:
    for base in (root / "images", root):
        with contextlib.suppress(ValueError):
            return path.relative_to(base).as_posix()
    return str(path)


def _summary(meta: dict, label_skips: dict) -> dict:
    return {
        "count": meta["count"],
        "skipped": len(meta["skipped"]),
        "skip_reasons": meta.get("skip_reasons", {}),
        "label_skips": label_skips or meta.get("label_skips", {}),
        "size": meta["size"],
    }


# --------------------------------------------------------------------------------------------- loading

class FaceCache(torch.utils.data.Dataset):
    """A finished cache folder. ``cache[i]`` -> (image float32 3 x S x S in [-1, 1], label float32
    [valence, arousal]). ``images`` is the read-only uint8 memmap N x S x S x 3, ``labels`` N x 2."""

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            hint = " (an unfinished prepare run is there; rerun the same `affectedit prepare` command to finish it)" \
                if (self.path / PARTIAL).is_dir() else " (make one with `affectedit prepare`)"
            raise UserError(f"{self.path} is not a finished face cache: meta.json missing{hint}")
        again = "prepare it again with `affectedit prepare ... --force`"
        self.meta = _read_json(meta_path, "the cache's index", again)
        count, size = self.meta.get("count"), self.meta.get("size")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0 or isinstance(size, bool) \
                or not isinstance(size, int) or not 8 <= size <= 4096:
            raise UserError(f"{meta_path} is damaged (count {count!r}, size {size!r}); {again}")
        for key in ("sources", "emotions", "identities"):
            if not isinstance(self.meta.get(key), list) or len(self.meta[key]) != count:
                raise UserError(f"{meta_path} is damaged ({key} missing or not {count} long); {again}")
        self.images = self._npy("images.npy", (count, size, size, 3), np.uint8, again, mmap=True)
        self.labels = self._npy("labels.npy", (count, 2), np.floating, again).astype(np.float32, copy=False)
        bad = np.isfinite(self.labels) & (np.abs(self.labels) > 1.0) | np.isinf(self.labels)
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise UserError(f"{self.path}/labels.npy holds {('valence', 'arousal')[j]} {float(self.labels[i, j]):g} for face {i} "
                            f"({int(bad.any(1).sum())} faces outside [-1, 1]); fix the labels CSV and {again}")
        self.size = size

    def _npy(self, name: str, shape: tuple, dtype, again: str, mmap: bool = False) -> np.ndarray:
        """An .npy file of the cache, checked to hold ``shape`` of ``dtype`` (a truncated or foreign
        file is one UserError line, not numpy's "mmap length is greater than file size")."""
        path = self.path / name
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"{path} is missing; {again}") from None
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path} is damaged or cut short ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__}); {again}") from None
        if a.shape != tuple(shape) or not np.issubdtype(a.dtype, dtype):
            raise UserError(f"{path} holds {a.dtype} {a.shape}, not {tuple(shape)} as meta.json says (damaged or mixed up); {again}")
        return a

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return normalize(self.images[i]), torch.from_numpy(self.labels[i].copy())

    @property
    def sources(self) -> list[str]:
        return self.meta["sources"]

    @property
    def emotions(self) -> list:
        return self.meta["emotions"]

    @property
    def identities(self) -> list:
        return self.meta["identities"]


def _epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n) if weights is None else rng.choice(n, size=n, replace=True, p=weights)


def balance_weights(labels: np.ndarray, power: float, bins: int = 8) -> np.ndarray | None:
    """Sampling probabilities that flatten the label distribution: each face is drawn with
    probability proportional to (faces in its cell of a ``bins`` x ``bins`` grid over the
    valence/arousal square [-1, 1]^2) ** -power. ``power=0`` -> None (plain shuffling), 1 -> every
    occupied cell equally often, 0.5 -> half-way (in log terms). Rare expressions (sadness,
    anger, surprise in LFW; contempt, disgust in AffectNet) are seen more often, with replacement."""
    if power <= 0:
        return None
    labels = np.asarray(labels, dtype=np.float64)
    cell = np.clip(((labels + 1.0) / 2.0 * bins).astype(np.int64), 0, bins - 1)
    key = cell[:, 0] * bins + cell[:, 1]
    counts = np.bincount(key, minlength=bins * bins).astype(np.float64)
    w = counts[key] ** -float(power)
    return w / w.sum()


def batches(cache, batch_size: int, seed: int = 0, hflip: bool = True, start_step: int = 0, balance: float = 0.0):
    """Infinite iterator of (images float32 N x 3 x S x S in [-1, 1], labels float32 N x 2).

    Epoch e visits a permutation seeded by (seed, e) (a last incomplete batch is dropped). Batch k
    is a deterministic function of (seed, k): ``start_step=k`` resumes at batch k without reading
    the skipped images. Data-parallel training reads the same global batch on every process and
    keeps its slice (see train.py). Horizontal flips are per sample, probability 0.5, seeded by
    (seed, step). ``balance > 0`` replaces the permutation by a weighted draw with replacement
    (see :func:`balance_weights`)."""
    if not isinstance(cache, FaceCache):
        cache = FaceCache(cache)
    per_epoch = len(cache) // batch_size if batch_size >= 1 else 0
    if per_epoch == 0:
        raise UserError(f"batch size {batch_size} is larger than the {len(cache)} images in {cache.path}; "
                        "use a smaller batch or a bigger cache")
    images, labels = cache.images, cache.labels
    weights = balance_weights(labels, balance) if balance > 0 else None
    step = int(start_step)
    epoch, order = None, None
    while True:
        e, b = divmod(step, per_epoch)
        if e != epoch:
            epoch, order = e, _epoch_order(len(cache), seed, e, weights)
        idx = order[b * batch_size : (b + 1) * batch_size]
        srt = np.argsort(idx, kind="stable")
        block = np.empty((batch_size,) + images.shape[1:], dtype=np.uint8)
        block[srt] = images[idx[srt]]  # sorted reads from the memmap, back in permutation order
        # uint8 NHWC -> NCHW copy first, flip in uint8, then convert. Done in numpy (single
        # thread): torch's intra-op threads only thrash on these small arrays when the trainer
        # keeps the cores busy. Same float32 arithmetic as normalize(), bit for bit.
        x = np.ascontiguousarray(block.transpose(0, 3, 1, 2))
        if hflip:
            flip = np.random.default_rng([seed, step, 0, 7]).random(batch_size) < 0.5  # (0: the rank, once)
            sel = np.flatnonzero(flip)
            x[sel] = x[sel, :, :, ::-1]
        x = x.astype(np.float32)
        x /= np.float32(127.5)
        x -= np.float32(1.0)
        x = torch.from_numpy(x)
        y = torch.from_numpy(labels[idx])
        yield x, y
        step += 1
