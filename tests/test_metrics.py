"""affectedit.metrics: hand-worked values, agreement with direct numpy formulas, and errors."""
import math

import numpy as np
import pytest
import torch

from affectedit import metrics

# Hand example used below: x = [1, 2, 3], y = [1, 3, 2].
X = [1.0, 2.0, 3.0]
Y = [1.0, 3.0, 2.0]


def test_rmse_by_hand():
    # x - y = [0, -1, 1]; squares [0, 1, 1]; mean 2/3; sqrt(2/3) = 0.816497
    assert metrics.rmse(X, Y) == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    # [0.5, -0.5] vs [0, 0]: squares 0.25, 0.25; mean 0.25; sqrt = 0.5
    assert metrics.rmse([0.5, -0.5], [0.0, 0.0]) == pytest.approx(0.5)


def test_ccc_by_hand():
    # means m_x = m_y = 2. Deviations x: [-1, 0, 1], y: [-1, 1, 0].
    # population variances: (1 + 0 + 1) / 3 = 2/3 each; covariance (1 + 0 + 0) / 3 = 1/3.
    # CCC = 2 * (1/3) / (2/3 + 2/3 + 0) = (2/3) / (4/3) = 0.5
    assert metrics.ccc(X, Y) == pytest.approx(0.5, abs=1e-12)


def test_ccc_penalises_shift_with_population_variance():
    # y = x + 1 for x = [1, 2, 3]: rho = 1, var_x = var_y = 2/3 (divide by n), (m_x - m_y)^2 = 1.
    # CCC = 2 * (2/3) / (2/3 + 2/3 + 1) = (4/3) / (7/3) = 4/7 = 0.571429.
    # (Sample variances, divide by n - 1 = 2, would give 2 * 1 / (1 + 1 + 1) = 2/3 instead.)
    assert metrics.ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7, abs=1e-12)


def test_ccc_special_cases():
    assert metrics.ccc([0.1, 0.5, -0.3], [0.1, 0.5, -0.3]) == pytest.approx(1.0)
    # y = -x with mean 0: perfect disagreement (with a non-zero mean the shift lowers |CCC|)
    assert metrics.ccc([0.1, 0.5, -0.6], [-0.1, -0.5, 0.6]) == pytest.approx(-1.0)
    # one constant vector: covariance 0 -> CCC 0 (rho itself would be undefined)
    assert metrics.ccc([0.2, 0.2, 0.2], [0.1, 0.5, -0.3]) == pytest.approx(0.0, abs=1e-12)
    # the same constant twice: 0 / 0
    assert math.isnan(metrics.ccc([0.2, 0.2], [0.2, 0.2]))


def test_sagr_by_hand_and_sign_of_zero():
    # signs x: [+, -, +, -], y: [+, +, +, -] -> agree at 0, 2, 3: 3/4
    assert metrics.sagr([0.3, -0.2, 0.9, -1.0], [0.7, 0.1, 0.01, -0.5]) == pytest.approx(0.75)
    # np.sign semantics: sign(0) = 0 agrees only with 0.
    # pairs (0, 0) agree, (0, 0.1) no, (0, -0.1) no, (-0.0, 0) agree -> 2/4
    assert metrics.sagr([0.0, 0.0, 0.0, -0.0], [0.0, 0.1, -0.1, 0.0]) == pytest.approx(0.5)


def test_agreement_with_numpy_on_random_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 500)
    y = np.clip(0.6 * x + rng.normal(0, 0.4, 500) + 0.1, -1, 1)
    assert metrics.rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), rel=1e-12)
    rho = np.corrcoef(x, y)[0, 1]
    expected_ccc = 2 * rho * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert metrics.ccc(x, y) == pytest.approx(expected_ccc, rel=1e-10)
    assert metrics.sagr(x, y) == pytest.approx(np.mean(np.sign(x) == np.sign(y)))
    # symmetric in its arguments
    assert metrics.ccc(y, x) == pytest.approx(metrics.ccc(x, y))


def test_input_types_and_float_result():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20)
    for fn in (metrics.rmse, metrics.ccc, metrics.sagr):
        expected = fn(x, y)
        for a, b in ((list(x), list(y)), (torch.tensor(x, dtype=torch.float32), torch.tensor(y)),
                     (x.astype(np.float32), y)):
            result = fn(a, b)
            assert type(result) is float
            assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("fn", [metrics.rmse, metrics.ccc, metrics.sagr])
def test_metric_errors(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        fn(0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        fn([0.1, float("nan")], [0.1, 0.2])


def test_identity_distance():
    a = np.zeros((2, 128))
    b = np.zeros((2, 128))
    b[0, :4] = 0.5          # sqrt(4 * 0.25) = 1.0
    b[1, 0], b[1, 1] = 0.3, 0.4  # sqrt(0.09 + 0.16) = 0.5
    d = metrics.identity_distance(a, b)
    assert isinstance(d, np.ndarray) and d.shape == (2,)
    np.testing.assert_allclose(d, [1.0, 0.5])
    assert list(d < metrics.SAME_PERSON_THRESHOLD) == [False, True]
    assert metrics.SAME_PERSON_THRESHOLD == 0.6
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 128)), rng.normal(size=(5, 128))
    np.testing.assert_allclose(metrics.identity_distance(a, b), np.sqrt(((a - b) ** 2).sum(1)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.identity_distance(np.zeros((2, 128)), np.zeros((3, 128)))


def test_background_change_by_hand():
    original = np.zeros((2, 2, 3), np.uint8)
    edited = original.copy()
    edited[0, 0] = [255, 255, 255]  # background pixel: change 1.0 on all 3 channels
    edited[0, 1] = [51, 0, 0]       # background pixel: 0.2 on one channel
    edited[1, 1] = [255, 0, 0]      # face pixel: ignored
    mask = np.array([[0.0, 0.0], [0.0, 0.5]])  # 3 background pixels, one (soft) face pixel
    # background values: (1 + 1 + 1) + (0.2 + 0 + 0) + (0 + 0 + 0) over 9 = 3.2 / 9 = 0.355556
    assert metrics.background_change(original, edited, mask) == pytest.approx(3.2 / 9)
    # a batch of the same pair twice has the same mean; decreases are counted like increases
    batch_o, batch_e = np.stack([original, edited]), np.stack([edited, original])
    assert metrics.background_change(batch_o, batch_e, mask) == pytest.approx(3.2 / 9)
    assert metrics.background_change(original, original, mask) == 0.0


def test_background_change_errors():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="no background"):
        metrics.background_change(image, image, np.ones((4, 4)))
    with pytest.raises(ValueError, match="mask"):
        metrics.background_change(image, image, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.background_change(image, np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="uint8"):
        metrics.background_change(image.astype(np.float32), image.astype(np.float32), np.zeros((4, 4)))
