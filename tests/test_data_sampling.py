"""train.sampling=classes: the authors' fill_up_equally (every class topped up to the largest)."""
from collections import Counter

import numpy as np
import pytest

from affectedit.data.cache import FaceCache, batches
from affectedit.data.sampling import ResampledCache, class_balanced_index, resample
from affectedit.errors import UserError


def test_every_class_as_often_as_the_largest():
    classes = ["neutral"] * 7 + ["happiness"] * 3 + ["disgust"]
    index = class_balanced_index(classes, seed=0)
    counts = Counter(classes[i] for i in index)
    assert counts == {"neutral": 7, "happiness": 7, "disgust": 7}
    # every image of every class is in it at least once; the extra copies are the class's own images
    assert set(index) == set(range(len(classes)))
    assert np.array_equal(index, class_balanced_index(classes, seed=0))
    assert not np.array_equal(index, class_balanced_index(classes, seed=1))
    with pytest.raises(UserError, match="sampling=shuffle"):
        class_balanced_index(["neutral", None])


def test_resampled_cache_feeds_batches(tiny_cache):
    cache = FaceCache(tiny_cache)
    assert resample(cache, "shuffle") is cache
    view = resample(cache, "classes", seed=0)
    assert isinstance(view, ResampledCache)
    counts = Counter(view.emotions)
    assert len(set(counts.values())) == 1 and set(counts) == set(cache.emotions)
    assert len(view) == len(counts) * max(Counter(cache.emotions).values())
    i = 5
    assert np.array_equal(view.images[i], cache.images[view.index[i]])
    assert np.array_equal(view.labels[i], cache.labels[view.index[i]])
    rows = np.array([3, 0, 3])
    assert np.array_equal(view.images[rows], cache.images[view.index[rows]])
    # batches() draws its (resumable) epochs over the topped-up list
    x, y = next(batches(view, 4, seed=0, hflip=False, start_step=2))
    x2, y2 = next(batches(view, 4, seed=0, hflip=False, start_step=2))
    assert x.shape == (4, 3, 32, 32) and (x == x2).all() and (y == y2).all()
    with pytest.raises(UserError):
        resample(cache, "random")
