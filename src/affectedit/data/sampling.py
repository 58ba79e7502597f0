"""Class-balanced sampling as the authors of Lindt et al. 2019 train (``train.sampling="classes"``).

The paper does not say how batches are drawn. The authors' public code (``fill_up_equally`` in
alex-lindt/facial_expression_CAAE) sorts the training images by their expression class (AffectNet's
8 categories), tops every class up to the size of the largest one by drawing extra copies of its
images at random (with replacement), and shuffles the result every epoch. ``class_balanced_index``
builds that list once from a seed; ``ResampledCache`` presents it as a face cache, so that
``data.cache.batches`` draws its epochs (permutations, resumable by step) over the topped-up list.
"""
from __future__ import annotations

import numpy as np

from affectedit.data.cache import FaceCache
from affectedit.errors import UserError

__all__ = ["class_balanced_index", "ResampledCache", "resample"]


def class_balanced_index(classes, seed: int = 0) -> np.ndarray:
    """Indices into ``classes`` (one class name or number per image) in which every class occurs
    as often as the largest: all of a class's own images once, plus random extra copies (with
    replacement) of its images. Ordered by class; a deterministic function of (classes, seed)."""
    classes = np.asarray(list(classes), dtype=object)
    if len(classes) == 0:
        raise UserError("class-balanced sampling needs at least one image")
    if any(c is None or c == "" for c in classes):
        raise UserError("class-balanced sampling (train.sampling=classes) needs an expression class for every "
                        "image; this cache lacks some: use --set train.sampling=shuffle")
    names = sorted({str(c) for c in classes})
    members = {n: np.flatnonzero(np.array([str(c) == n for c in classes])) for n in names}
    largest = max(len(m) for m in members.values())
    rng = np.random.default_rng([int(seed), 14031993])
    parts = []
    for n in names:
        m = members[n]
        parts.append(m)
        parts.append(m[rng.integers(0, len(m), largest - len(m))])
    return np.concatenate(parts).astype(np.int64)


class _Rows:
    """A read-only row view ``base[index]`` of an N x ... array (the memmap of a cache) that reads
    only the rows asked for."""

    def __init__(self, base, index: np.ndarray):
        self.base, self.index = base, index
        self.shape = (len(index),) + tuple(base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        rows = self.index[i]
        if np.ndim(rows) == 0:
            return self.base[int(rows)]
        order = np.argsort(rows, kind="stable")  # sorted reads from the memmap
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        out[order] = self.base[rows[order]]
        return out


class ResampledCache(FaceCache):
    """A face cache seen through an index list (rows may repeat): ``images``, ``labels``,
    ``sources``, ``emotions`` and ``identities`` follow ``index``. Nothing is copied to disk."""

    def __init__(self, base: FaceCache, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.path, self.meta, self.size = base.path, base.meta, base.size
        self.images = _Rows(base.images, self.index)
        self.labels = base.labels[self.index]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sources(self) -> list[str]:
        return [self.base.sources[i] for i in self.index]

    @property
    def emotions(self) -> list:
        return [self.base.emotions[i] for i in self.index]

    @property
    def identities(self) -> list:
        return [self.base.identities[i] for i in self.index]


def resample(cache: FaceCache, sampling: str, seed: int = 0) -> FaceCache:
    """The cache that training draws its epochs from: ``cache`` itself for "shuffle", the
    authors' class-balanced list (``class_balanced_index`` of the cache's expression classes) for
    "classes"."""
    if sampling == "shuffle":
        return cache
    if sampling == "classes":
        return ResampledCache(cache, class_balanced_index(cache.emotions, seed))
    raise UserError(f"unknown train.sampling {sampling!r}: use shuffle or classes")
