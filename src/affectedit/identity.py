"""Face-recognition backbones for the identity loss (L_iden, eq. 2 of Lindt et al.).

One interface, two real backends:

* ``DlibFaceNet`` (default): dlib's 128-D face-recognition ResNet
  (``dlib_face_recognition_resnet_model_v1.dat``, 29 conv layers, 99.38 % on LFW) ported to a
  differentiable torch module. The weights are read by parsing dlib's own serialization of the
  network in Python (``dlib_dnn.parse_dlib_dnn``); nothing is converted ahead of time or cached on disk.
  The port reproduces ``dlib.face_recognition_model_v1(...).compute_face_descriptor`` on real faces
  to about 1e-6 per element (tested on 20 faces to < 1e-3).
* ``VGGFace``: VGG-Face (Parkhi et al. 2015), the network the paper uses, with the paper's layers
  conv1_2, conv2_2, conv3_2, conv4_2, conv5_2 (ReLU outputs). Its weights are not redistributable
  with this project; the user passes a converted PyTorch state_dict (``VGGFace.from_file``).

Input convention (both backends): ``x`` is N x 3 x H x W, RGB, values in [-1, 1], an aligned face
crop whose geometry is dlib's face chip with padding 0.25 (``dlib.get_face_chip(img, shape5, size,
0.25)``; the project's alignment template is that chip, at any size). Each backend resizes to its
own input size (150 for dlib, 224 for VGG-Face) with bilinear interpolation (align_corners=False, no
antialias); an input already at that size is not resampled, so a 150 x 150 dlib chip gives dlib's
descriptor exactly. All of ``features`` is differentiable with respect to ``x``.

Feature layers of the dlib backend (``DlibFaceNet.layers``): the outputs of the four residual
stages (32 channels at 35 x 35, 64 at 17 x 17, 128 at 8 x 8, 256 at 4 x 4, each after the block's
final ReLU) and the 128-D descriptor. This mirrors the paper's choice for VGG-Face, one ReLU
activation per resolution level from edges and skin texture up to identity, so L_iden keeps
the generated face close in both low-level appearance and the identity embedding; the last 256
block (2 x 2) is left out because the descriptor, a linear map of its spatial mean, already covers it.

Provenance and licences:

* dlib ResNet model: trained by Davis King on about 3 million faces (FaceScrub, VGG Face and
  web images; no LFW identities); released into the public domain (dlib-models README). It is
  shipped here by the PyPI package ``face-recognition-models`` (Adam Geitgey, MIT licence), which
  also provides ``shape_predictor_5_face_landmarks.dat`` (public domain, same README). dlib itself
  is under the Boost Software Licence. The package's ``__init__`` imports ``pkg_resources``, which
  may be absent, so its files are located without importing it (``dlib_model_path``).
* VGG-Face: Visual Geometry Group, University of Oxford; the original model is licensed for
  non-commercial research use (CC BY-NC 4.0). The user supplies the file.

dlib facts the port relies on (checked against the serialized file and against dlib's output):
input_rgb_image subtracts (122.782, 117.001, 104.298) from R, G, B and divides by 256; conv layers
with stride 2 are unpadded, stride 1 3 x 3 convs are padded by 1 (dlib's con_ default); the 3 x 3
stride-2 max pool is unpadded; a downsampling block adds its stride-2 branch to a 2 x 2 average
pool of its input with dlib's add_prev semantics (tensors are added top-left aligned and zero
padded to the larger size in every dimension: channels, rows and columns); the final fc layer has
no bias and its weights are stored inputs x outputs.
"""

from __future__ import annotations

import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from affectedit.dlib_dnn import parse_dlib_dnn
from affectedit.errors import UserError

__all__ = [
    "IdentityNet",
    "DlibFaceNet",
    "VGGFace",
    "build_identity_net",
    "dlib_model_path",
    "VGG_FACE_MEAN_RGB",
    "VGG_MISSING",
]

DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_CHIP_SIZE = 150

# VGG-Face expects 0..255 RGB pixels minus this per-channel mean (the MatConvNet / Torch7
# conversions and the widely used PyTorch ports take RGB; the original Caffe model takes BGR and
# its mean in B, G, R order: (93.5940, 104.7624, 129.1863)).
VGG_FACE_MEAN_RGB = (129.1863, 104.7624, 93.5940)
VGG_FACE_SIZE = 224


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize to size x size, skipped when x already has that size (exact comparisons)."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def _check_input(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an N x 3 x H x W face batch in [-1, 1], got shape {tuple(x.shape)}")


class IdentityNet(nn.Module):
    """Base of the identity-loss backbones.

    ``layers`` names the tensors that ``features`` returns, in order.
    """

    layers: tuple[str, ...] = ()

    def features(self, x: Tensor) -> list[Tensor]:
        """Activations used by L_iden.

        x: N x 3 x H x W, RGB in [-1, 1], an aligned face crop with dlib's chip geometry
        (padding 0.25), any size. Returns one tensor per name in ``self.layers``.
        Differentiable with respect to x.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.features(x)


# ----------------------------------------------------------------------------------------------
# dlib model files


def dlib_model_path(name: str) -> pathlib.Path:
    """Path of ``name`` inside the installed ``face_recognition_models/models`` folder.

    The package is located without importing it (its __init__ needs pkg_resources).
    Raises UserError when the package or the file is missing.
    """
    from affectedit.faces import dlib_model_file

    return dlib_model_file(name)


# ----------------------------------------------------------------------------------------------
# dlib ResNet in torch


class _Affine(nn.Module):
    """dlib's affine layer (batch norm folded at the end of training): per-channel gamma*x+beta."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def _add_prev(a: Tensor, b: Tensor) -> Tensor:
    """dlib's add_prev: sum of two tensors zero-padded (at the end of each dim) to the larger size."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: Tensor) -> Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if dc or dh or dw else t

    return pad(a) + pad(b)


class _ResBlock(nn.Module):
    """relu(x + affine(conv(relu(affine(conv(x)))))) with dlib's downsampling variant."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=pad)
        self.bn1 = _Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.bn2 = _Affine(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.down:
            # The shortcut is a 2x2 average pool; with 8x8 inputs it is 4x4 while the conv branch
            # is 3x3, and dlib's add_prev pads the smaller one with zeros (and the channels too).
            return F.relu(_add_prev(F.avg_pool2d(x, 2, 2), y))
        return F.relu(x + y)


# (channels, number of blocks, first block downsamples) for dlib's levels 4, 3, 2, 1, 0.
_DLIB_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
_DLIB_MEAN_RGB = (122.782, 117.001, 104.298)


class DlibFaceNet(IdentityNet):
    """dlib's face-recognition ResNet (dnn_face_recognition_ex) as a torch module.

    Build it with ``DlibFaceNet.from_package()``; the plain constructor gives random weights.
    """

    layers = ("res32", "res64", "res128", "res256", "descriptor")

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_DLIB_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.bn = _Affine(32)
        stages = []
        cin = 32
        for cout, blocks, down in _DLIB_STAGES:
            stages.append(nn.Sequential(*[_ResBlock(cin if i == 0 else cout, cout, down and i == 0) for i in range(blocks)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(256, 128, bias=False)

    def _run(self, x: Tensor) -> list[Tensor]:
        _check_input(x)
        x = _resize(x, DLIB_CHIP_SIZE)
        # [-1, 1] -> 0..255 pixels -> dlib's input_rgb_image normalisation.
        x = ((x + 1.0) * 127.5 - self.mean) / 256.0
        # channels_last makes oneDNN's convolutions about 1.5x faster on CPU (forward and backward).
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        outs.append(self.fc(x.mean(dim=(2, 3))))
        return outs

    def features(self, x: Tensor) -> list[Tensor]:
        """Stage outputs (N x 32 x 35 x 35, N x 64 x 17 x 17, N x 128 x 8 x 8, N x 256 x 4 x 4)
        and the descriptor (N x 128). x: N x 3 x H x W, RGB in [-1, 1], dlib chip geometry."""
        outs = self._run(x)
        return outs[:4] + outs[5:]

    def descriptor(self, x: Tensor) -> Tensor:
        """dlib's 128-D face descriptor, N x 128. Same input convention as ``features``."""
        return self._run(x)[-1]

    def load_dlib(self, path: str | pathlib.Path) -> "DlibFaceNet":
        """Copy the weights of a serialized dlib network (``.dat``) into this module."""
        layers = parse_dlib_dnn(str(path))
        convs = [l for l in layers if l["type"] == "con_4"]
        affines = [l for l in layers if l["type"] == "affine_"]
        fcs = [l for l in layers if l["type"] == "fc_2"]
        mods_conv = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        mods_aff = [m for m in self.modules() if isinstance(m, _Affine)]
        where = pathlib.Path(path)
        if len(convs) != len(mods_conv) or len(affines) != len(mods_aff) or len(fcs) != 1:
            raise UserError(f"{where} does not have the layers of dlib's face-recognition ResNet")
        if tuple(round(v, 3) for v in layers[0]["mean"]) != _DLIB_MEAN_RGB or layers[0]["size"] != (150, 150):
            raise UserError(f"{where}: unexpected input layer {layers[0]}")
        with torch.no_grad():
            for spec, mod in zip(convs, mods_conv):
                if spec["weight"].shape != tuple(mod.weight.shape) or spec["stride"] != mod.stride or spec["padding"] != mod.padding:
                    raise UserError(f"{where}: conv layer {spec['weight'].shape} does not match the expected topology")
                mod.weight.copy_(torch.from_numpy(spec["weight"]))
                mod.bias.copy_(torch.from_numpy(spec["bias"]))
            for spec, mod in zip(affines, mods_aff):
                if spec["gamma"].shape != tuple(mod.gamma.shape):
                    raise UserError(f"{where}: affine layer does not match the expected topology")
                mod.gamma.copy_(torch.from_numpy(spec["gamma"]))
                mod.beta.copy_(torch.from_numpy(spec["beta"]))
            fc = fcs[0]
            if fc["weight"].shape != tuple(self.fc.weight.shape) or fc["has_bias"]:
                raise UserError(f"{where}: final fc layer does not match the expected topology")
            self.fc.weight.copy_(torch.from_numpy(fc["weight"]))
        return self

    @classmethod
    def from_package(cls) -> "DlibFaceNet":
        """The network with dlib's weights from the installed ``face-recognition-models`` package."""
        return cls().load_dlib(dlib_model_path(DLIB_RECOGNITION_MODEL)).fuse_affine()

    def fuse_affine(self) -> "DlibFaceNet":
        """Fold every affine layer into the conv before it (conv weights * gamma, bias * gamma + beta).

        The same function up to float rounding, and about 40% less time: the per-channel multiply
        and add are memory-bound passes over the largest activations."""
        pairs = [(self, "conv", "bn")] + [
            (block, conv, bn) for stage in self.stages for block in stage for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"))
        ]
        with torch.no_grad():
            for owner, conv_name, bn_name in pairs:
                conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
                if isinstance(bn, _Affine):
                    conv.weight.mul_(bn.gamma.view(-1, 1, 1, 1))
                    conv.bias.mul_(bn.gamma).add_(bn.beta)
                    setattr(owner, bn_name, nn.Identity())
        return self


# ----------------------------------------------------------------------------------------------
# VGG-Face

# VGG-16 conv layers up to the last one the loss uses; a 2x2 max pool precedes each new block.
_VGG_CONVS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512),
)  # fmt: skip
# Index of each conv in torchvision-style ``features`` Sequential numbering (conv, relu, ..., pool).
_VGG_SEQUENTIAL_INDEX = dict(zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26), (n for n, _, _ in _VGG_CONVS)))

_VGG_HELP = (
    "VGG-Face needs a PyTorch state_dict of the converted VGG-Face weights (e.g. vgg_face_dag.pth, "
    "keys conv1_1.weight ... conv5_3.bias, fc6-fc8; 'features.N.weight' naming is also accepted). "
    "Download it yourself (licence: non-commercial research) and pass its path, e.g. "
    "build_identity_net('vggface', weights='path/to/vgg_face_dag.pth')."
)


# One line: what is missing, which file to obtain, and the substitute.
VGG_MISSING = (
    "VGG-Face weights needed for the paper's identity loss ({where}): obtain vgg_face_dag.pth (VGG-Face "
    "converted to PyTorch by S. Albanie, robots.ox.ac.uk/~albanie/pytorch-models.html; non-commercial "
    "licence) and pass --set loss.identity_weights=PATH/vgg_face_dag.pth, or substitute dlib's bundled "
    "network with --set loss.identity_backbone=dlib"
)


def _normalise_vgg_key(key: str) -> str | None:
    key = key.removeprefix("module.")
    parts = key.split(".")
    if parts[0] == "features":  # torchvision-style Sequential: features.<index>.<weight|bias>
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) not in _VGG_SEQUENTIAL_INDEX:
            return None
        return f"{_VGG_SEQUENTIAL_INDEX[int(parts[1])]}.{parts[2]}"
    if key.startswith("conv_"):  # prlz77-style conv_1_1
        key = "conv" + key[len("conv_") :]
    return key


class VGGFace(IdentityNet):
    """VGG-Face conv layers with the paper's identity-loss taps (ReLU outputs).

    Input: N x 3 x H x W RGB in [-1, 1]; resized to 224 x 224, mapped to 0..255 and reduced by
    ``VGG_FACE_MEAN_RGB`` (RGB order; set ``bgr=True`` for a Caffe-derived file whose first layer
    expects BGR). Build it with ``VGGFace.from_file(path)``; the constructor gives random weights.
    """

    layers = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")

    def __init__(self, bgr: bool = False) -> None:
        super().__init__()
        self.bgr = bgr
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, 3, padding=1) for name, cin, cout in _VGG_CONVS})
        mean = VGG_FACE_MEAN_RGB[::-1] if bgr else VGG_FACE_MEAN_RGB
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """ReLU outputs of conv1_2 (N x 64 x 224 x 224), conv2_2 (128, 112), conv3_2 (256, 56),
        conv4_2 (512, 28), conv5_2 (512, 14). x: N x 3 x H x W, RGB in [-1, 1]."""
        _check_input(x)
        x = _resize(x, VGG_FACE_SIZE)
        if self.bgr:
            x = x.flip(1)
        x = (x + 1.0) * 127.5 - self.mean
        outs = []
        for name, _, _ in _VGG_CONVS:
            if name.endswith("_1") and name != "conv1_1":
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(self.convs[name](x))
            if name in self.layers:
                outs.append(x)
        return outs

    @classmethod
    def from_file(cls, path: str | pathlib.Path, bgr: bool = False) -> "VGGFace":
        """Load VGG-Face conv weights from a PyTorch state_dict file (see ``_VGG_HELP``)."""
        path = pathlib.Path(path) if str(path) else None
        if path is None or not path.is_file():
            raise UserError(VGG_MISSING.format(where=f"{path} does not exist" if path else "no loss.identity_weights given"))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot read VGG-Face weights {path}: {e}. {_VGG_HELP}") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"{path} is not a state_dict (got {type(state).__name__}). {_VGG_HELP}")
        weights = {}
        for key, value in state.items():
            norm = _normalise_vgg_key(str(key))
            if norm is not None and isinstance(value, torch.Tensor):
                weights[norm] = value
        net = cls(bgr=bgr)
        wanted = {f"convs.{n}.{k}": f"{n}.{k}" for n, _, _ in _VGG_CONVS for k in ("weight", "bias")}
        missing = [src for src in wanted.values() if src not in weights]
        if missing:
            raise UserError(f"{path} lacks VGG-Face layers {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. {_VGG_HELP}")
        own = net.state_dict()
        for dst, src in wanted.items():
            if tuple(weights[src].shape) != tuple(own[dst].shape):
                raise UserError(
                    f"{path}: {src} has shape {tuple(weights[src].shape)}, VGG-Face needs {tuple(own[dst].shape)}. {_VGG_HELP}"
                )
        net.load_state_dict({dst: weights[src].float() for dst, src in wanted.items()})
        return net


# ----------------------------------------------------------------------------------------------


def build_identity_net(name: str = "dlib", weights: str = "") -> IdentityNet:
    """The frozen (requires_grad False), eval-mode backbone for L_iden.

    name: 'dlib' (default; weights from face-recognition-models, ``weights`` may name another
    dlib .dat file) or 'vggface' (``weights`` is the required state_dict path).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "dlib":
        net: IdentityNet = DlibFaceNet().load_dlib(weights).fuse_affine() if weights else DlibFaceNet.from_package()
    elif key == "vggface":
        net = VGGFace.from_file(weights)
    else:
        raise UserError(f"unknown identity network {name!r}: use 'dlib' or 'vggface'")
    net.eval()
    net.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)
