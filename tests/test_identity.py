"""Identity-loss backbones: the dlib port against dlib itself, shapes, gradients, VGG-Face loading."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch

from affectedit import dlib_dnn, identity
from affectedit.errors import UserError

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
N_FACES = 20


def dlib_face_chip(image: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray | None:
    """dlib's own aligned chip of the largest face in ``image`` (H x W x 3 uint8 RGB), cut exactly as
    ``compute_face_descriptor`` cuts it (HOG detector, 5 landmarks, get_face_chip), or None."""
    import dlib

    predictor = dlib.shape_predictor(str(identity.dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    image = np.ascontiguousarray(image, dtype=np.uint8)
    boxes = dlib.get_frontal_face_detector()(image, 1)
    if len(boxes) == 0:
        return None
    box = max(boxes, key=lambda b: b.width() * b.height())
    return dlib.get_face_chip(image, predictor(image, box), size, padding)


def chip_to_tensor(chips) -> torch.Tensor:
    """uint8 RGB chips (a sequence of H x W x 3) -> N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(np.stack(list(chips))).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _face_files() -> list[pathlib.Path]:
    # A fixed, mixed sample: LFW news photos (250 x 250) and London Set portraits (675 x 675).
    lfw = sorted((DATA / "lfw-expressions" / "images").glob("*/*.jpg"))[::400][:16]
    london = sorted((DATA / "london-portraits" / "images").glob("*/*.jpg"))[::20][:8]
    return lfw + london


@pytest.fixture(scope="module")
def dlib_net() -> identity.DlibFaceNet:
    return identity.build_identity_net("dlib")


@pytest.fixture(scope="module")
def chips() -> list[np.ndarray]:
    if not DATA.is_dir():
        pytest.skip(f"real faces not found at {DATA}")
    from PIL import Image

    out = []
    for path in _face_files():
        chip = dlib_face_chip(np.asarray(Image.open(path).convert("RGB")))
        if chip is not None:
            out.append(chip)
        if len(out) == N_FACES:
            break
    assert len(out) == N_FACES, f"dlib found faces in only {len(out)} of the sample images"
    return out


@pytest.mark.slow
def test_dlib_port_matches_dlib_descriptors(dlib_net, chips):
    import dlib

    model = dlib.face_recognition_model_v1(str(identity.dlib_model_path(identity.DLIB_RECOGNITION_MODEL)))
    expected = np.stack([np.asarray(model.compute_face_descriptor(chip)) for chip in chips])
    with torch.no_grad():
        got = dlib_net.descriptor(chip_to_tensor(chips)).numpy()
    assert got.shape == (N_FACES, 128)
    assert np.abs(got - expected).max() < 1e-3
    # Sanity: descriptors of different people differ a lot more than the port's error.
    assert np.linalg.norm(expected[0] - expected[1]) > 0.1


def test_dlib_frozen_features_and_gradient(dlib_net):
    assert not dlib_net.training
    assert not any(p.requires_grad for p in dlib_net.parameters())
    assert dlib_net.layers == ("res32", "res64", "res128", "res256", "descriptor")
    x = (torch.rand(2, 3, 96, 96) * 2 - 1).requires_grad_(True)
    feats = dlib_net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 35, 35), (2, 64, 17, 17), (2, 128, 8, 8), (2, 256, 4, 4), (2, 128)]
    sum(f.abs().mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # features() ends with the descriptor.
    torch.testing.assert_close(feats[-1].detach(), dlib_net.descriptor(x.detach()))


def _dlib_int(v: int) -> bytes:
    body = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _dlib_float(x: float) -> bytes:
    # dlib's portable float_details for a float: 24-bit mantissa, trailing zero bytes shifted off.
    m, e = math.frexp(x)
    mantissa, exponent = int(m * (1 << 24)), e - 24
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return _dlib_int(mantissa) + _dlib_int(exponent)


def test_dlib_version1_tensor_decoding():
    values = np.array([0.0, 1.5, -0.1, 3e-8, 1234.5678, -2.0], dtype=np.float32)
    data = _dlib_int(1) + b"".join(_dlib_int(d) for d in (1, 2, 3, 1))
    data += b"".join(_dlib_float(float(v)) for v in values) + _dlib_int(7)
    reader = dlib_dnn._DlibReader(data, pathlib.Path("synthetic.dat"))
    got = reader.tensor()
    assert got.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(got.reshape(-1), values)
    assert reader.int() == 7  # the reader stopped exactly at the end of the tensor


def _random_vgg_state(naming: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    seq = {name: idx for idx, name in identity._VGG_SEQUENTIAL_INDEX.items()}
    state = {}
    for name, cin, cout in identity._VGG_CONVS:
        key = name if naming == "conv1_1" else f"features.{seq[name]}"
        state[f"{key}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (9 * cin)) ** 0.5
        state[f"{key}.bias"] = torch.zeros(cout)
    if naming == "conv1_1":  # the real file carries these too; the loader must ignore them
        state["fc8.weight"] = torch.zeros(2622, 8)
        state["fc8.bias"] = torch.zeros(2622)
    return state


def test_vggface_loads_file_features_and_gradient(tmp_path):
    state = _random_vgg_state("conv1_1")
    path = tmp_path / "vgg_face_dag.pth"
    torch.save(state, path)
    net = identity.build_identity_net("vggface", weights=str(path))
    assert isinstance(net, identity.VGGFace) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(net.convs["conv3_2"].weight, state["conv3_2.weight"])
    assert net.layers == ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 224, 224), (1, 128, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28), (1, 512, 14, 14)
    ]  # fmt: skip
    assert all((f >= 0).all() for f in feats)  # ReLU outputs
    feats[-1].mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_vggface_accepts_sequential_naming(tmp_path):
    state = _random_vgg_state("features")
    path = tmp_path / "vgg_features.pth"
    torch.save({"state_dict": state}, path)
    net = identity.VGGFace.from_file(path)
    torch.testing.assert_close(net.convs["conv5_2"].weight, state["features.26.weight"])
    torch.testing.assert_close(net.convs["conv2_1"].bias, state["features.5.bias"])


def test_vggface_errors(tmp_path):
    with pytest.raises(UserError, match="nope.pth does not exist.*vgg_face_dag.pth.*identity_backbone=dlib"):
        identity.VGGFace.from_file(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="no loss.identity_weights given.*vgg_face_dag.pth") as err:
        identity.build_identity_net("vggface")  # no weights given
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read VGG-Face weights"):
        identity.VGGFace.from_file(garbage)
    partial = tmp_path / "partial.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(UserError, match="lacks VGG-Face layers"):
        identity.VGGFace.from_file(partial)
    wrong = tmp_path / "wrong.pth"
    state = _random_vgg_state("conv1_1")
    state["conv4_2.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save(state, wrong)
    with pytest.raises(UserError, match="conv4_2.weight has shape"):
        identity.VGGFace.from_file(wrong)


def test_identity_errors(tmp_path):
    with pytest.raises(UserError, match="unknown identity network"):
        identity.build_identity_net("facenet")
    with pytest.raises(UserError, match="not found"):
        identity.dlib_model_path("no_such_model.dat")
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x05hello")
    with pytest.raises(UserError, match="not a dlib face-recognition network"):
        identity.build_identity_net("dlib", weights=str(bad))
