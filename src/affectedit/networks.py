"""The four networks of Lindt et al. (FG 2019), built from a `ModelConfig`.

    encoder   E      x (N x 3 x S x S, [-1, 1])          -> z (N x z_dim, [-1, 1], tanh)
    generator G      z, y (N x 2 valence/arousal, [-1,1]) -> x_gen (N x 3 x S x S, [-1, 1], tanh)
    d_z       D_z    z                                    -> logit that z came from U[-1, 1]^z_dim
    d_img     D_img  x, y                                 -> logit that (x, y) is a real pair

The discriminators return LOGITS; `torch.sigmoid(logit)` is the paper's probability. Keeping the
sigmoid inside the loss (binary_cross_entropy_with_logits) is the numerically stable form of the
same objective and is what autocast allows in bf16/fp16.

Batch norm in the discriminators is `SyncBatchNorm1d/2d` below: plain batch norm in one process,
and statistics over the GLOBAL batch when torch.distributed runs with several processes (on
CPU/gloo too, where torch's own SyncBatchNorm is unavailable), so that a data-parallel run
computes the same function as one process with the same global batch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from affectedit.config import ModelConfig


class _SyncBatchNormMixin:
    """Batch norm whose batch statistics are all-reduced (differentiably) across processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)  # type: ignore[misc]
        import warnings

        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        c = x.shape[1]
        count = torch.tensor([float(xf.numel() // c)], device=x.device)
        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
            warnings.simplefilter("ignore", FutureWarning)
            # Two passes (mean, then squared deviations), all-reduced with gradient, as native
            # batch norm computes them: E[x^2] - E[x]^2 would lose precision.
            sums = all_reduce(torch.cat([xf.sum(dims), count]))
            n = sums[-1]
            mean = sums[:c] / n
            shape = [1, c] + [1] * (x.dim() - 2)
            centred = xf - mean.view(shape)
            var = all_reduce((centred * centred).sum(dims)) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(var.detach() * m * n / max(n.item() - 1, 1))
            self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = centred / torch.sqrt(var.view(shape) + self.eps)
        y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class SyncBatchNorm1d(_SyncBatchNormMixin, nn.BatchNorm1d):
    pass


class SyncBatchNorm2d(_SyncBatchNormMixin, nn.BatchNorm2d):
    pass


def tile_label(y: torch.Tensor, repeat: int) -> torch.Tensor:
    """(N, 2) labels -> (N, 2*repeat): valence repeated `repeat` times, then arousal (the paper's y x 50)."""
    return y.repeat_interleave(repeat, dim=1)


def tile_label_map(y: torch.Tensor, repeat: int, height: int, width: int) -> torch.Tensor:
    """(N, 2) labels -> (N, 2*repeat, H, W): the tiled label as constant feature maps."""
    return tile_label(y, repeat)[:, :, None, None].expand(-1, -1, height, width)


def _pad(kernel: int) -> int:
    return kernel // 2


class Encoder(nn.Module):
    """E: 4 conv (kernel 5, stride 2, 'same' padding, ReLU) + FC to z_dim with tanh."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.encoder_channels:
            layers += [nn.Conv2d(c_in, c, cfg.kernel_size, 2, _pad(cfg.kernel_size)), nn.ReLU(inplace=True)]
            c_in = c
        self.convs = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.encoder_channels)
        self.fc = nn.Linear(c_in * side * side, cfg.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x S x S in [-1, 1] -> z: N x z_dim in [-1, 1]."""
        return torch.tanh(self.fc(self.convs(x).flatten(1)))


class Generator(nn.Module):
    """G: FC to (S/16)^2 x C, ReLU; 6 transposed conv (kernel 5; 4 stride 2, 2 stride 1), tanh output."""

    head = "pixels"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if len(cfg.generator_channels) != 5:
            raise ValueError("generator_channels needs 5 widths: 4 stride-2 layers and one stride-1 layer before RGB")
        self.label_repeat = cfg.label_repeat
        self.side = cfg.image_size // 16
        self.fc_channels = cfg.generator_fc_channels
        self.fc = nn.Linear(cfg.z_dim + 2 * cfg.label_repeat, self.side * self.side * self.fc_channels)
        k, p = cfg.kernel_size, _pad(cfg.kernel_size)
        layers, c_in = [], self.fc_channels
        for i, c in enumerate(cfg.generator_channels):
            stride = 2 if i < 4 else 1
            layers += [nn.ConvTranspose2d(c_in, c, k, stride, p, output_padding=stride - 1), nn.ReLU(inplace=True)]
            c_in = c
        layers += [nn.ConvTranspose2d(c_in, 3, k, 1, p)]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: N x z_dim in [-1, 1]; y: N x 2 (valence, arousal) in [-1, 1] -> N x 3 x S x S in [-1, 1]."""
        h = self.fc(torch.cat([z, tile_label(y, self.label_repeat).to(z.dtype)], dim=1))
        h = F.relu(h).view(-1, self.fc_channels, self.side, self.side)
        return torch.tanh(self.deconvs(h))


class Fields(NamedTuple):
    """What the warp head predicts for a crop, at the model's resolution S.

    flow   N x 2 x S x S  backward displacement in grid_sample units of the crop (x, then y; the
                          edited crop at p samples the input at p + flow(p)), |flow| <= max_flow
    mask   N x 1 x S x S  A in [0, 1]: where new appearance (colour) replaces the warped input
    colour N x 3 x S x S  C in [-1, 1]
    delta  N x 3 x S x S  an additive appearance change (the "basis" appearance), or None
    With ``model.mouth = "open"`` (else None; see affectedit.mouth):
    units      N x (U + 1)    the gated unit coefficients, the mouth's opening last
    landmarks  N x 68 x 2     where they start: the mean neutral face's landmarks, unit crop coordinates
    mouth_flow N x 2 x S x S  the opening's part of ``flow``"""

    flow: torch.Tensor
    mask: torch.Tensor
    colour: torch.Tensor
    delta: torch.Tensor | None = None
    units: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    mouth_flow: torch.Tensor | None = None


# The mask logit starts here (sigmoid(-3) = 0.05): G begins by moving pixels, not repainting them
# (GANimation's masks saturate at 1 when they start near 0.5).
MASK_OFFSET = -3.0


class WarpEncoder(Encoder):
    """E for the warp head: the paper's encoder, plus a linear read-out of the face's own
    (valence, arousal) from the same features. Returns the code [z, y_src] (N x (z_dim + 2));
    z alone is what D_z sees, y_src tells G where the expression starts from."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.label_fc = nn.Linear(self.fc.in_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x).flatten(1)
        return torch.cat([torch.tanh(self.fc(h)), torch.tanh(self.label_fc(h))], dim=1)


# The expressions of the "basis" appearance (model.appearance), in the basis' order.
BASIS_EMOTIONS = ("happiness", "surprise", "sadness", "anger")

# The largest multiple of a mean expression motion the "basis" motion may use (the mean over many
# people of a crowd-labelled expression is milder than a clear one).
MOTION_RANGE = 3.0

# motion="units": each action unit's coefficient lies in [-UNIT_RANGE, UNIT_RANGE] (basis.ACTION_UNITS
# defines a moderate movement; 1.5 of it is a strong one).
UNIT_RANGE = 1.5

# model.mouth="open": the opening's logit starts here (sigmoid(-4) = 0.018 of its range: closed).
MOUTH_OFFSET = -4.0

# motion="hybrid": the free flow acts from this height of the aligned crop down (the nose tip; dlib's
# mean landmarks on the training crops: brows 0.19, eyes 0.30, nose tip 0.49, mouth 0.70).
LOWER_FACE_FROM = 0.52

# The edit fades in over this distance between the asked label and the face's own (y_src): asking
# a face for the expression it shows changes nothing, by construction.
GATE = 0.25


class WarpGenerator(Generator):
    """G with the warp head: the paper's FC + transposed-conv trunk, whose last layer predicts 6
    channels instead of RGB (fine flow 2, mask 1, colour 3), plus a coarse flow predicted from the
    S/4 feature map. The code is [z, y_src] (see :class:`WarpEncoder`); besides the paper's tiled
    label at the FC, (y, y - y_src) adds a learned per-channel bias at the input of every
    transposed convolution, so the change depends on where the expression starts and ends.
    flow = g * max_flow * tanh(up(coarse) + fine); mask = g * sigmoid(logit - 3) (mask and colour
    at half resolution: shading and shapes, not pixel patterns); colour = tanh; g = min(1,
    (|y - y_src| - model.gate_from) / GATE). ``model.motion`` "basis" replaces that flow by a mix of the training
    faces' mean expression motions, "units" by a mix of action units' motions, "hybrid" adds the free flow below the nose to the basis; ``model.
    appearance`` "basis" replaces mask and colour by a mix of fixed expression directions.
    Returns :class:`Fields`; :func:`compose` applies them to the input crop, ``affectedit.warp``
    (upsampled) to the original photo."""

    head = "warp"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, p = cfg.kernel_size, _pad(cfg.kernel_size)
        self.z_dim = cfg.z_dim
        self.deconvs[-1] = nn.ConvTranspose2d(cfg.generator_channels[-1], 6, k, 1, p)
        self.coarse = nn.Conv2d(cfg.generator_channels[1], 2, 3, 1, 1)
        self.coarse_after = 3  # index in deconvs of the ReLU after the second stride-2 layer (S/4)
        self.max_flow = float(cfg.max_flow)
        inputs = [cfg.generator_fc_channels, *cfg.generator_channels]
        self.cond = nn.ModuleList(nn.Linear(4, c) for c in inputs)
        self.appearance = cfg.appearance
        if cfg.appearance == "basis":
            # New appearance only along K fixed expression directions (the mean aligned face of each
            # expression minus the same people's neutral face, see basis.appearance_basis), with
            # per-face coefficients in [-appearance_range, appearance_range]: shading, teeth and folds as real faces show them,
            # never a pattern of the generator's own.
            self.register_buffer("basis", torch.zeros(len(BASIS_EMOTIONS), 3, cfg.image_size, cfg.image_size))
            self.alpha = nn.Linear(self.side * self.side * self.fc_channels + 4, len(BASIS_EMOTIONS))
            self.appearance_range = float(cfg.appearance_range)
        self.motion = cfg.motion
        self.motion_peak = float(cfg.motion_peak)
        if cfg.motion == "hybrid":
            # Free flow below the nose only (a fixed smooth mask: rows below ~0.52 of the aligned
            # crop, where the nose tip sits), the basis motion everywhere: the mouth may take the
            # shape a face needs, the eyes and brows move only as real expressions move them.
            rows = (torch.arange(cfg.image_size, dtype=torch.float32) + 0.5) / cfg.image_size
            self.register_buffer("lower_face", torch.sigmoid((rows - LOWER_FACE_FROM) / 0.025)[None, None, :, None].expand(1, 1, -1, cfg.image_size).clone(),
                                 persistent=False)
        if cfg.motion in ("basis", "hybrid", "units"):
            # Motion only along the training faces' mean expression motions (upper and lower face of
            # each expression, see affectedit.basis.motion_basis), or along the face's elementary
            # movements (action units, basis.action_unit_basis), with per-face coefficients in
            # [-MOTION_RANGE, MOTION_RANGE] (units: [-UNIT_RANGE, UNIT_RANGE]): smooth, human geometry by construction.
            from affectedit.basis import ACTION_UNITS, UNIT_NEGATIVE, UNIT_NEGATIVE_DEFAULT

            fields = len(ACTION_UNITS) if cfg.motion == "units" else 2 * len(BASIS_EMOTIONS)
            if cfg.motion == "units":  # the share of the range each coefficient may take below 0
                self.register_buffer("motion_negative", torch.tensor([UNIT_NEGATIVE.get(n, UNIT_NEGATIVE_DEFAULT) for n in ACTION_UNITS]))
        self.mouth = cfg.mouth
        self.appearance_mouth = bool(cfg.appearance_mouth)
        if cfg.mouth == "open":
            # The opening mouth (affectedit.mouth): one more unit, last, in [0, OPEN_RANGE]; its
            # inside is drawn where the lips part, from the mean neutral face's landmarks (set
            # before training, like the motion fields) carried by the whole flow.
            fields += 1
            self.register_buffer("rest_landmarks", torch.zeros(68, 2))
            pixels = (torch.arange(cfg.image_size, dtype=torch.float32) + 0.5) / cfg.image_size
            self.register_buffer("pixel_grid", torch.stack(torch.meshgrid(pixels, pixels, indexing="xy")), persistent=False)
        if cfg.motion in ("basis", "hybrid", "units"):
            self.register_buffer("motion_basis", torch.zeros(fields, 2, cfg.image_size, cfg.image_size))
            self.beta = nn.Linear(self.side * self.side * self.fc_channels + 4, fields)
        self.gate_from = float(cfg.gate_from)
        self.image_size = int(cfg.image_size)
        # With motion and appearance both along fixed bases, every output is read from the FC
        # trunk: the transposed convolutions' pixels feed nothing, so they are not computed (their
        # weights stay, unused, so checkpoints of every head load alike).
        self.pixels_used = not (cfg.motion in ("basis", "units") and cfg.appearance == "basis")

    def reset_fields(self) -> None:
        """Start as 'no change': flow 0 and mask sigmoid(-3) whatever the trunk computes (zero
        weights for the flow and mask outputs still receive gradients)."""
        with torch.no_grad():
            self.deconvs[-1].weight[:, :3].zero_()
            self.deconvs[-1].bias[:3].zero_()
            self.coarse.weight.zero_()
            self.coarse.bias.zero_()

    def forward(self, code: torch.Tensor, y: torch.Tensor) -> Fields:  # type: ignore[override]
        z, y_src = code[:, : self.z_dim], code[:, self.z_dim :]
        y = y.to(z.dtype)
        delta = y - y_src
        cond = torch.cat([y, delta], dim=1)
        h = self.fc(torch.cat([z, tile_label(y, self.label_repeat)], dim=1))
        h = F.relu(h).view(-1, self.fc_channels, self.side, self.side)
        trunk = h
        coarse, j = None, 0
        for i, layer in enumerate(self.deconvs if self.pixels_used else ()):
            if isinstance(layer, nn.ConvTranspose2d):
                h = h + self.cond[j](cond)[:, :, None, None].to(h.dtype)
                j += 1
            h = layer(h)
            if i == self.coarse_after and self.motion in ("free", "hybrid"):  # the only heads with a free flow
                coarse = self.coarse(h)
        size = (self.image_size, self.image_size)
        if not self.pixels_used:  # only its batch, dtype and device are read below
            h = trunk.new_zeros(trunk.shape[0], 6, *size)
        gate = ((delta.float().norm(dim=1) - self.gate_from) / GATE).clamp(0.0, 1.0)[:, None, None, None].to(h.dtype)
        coefficients_in = torch.cat([trunk.flatten(1), cond], dim=1)  # what the basis coefficients are read from
        if coarse is not None:  # the free flow ("free" everywhere, "hybrid" below the nose)
            coarse = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
            free = self.max_flow * torch.tanh(coarse + h[:, :2])
        if self.motion == "free":
            flow = gate * free
        else:
            raw = self.beta(coefficients_in)
            beta = torch.tanh(raw)
            if self.motion_peak > 0:  # coefficient range per field: its peak moves at most motion_peak of the side
                peak = self.motion_basis.float().norm(dim=1).flatten(1).amax(1).clamp_min(1e-6)
                beta = beta * (2 * self.motion_peak / peak).to(beta.dtype)  # grid units span 2 per side
            elif self.motion == "units":  # contractions: [-negative * UNIT_RANGE, UNIT_RANGE]
                u = len(self.motion_negative)
                beta = UNIT_RANGE * torch.where(beta[:, :u] > 0, beta[:, :u], beta[:, :u] * self.motion_negative.to(beta.dtype))
                if self.mouth == "open":  # the opening, last: OPEN_RANGE * sigmoid, never exactly 0 (so it learns)
                    from affectedit.mouth import OPEN_RANGE

                    beta = torch.cat([beta, (OPEN_RANGE * torch.sigmoid(raw[:, u:] + MOUTH_OFFSET)).to(beta.dtype)], 1)
            else:
                beta = MOTION_RANGE * beta
            flow = gate * torch.einsum("nk,kchw->nchw", beta.float(), self.motion_basis.float()).to(h.dtype)
            if self.motion == "hybrid":
                flow = flow + gate * self.lower_face.to(h.dtype) * free
        mouth = {}
        if self.mouth == "open":
            from affectedit.mouth import render, warped_landmarks

            units = gate.flatten(0).float()[:, None] * beta.float()
            rest = self.rest_landmarks.float().expand(units.shape[0], 68, 2)  # shape[0], not len(): a dynamic batch in ONNX
            if self.training:  # drawn here for the losses; an edit draws it where it is applied (warp.CropEdit)
                a, c = render(self.pixel_grid[0], self.pixel_grid[1], warped_landmarks(rest, flow, units), 0.5 / size[-1], rest, units=units)
            else:
                a, c = torch.zeros_like(h[:, :1]), torch.zeros_like(h[:, 3:])
            opening = units[:, -1, None, None, None] * self.motion_basis[-1].float()
            mouth = {"units": units, "landmarks": rest, "mouth_flow": opening.to(h.dtype)}
        if self.appearance == "basis":
            alpha = self.appearance_range * torch.tanh(self.alpha(coefficients_in))
            basis = self.basis.float()
            if self.mouth == "open" and not self.appearance_mouth:
                from affectedit.mouth import appearance_keep

                basis = basis * appearance_keep(self.rest_landmarks.float(), self.pixel_grid[0], self.pixel_grid[1])
            delta = gate * torch.einsum("nk,kchw->nchw", alpha.float(), basis).to(h.dtype)
            if mouth:
                return Fields(flow, a.to(h.dtype), c.to(h.dtype), delta, **mouth)
            return Fields(flow, torch.zeros_like(h[:, :1]), torch.zeros_like(h[:, 3:]), delta)
        smooth = F.interpolate(F.avg_pool2d(h[:, 2:], 2), size=size, mode="bilinear", align_corners=False)
        mask = gate * torch.sigmoid(smooth[:, :1] + MASK_OFFSET)
        colour = torch.tanh(smooth[:, 1:])
        return Fields(flow, mask, colour)


def warp_image(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x sampled at p + flow(p) (bilinear, border padding). x N x C x H x W; flow N x 2 x H x W in
    grid_sample units (align_corners=False), on x's grid."""
    n, _, h, w = flow.shape
    ys = (torch.arange(h, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / w) - 1.0
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # H x W x 2 (x, y)
    grid = base[None] + flow.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def compose(x: torch.Tensor, fields: Fields, warped: torch.Tensor | None = None) -> torch.Tensor:
    """x_gen = A * C + (1 - A) * warp(x, flow) (+ delta) at the crop's resolution, as trained
    (unclamped; ``affectedit.warp.compose`` is the general form for any edit and resolution).
    ``warped``: warp(x, flow), if the caller has it already."""
    a = fields.mask.to(x.dtype)
    if warped is None:
        warped = warp_image(x, fields.flow.to(x.dtype))
    out = a * fields.colour.to(x.dtype) + (1 - a) * warped
    return out if fields.delta is None else out + fields.delta.to(x.dtype)


class LatentDiscriminator(nn.Module):
    """D_z: FC 64-32-16 with batch norm and ReLU, then FC 1 (logit; sigmoid gives the probability)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, c_in = [], cfg.z_dim
        for c in cfg.d_z_channels:
            layers += [nn.Linear(c_in, c), SyncBatchNorm1d(c), nn.ReLU(inplace=True)]
            c_in = c
        layers += [nn.Linear(c_in, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: N x z_dim -> N logits."""
        return self.net(z).squeeze(1)


class ImageDiscriminator(nn.Module):
    """D_img: 4 x (conv k5 s2, batch norm, ReLU) with the tiled label concatenated to the output of
    every block (paper) or of the first block only (authors' public code), then FC 1024 (leaky ReLU
    0.2) and FC 1 (logit)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.repeat = cfg.d_img_label_repeat
        self.every_block = cfg.d_img_label_every_block
        label_ch = 2 * self.repeat
        k, p = cfg.kernel_size, _pad(cfg.kernel_size)
        self.blocks = nn.ModuleList()
        c_in = 3
        for i, c in enumerate(cfg.d_img_channels):
            self.blocks.append(nn.Sequential(nn.Conv2d(c_in, c, k, 2, p), SyncBatchNorm2d(c), nn.ReLU(inplace=True)))
            c_in = c + (label_ch if (self.every_block or i == 0) else 0)
        side = cfg.image_size // 2 ** len(cfg.d_img_channels)
        self.fc = nn.Sequential(nn.Linear(c_in * side * side, cfg.d_img_fc), nn.LeakyReLU(0.2, inplace=True), nn.Linear(cfg.d_img_fc, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor, return_block_inputs: bool = False):
        """x: N x 3 x S x S in [-1, 1]; y: N x 2 -> N logits (and, if asked, the input of each layer after block 1)."""
        h, inputs = x, []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.every_block or i == 0:
                h = torch.cat([h, tile_label_map(y.to(h.dtype), self.repeat, h.shape[2], h.shape[3])], dim=1)
            inputs.append(h)
        logit = self.fc(h.flatten(1)).squeeze(1)
        return (logit, inputs) if return_block_inputs else logit


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02), biases 0 (batch-norm scales stay 1)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_models(cfg: ModelConfig) -> dict[str, nn.Module]:
    """All four networks, initialised: keys encoder, generator, d_z, d_img."""
    if cfg.image_size % 16:
        raise ValueError(f"model.image_size must be divisible by 16, got {cfg.image_size}")
    if cfg.head not in ("pixels", "warp"):
        raise ValueError(f"model.head must be 'pixels' or 'warp', got {cfg.head!r}")
    if cfg.appearance not in ("free", "basis"):
        raise ValueError(f"model.appearance must be 'free' or 'basis', got {cfg.appearance!r}")
    if cfg.motion not in ("free", "basis", "hybrid", "units"):
        raise ValueError(f"model.motion must be 'free', 'basis', 'hybrid' or 'units', got {cfg.motion!r}")
    if cfg.mouth not in ("closed", "open") or (cfg.mouth == "open" and (cfg.motion, cfg.appearance) != ("units", "basis")):
        raise ValueError(f"model.mouth must be 'closed' or 'open' (with model.motion 'units' and model.appearance 'basis'), "
                         f"got {cfg.mouth!r} with motion {cfg.motion!r} and appearance {cfg.appearance!r}")
    models = {
        "encoder": WarpEncoder(cfg) if cfg.head == "warp" else Encoder(cfg),
        "generator": WarpGenerator(cfg) if cfg.head == "warp" else Generator(cfg),
        "d_z": LatentDiscriminator(cfg),
        "d_img": ImageDiscriminator(cfg),
    }
    for m in models.values():
        init_weights(m)
    if cfg.head == "warp":
        models["generator"].reset_fields()
    return models
