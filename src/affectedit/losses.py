"""The paper's losses as small pure functions.

| code name            | paper symbol | equation | what it is                                             |
|----------------------|--------------|----------|--------------------------------------------------------|
| reconstruction_loss  | L_rec        | (1)      | L1(x, G(E(x), y))                                      |
| identity_loss        | L_iden       | (2)      | sum_l L1(phi_l(x), phi_l(G(E(x), y))) (norm: paper or authors) |
| d_z_loss / e_z_loss  | L_z          | (3)      | GAN loss between D_z and E, prior U[-1, 1]^z           |
| d_img_loss / g_img_loss | L_img     | (4)      | GAN loss between D_img and G on (image, label) pairs   |
| total (in train.py)  | L_total      | (5)      | rec + 1/3 iden + 0.01 z + 0.01 img (LossConfig)        |

Every function returns a per-sample loss vector (N,) rather than a batch mean. The training loop
sums it and divides by the GLOBAL batch size, which makes a data-parallel run (uneven shards
included) compute exactly the gradient of one process with the same global batch. The
discriminators output logits; binary_cross_entropy_with_logits is log(sigmoid) in stable form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(1)


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 at least (half-precision activations under autocast)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def reconstruction_loss(x: torch.Tensor, x_gen: torch.Tensor) -> torch.Tensor:
    """L_rec per sample: mean |x - x_gen| over pixels. x, x_gen: N x 3 x S x S in [-1, 1]."""
    return _per_sample_mean((_f32(x) - _f32(x_gen)).abs())


def identity_loss(features_real: list[torch.Tensor], features_gen: list[torch.Tensor], norm: str = "mean") -> torch.Tensor:
    """L_iden per sample: sum over layers of the mean |phi_l(x) - phi_l(x_gen)|.

    norm "mean" (the paper's eq. 2, L1 taken as a mean like L_rec): each layer's mean over its
    C x H x W values. "authors": that mean divided once more by the layer's H x W, as the authors'
    public code does (conv1_2's term / 224^2 ... conv5_2's / 14^2 for VGG-Face), which weights the
    deep, small layers far more than the shallow ones; a feature vector (N x D, dlib's descriptor)
    has H x W = 1. features_*: one N x C x H x W (or N x D) tensor per layer."""
    if norm not in ("mean", "authors"):
        raise ValueError(f"identity_loss norm must be 'mean' or 'authors', got {norm!r}")
    total = 0
    for a, b in zip(features_real, features_gen, strict=True):
        term = _per_sample_mean((_f32(a) - _f32(b)).abs())
        if norm == "authors" and a.dim() == 4:
            term = term / (a.shape[-2] * a.shape[-1])
        total = total + term
    return total


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = _f32(logits)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")


def d_z_loss(logit_prior: torch.Tensor, logit_encoded: torch.Tensor) -> torch.Tensor:
    """D_z's side of L_z per sample: -log D_z(z*) - log(1 - D_z(E(x))), z* ~ U[-1, 1]^z."""
    return _bce(logit_prior, 1.0) + _bce(logit_encoded, 0.0)


def e_z_loss(logit_encoded: torch.Tensor) -> torch.Tensor:
    """E's side of L_z per sample (non-saturating): -log D_z(E(x))."""
    return _bce(logit_encoded, 1.0)


def d_img_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """D_img's side of L_img per sample: -log D_img(x, y) - log(1 - D_img(G(E(x), y), y))."""
    return _bce(logit_real, 1.0) + _bce(logit_fake, 0.0)


def g_img_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """G's side of L_img per sample (non-saturating): -log D_img(G(E(x), y), y)."""
    return _bce(logit_fake, 1.0)


def sample_prior(n: int, z_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples of the uniform prior U[-1, 1]^z_dim."""
    return torch.rand(n, z_dim, generator=generator) * 2 - 1


# ----------------------------------------------------------------------------- warp head (beyond the paper)


def soft_expression_targets(y: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """Continuous labels -> soft class targets: p_k ~ exp(-|y - anchor_k|^2 / tau).

    y: N x 2 (valence, arousal); anchors: K x 2, the (valence, arousal) of each class of the
    expression model (the same anchors the training labels were derived with). A target on an
    anchor asks mostly for that class; a target between anchors asks for a mixture."""
    d2 = (_f32(y)[:, None, :] - anchors.to(y.device, torch.float32)[None]).pow(2).sum(-1)
    return torch.softmax(-d2 / tau, dim=1)


def expression_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """StarGAN's classification loss for continuous labels, per sample: cross-entropy between
    the soft targets (N x K) and the frozen expression model's prediction on the edited face."""
    return -(targets * torch.log_softmax(_f32(logits), dim=1)).sum(1)


def expression_va_loss(logits: torch.Tensor, anchors: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: the squared distance between the target label ``y`` (N x 2) and the (valence,
    arousal) the expression model reads on the edited face, its class probabilities times the
    classes' anchors (K x 2): the labels' own derivation (``data.labels.expected_va``). Unlike the
    cross-entropy to the nearest anchors' classes, a target between or beyond the anchors asks for
    the mix of classes that comes closest to it (a pleasant, calm target: part neutral, part happy)."""
    va = torch.softmax(_f32(logits), dim=1) @ anchors.to(logits.device, torch.float32)
    return (va - _f32(y)).pow(2).sum(1)


def units_prior_loss(units: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: the mean squared difference between G's action-unit coefficients (N x U) and the
    mix of the classes' prototype coefficients (K x U, ``basis.EXPRESSION_UNITS``) that the soft
    class targets (N x K) ask for; ``weights`` (U) weighs each unit's term (None: all 1)."""
    want = _f32(targets) @ prototypes.to(targets.device, torch.float32)
    err = (_f32(units) - want).pow(2)
    return (err if weights is None else err * weights.to(err)).mean(1)


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference between neighbouring pixels (N x C x H x W)."""
    t = _f32(t)
    dx = (t[..., :, 1:] - t[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy
