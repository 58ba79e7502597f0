"""Data: readers for the supported data sets, derived V/A labels, the aligned-face cache and the
training loader.

    from affectedit.data import FaceCache, batches, normalize, denormalize
    cache = FaceCache("cache/lfw-train-96")          # item -> (3xSxS float in [-1, 1], [valence, arousal])
    for images, labels in batches(cache, 49, seed=0):  # infinite, deterministic, resumable (start_step=)
        ...
"""
from __future__ import annotations

from affectedit.data.readers import FORMATS, AffectNetReader, Sample, read_dataset

__all__ = ["FORMATS", "AffectNetReader", "Sample", "read_dataset", "FaceCache", "batches", "normalize",
           "denormalize", "prepare"]

_LAZY = {"FaceCache", "batches", "normalize", "denormalize", "prepare"}


def __getattr__(name):
    if name in _LAZY:  # cache imports torch; keep `import affectedit.data` light
        from affectedit.data import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'affectedit.data' has no attribute {name!r}")
