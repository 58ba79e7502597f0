"""affectedit.regressor (Table II networks) and `affectedit regressor ...`, on tiny widths and real faces."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import metrics
from affectedit.errors import UserError
from affectedit.regressor import (
    Regressor,
    evaluate_regressor,
    load_regressor,
    make_optimizer,
    predict,
    save_regressor,
    train_step,
)

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
LFW = SHARED_DATA / "lfw-expressions"
SIZE = 32
TINY_WIDTH = 1 / 16  # conv 4-8-16-16-32-32, FC 256-164-164


def _lfw_faces(count: int = 16, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real LFW faces (half happiness, half neutral) as N x S x S x 3 uint8, with labels
    N x 2 [valence, arousal] from a simple rule: happiness -> (0.8, 0.4), neutral -> (0, -0.2)."""
    if not (LFW / "labels.csv").is_file():
        pytest.skip(f"real face data not found at {LFW}")
    wanted = {"happiness": count // 2, "neutral": count - count // 2}
    rule = {"happiness": (0.8, 0.4), "neutral": (0.0, -0.2)}
    images, labels = [], []
    with open(LFW / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if wanted.get(row["emotion"], 0) > 0:
                wanted[row["emotion"]] -= 1
                photo = Image.open(LFW / "images" / row["image"]).convert("RGB")
                w, h = photo.size  # 250 x 250, the face roughly in the central 128 x 128
                crop = photo.crop((w // 2 - 64, h // 2 - 64, w // 2 + 64, h // 2 + 64))
                images.append(np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.uint8))
                labels.append(rule[row["emotion"]])
    return np.stack(images), np.asarray(labels, dtype=np.float32)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _write_cache(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A cache folder in the FaceCache layout: images.npy, labels.npy, meta.json."""
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    n = len(images)
    meta = {"size": images.shape[1], "count": n, "sources": [f"face{i}.jpg" for i in range(n)],
            "emotions": [None] * n, "identities": [None] * n, "splits": [None] * n}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


class _ListDataset(torch.utils.data.Dataset):
    """Stands in for FaceCache: item -> (image 3 x S x S in [-1, 1], label [valence, arousal])."""

    def __init__(self, images, labels):
        self.images, self.labels = _to_tensor(images), torch.from_numpy(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.fixture(scope="module")
def faces():
    return _lfw_faces()


def test_paper_architecture_at_width_one():
    with torch.device("meta"):  # no memory: 93M parameters at width 1.0
        net = Regressor("valence", width=1.0, image_size=96)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 4
    assert [l.out_features for l in linears] == [4096, 2622, 2622, 1]
    assert linears[0].in_features == 512 * 6 * 6  # 96 / 2^4 = 6
    assert [d.p for d in net.modules() if isinstance(d, torch.nn.Dropout)] == [0.5, 0.5, 0.5]
    assert net.config == {"width": 1.0, "image_size": 96, "dimension": "valence"}


def test_shapes_and_output_range(faces):
    torch.manual_seed(0)
    net = Regressor("arousal", width=TINY_WIDTH, image_size=SIZE).eval()
    images = _to_tensor(faces[0])
    out = net(images)
    assert out.shape == (len(images),)
    # the output range is the tanh's; push it to saturation with large inputs
    extreme = net(images * 1e4)
    assert torch.all(extreme.abs() <= 1.0) and torch.all(out.abs() <= 1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dimension"):
        Regressor("dominance")
    with pytest.raises(ValueError, match="multiple of 16"):
        Regressor("valence", image_size=40)
    with pytest.raises(ValueError, match="width"):
        Regressor("valence", width=0)


def test_one_sgd_step_reduces_mae(faces):
    torch.manual_seed(0)
    net = Regressor("valence", width=TINY_WIDTH, image_size=SIZE)
    optimizer = make_optimizer(net)
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["momentum"] == 0.9
    images, targets = _to_tensor(faces[0]), torch.from_numpy(faces[1][:, 0])
    # Same RNG state before both forwards, so both see the same dropout masks.
    torch.manual_seed(1)
    before = train_step(net, optimizer, images, targets)
    torch.manual_seed(1)
    with torch.no_grad():
        after = float(torch.nn.functional.l1_loss(net(images), targets))
    assert after < before


def test_checkpoint_round_trip(tmp_path, faces):
    torch.manual_seed(0)
    net = Regressor("arousal", width=TINY_WIDTH, image_size=SIZE)
    path = tmp_path / "arousal.pt"
    save_regressor(net, path, step=7, optimizer=make_optimizer(net), val_metrics={"rmse": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"width": TINY_WIDTH, "image_size": SIZE, "dimension": "arousal"}
    assert raw["step"] == 7 and raw["format"] == 1
    loaded = load_regressor(path, device="cpu")
    assert loaded.dimension == "arousal" and loaded.step == 7 and loaded.val_metrics == {"rmse": 0.5}
    images = _to_tensor(faces[0])
    np.testing.assert_allclose(predict(loaded, images), predict(net, images), atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp*"))  # the temporary file was renamed away


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_regressor(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        load_regressor(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a regressor checkpoint"):
        load_regressor(foreign)


def test_predict_resizes_and_accepts_numpy(faces):
    torch.manual_seed(0)
    net = Regressor("valence", width=TINY_WIDTH, image_size=SIZE)
    big = torch.nn.functional.interpolate(_to_tensor(faces[0][:4]), size=(64, 64), mode="bilinear")
    out = predict(net, big.numpy())
    assert out.shape == (4,) and out.dtype == np.float32
    assert np.all(np.abs(out) <= 1)
    assert net.training  # predict restores the mode it found
    with pytest.raises(ValueError, match="N x 3"):
        predict(net, np.zeros((2, 32, 32, 3), np.float32))


def test_evaluate_regressor_matches_metrics(faces):
    torch.manual_seed(0)
    net = Regressor("valence", width=TINY_WIDTH, image_size=SIZE)
    data = _ListDataset(*faces)
    scores = evaluate_regressor(net, data, batch_size=5)
    assert set(scores) == {"rmse", "sagr", "ccc"}
    predictions, labels = predict(net, _to_tensor(faces[0])), faces[1][:, 0]
    assert scores["rmse"] == pytest.approx(metrics.rmse(predictions, labels), rel=1e-5)
    assert scores["sagr"] == pytest.approx(metrics.sagr(predictions, labels))
    assert scores["ccc"] == pytest.approx(metrics.ccc(predictions, labels), rel=1e-4, abs=1e-6)


def test_train_regressor_and_cli(tmp_path, faces, capsys):
    pytest.importorskip("affectedit.data.cache")
    from affectedit.cli import main
    from affectedit.regressor import train_regressor

    train = _write_cache(tmp_path / "train", *faces)
    val = _write_cache(tmp_path / "val", faces[0][:8], faces[1][:8])
    out = tmp_path / "valence.pt"
    result = train_regressor(train, val, "valence", steps=2, batch_size=4, width=TINY_WIDTH, out_path=out,
                             device="cpu", progress=False)
    assert result["step"] == 2 and set(result["val_metrics"]) == {"rmse", "sagr", "ccc"}
    assert load_regressor(out).step == 2
    # resume continues from the stored step
    assert train_regressor(train, val, "valence", steps=3, batch_size=4, width=TINY_WIDTH, out_path=out,
                           resume=True, device="cpu", progress=False)["step"] == 3

    stem = tmp_path / "va"
    code = main(["regressor", "train", "--train", str(train), "--val", str(val), "--dimension", "both",
                 "--steps", "1", "--batch-size", "4", "--width", str(TINY_WIDTH), "-o", str(stem)])
    assert code == 0
    code = main(["regressor", "evaluate", "--checkpoint", f"{stem}-valence.pt", "--checkpoint",
                 f"{stem}-arousal.pt", "--data", str(val)])
    assert code == 0
    text = capsys.readouterr().out
    assert "valence" in text and "arousal" in text and "0.484" in text and "0.405" in text


def test_cli_missing_checkpoint(tmp_path, capsys):
    from affectedit.cli import main

    code = main(["regressor", "evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)])
    assert code == 2
    assert "not found" in capsys.readouterr().err
