"""Configuration: plain nested dataclasses with the paper's values as defaults.

`PRESETS` holds named configurations:

* ``paper``: ``Config()``, Lindt et al. 2019 (../shared/SPEC.md): 96x96, the CAAE widths, the
  paper's losses and weights, VGG-Face identity loss (conv1_2 ... conv5_2, each layer's mean
  absolute difference), batch 49 with L_iden on 16 images, Adam 2e-4 / 0.5 / 0.999, no flips.
  Where the paper is silent the authors' public code decides: no horizontal flips, classes
  oversampled to equal counts (``train.sampling="classes"``, their ``fill_up_equally``). Where the
  code differs from the paper's text, the text is the default and the code an option:
  ``model.d_img_label_every_block=false`` (label into D_img's first block only),
  ``loss.identity_norm=authors`` (each layer's mean divided by its H*W once more). Not an option:
  the authors' code taps VGG-Face's conv outputs before their ReLU; ``identity.VGGFace`` taps after it.
  VGG-Face's weights cannot be shipped: training asks for the file (``loss.identity_weights``),
  and ``--set loss.identity_backbone=dlib`` substitutes dlib's face-recognition ResNet.
* ``cpu``: the bundled model's trunk. Exactly what it changes from ``paper``: 64x64 images;
  widths E 32-64-128-256, G FC 256 then 128-64-32-32-16; identity loss from dlib's ResNet
  (bundled) instead of VGG-Face; random horizontal flips; plain shuffling instead of the
  authors' class oversampling; 6000 steps, checkpoints every 100, samples every 250. Losses,
  their weights, batch size, optimiser and D_img/D_z stay the paper's.
* ``warp``: the bundled model since 0.2, ``cpu`` plus the warp head and its losses (beyond the paper).
* ``tiny``: 32x32, narrow, for tests (dlib identity, flips, plain shuffling, like ``cpu``).

Overrides are strict: ``apply_overrides(cfg, ["train.lr=1e-4"])`` raises on an unknown key, so
a typo never silently adds one.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    image_size: int = 96                 # square input/output size, divisible by 16
    z_dim: int = 50                      # latent size, prior U[-1, 1]^z_dim
    label_repeat: int = 50               # each of valence/arousal repeated this often for G
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512)
    generator_fc_channels: int = 1024    # FC -> (size/16)^2 x this
    generator_channels: tuple[int, ...] = (512, 256, 128, 64, 32)  # 4 stride-2, then stride-1
    d_img_channels: tuple[int, ...] = (16, 32, 64, 128)
    d_img_fc: int = 1024
    d_img_label_repeat: int = 16         # tiled label channels per dimension in D_img
    d_img_label_every_block: bool = True # paper text: True; authors' public code: False (first block only)
    d_z_channels: tuple[int, ...] = (64, 32, 16)
    kernel_size: int = 5
    # Generator head: "pixels" = the paper's G (an RGB image); "warp" = G moves the input's own
    # pixels: a bounded dense flow (coarse at S/4 + fine at S), a soft mask A and a colour C, and
    # x_gen = A * C + (1 - A) * warp(x, flow) (see networks.WarpGenerator and affectedit.warp).
    head: str = "pixels"
    max_flow: float = 0.12               # warp head: bound on the flow, in units of half the crop side
    appearance: str = "free"             # warp head: "free" = mask A and colour C; "basis" = a change along fixed expression directions
    appearance_range: float = 1.5        # warp head, "basis" appearance: the largest multiple of a mean expression's appearance change
    motion: str = "free"                 # warp head: "free" = a coarse-to-fine flow; "basis" = a mix of the training faces' mean expression motions; "hybrid" = basis + free flow below the nose; "units" = a mix of action units' motions (basis.ACTION_UNITS)
    mouth: str = "closed"                # warp head with motion "units": "open" adds the opening mouth (jaw drop, its inside drawn; affectedit.mouth)
    appearance_mouth: bool = True        # mouth "open": False keeps the appearance basis off the mouth (mouth.appearance_keep), which the drawing alone carries
    gate_from: float = 0.0               # warp head: no edit while |y - y_src| is below this (then it fades in over networks.GATE)
    motion_peak: float = 0.0             # basis motion: each field's peak moves at most this share of the crop side (0 = each field x [-3, 3])


@dataclass
class LossConfig:
    rec: float = 1.0          # lambda for L_rec, eq. (1)
    identity: float = 1.0 / 3 # lambda for L_iden, eq. (2)
    z: float = 0.01           # lambda for L_z, eq. (3)
    img: float = 0.01         # lambda for L_img, eq. (4)
    identity_backbone: str = "vggface"  # the paper's VGG-Face (user-supplied file), or "dlib" (bundled weights)
    identity_weights: str = ""        # vggface: path of the converted state_dict (vgg_face_dag.pth); dlib: "" = bundled
    # "mean": each layer's mean |phi_l(x) - phi_l(x_gen)|, summed over layers (the paper's eq. 2 with
    # L1 as a mean); "authors": each mean divided by the layer's H*W once more (their public code)
    identity_norm: str = "mean"
    identity_images: int = 16         # the identity loss uses this many images of each batch
    # Warp head only (model.head="warp"); 0 switches a term off. The edited branch asks G for a
    # sampled target label y_t and is trained with the frozen FER-2013 expression model.
    expression: float = 0.0   # soft-label cross-entropy of the expression model on x(y_t) (StarGAN's L_cls, continuous)
    expression_va: float = 0.0  # added to that cross-entropy: this times the squared distance of the V/A it reads from y_t
    expression_warmup: int = 0  # steps over which the expression weight ramps up from 0 (GANimation: masks saturate otherwise)
    expression_tau: float = 0.08  # width of the soft label: p_k ~ exp(-|y_t - anchor_k|^2 / tau)
    mask: float = 0.0         # mean of the mask A (keeps the change small where it is not needed)
    change: float = 0.0       # mean |x(y_t) - warp(x)|: the new appearance the edit paints (its budget)
    mask_tv: float = 0.0      # total variation of A (smooth, connected masks)
    flow_tv: float = 0.0      # total variation of the flow (smooth motion)
    flow_size: float = 0.0    # mean |flow| (no motion that the loss does not ask for)
    target_identity: float = 0.0  # identity loss between x and its edit x(y_t)
    units_prior: float = 0.0  # model.motion="units": squared distance of the units from the EMFACS mix the target asks for (basis.EXPRESSION_UNITS)
    units_prior_tau: float = 0.03  # width of that mix's soft class weights (as expression_tau)
    units_prior_open: float = 1.0  # the weight of the lips' parting (the opening, mouth.PARTING's bared lips) in that distance (the other units: 1)
    units_prior_smile: float = 1.0  # the weight of the lip corner puller (AU 12) in that distance
    units_prior_calm: bool = False  # the prior also has relaxed (calm) and drowsy (tired) faces at those labels (basis.LOW_AROUSAL)
    label: float = 0.0        # warp head: squared error of E's read-out of the face's own label
    # Edited branch's targets: the share drawn near an expression anchor (the rest uniform on the
    # disc), and how much more often the negative anchors (anger, sadness, fear, disgust) are drawn
    target_anchors: float = 0.5
    rare_targets: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 49
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    adam_eps: float = 1e-8
    steps: int = 100_000
    seed: int = 0
    # "auto": bf16 where it is native and measured faster (a GPU with bf16; a CPU with avx512_bf16
    # or AMX, see runtime.pick_precision), else "no" (fp32); or "no", "bf16", "fp16" (Accelerate's names)
    mixed_precision: str = "auto"
    threads: int = 0                  # CPU torch threads: 0 = automatic (runtime.ThreadPolicy, re-checked every 50 steps)
    channels_last: bool = True        # NHWC memory format: about 2x faster convolutions on CPU (oneDNN)
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 10
    hflip: bool = False               # random horizontal flips (neither the paper nor the authors' code flips)
    # "classes": every expression class oversampled (with replacement) to the largest class's count,
    # then shuffled each epoch (the authors' fill_up_equally; the paper is silent); "shuffle": plain shuffling
    sampling: str = "classes"
    balance: float = 0.0              # our V/A-grid balancing (not in the paper or the authors' code): 0 = off, 0.5 = rare labels more often; needs sampling=shuffle
    init_from: str = ""               # warm start: E and G weights (all that fit) from a checkpoint or exported weights
    extra_data: str = ""              # a second face cache mixed into every batch (e.g. london-portraits train)
    extra_fraction: float = 0.0       # share of each batch drawn from extra_data


# Keys that configs stored by earlier versions may hold and that no longer mean anything.
RETIRED = {("train", "num_workers")}
# Keys that configs stored by earlier versions lack, with the value those versions used (the
# defaults changed when the paper preset became the paper: issue 14).
LEGACY = {
    ("loss", "identity_backbone"): "dlib",
    ("loss", "identity_norm"): "mean",
    ("train", "hflip"): True,
    ("train", "sampling"): "shuffle",
}
IDENTITY_NORMS = ("mean", "authors")
SAMPLINGS = ("shuffle", "classes")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        for (section, key), value in LEGACY.items():
            if key not in d.get(section, {key: None}):
                setattr(getattr(cfg, section), key, value)
        for section, values in d.items():
            sub = getattr(cfg, section, None)
            if sub is None or not dataclasses.is_dataclass(sub):
                raise KeyError(f"unknown config section {section!r}")
            for key, value in values.items():
                if (section, key) in RETIRED:
                    continue
                _set_field(sub, section, key, value)
        return cfg

    def validate(self) -> "Config":
        """Raise ValueError on a value no code path accepts; returns self."""
        if self.loss.identity_norm not in IDENTITY_NORMS:
            raise ValueError(f"loss.identity_norm must be one of {', '.join(IDENTITY_NORMS)}, got {self.loss.identity_norm!r}")
        if not 0.0 <= self.loss.target_anchors <= 1.0 or not self.loss.rare_targets > 0:
            raise ValueError("loss.target_anchors must lie in [0, 1] and loss.rare_targets be > 0")
        if self.loss.expression_va < 0:
            raise ValueError(f"loss.expression_va must be >= 0, got {self.loss.expression_va}")
        if self.train.sampling not in SAMPLINGS:
            raise ValueError(f"train.sampling must be one of {', '.join(SAMPLINGS)}, got {self.train.sampling!r}")
        if self.train.sampling == "classes" and self.train.balance > 0:
            raise ValueError("train.balance > 0 (V/A-grid balancing) needs train.sampling=shuffle; "
                             "train.sampling=classes already balances the expression classes")
        return self


def _set_field(obj: Any, section: str, key: str, value: Any) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    if key not in names:
        raise KeyError(f"unknown config key {section}.{key}; known: {', '.join(sorted(names))}")
    current = getattr(obj, key)
    if isinstance(current, tuple):
        value = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    elif isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{section}.{key} must be true or false, got {value!r}")
            value = value.lower() in ("true", "1", "yes")
        value = bool(value)
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        value = type(current)(float(value) if isinstance(current, float) else int(float(value)))
    elif isinstance(current, str):
        value = str(value)
    setattr(obj, key, value)


def paper() -> Config:
    """The paper's configuration (see the module docstring and ../shared/SPEC.md)."""
    return Config()


def _as_before_issue_14(cfg: Config) -> Config:
    """The choices the cpu, warp and tiny presets were trained and tested with: dlib identity loss
    (bundled), random horizontal flips, plain shuffling, the per-layer mean."""
    cfg.loss.identity_backbone = "dlib"
    cfg.loss.identity_norm = "mean"
    cfg.train.hflip = True
    cfg.train.sampling = "shuffle"
    return cfg


def cpu() -> Config:
    """The configuration of the bundled model: 64x64, narrower widths, trained on 2 shared CPU cores.

    96x96 did not fit the time we had (a step took ~3x longer than the 2-3 hours allowed for
    enough steps); edits are pasted back as a difference (see editor.py), so the lower
    resolution costs less than it would for a plain reconstruction."""
    cfg = _as_before_issue_14(Config())
    cfg.model.image_size = 64
    # About a fifteenth of the paper's E+G FLOPs: the generator's full-resolution stride-1 layer
    # dominates its cost, so it gets 16 channels. fp32: bf16 autocast measured slower here for
    # these transposed convolutions.
    cfg.model.encoder_channels = (32, 64, 128, 256)
    cfg.model.generator_fc_channels = 256
    cfg.model.generator_channels = (128, 64, 32, 32, 16)
    cfg.train.steps = 6000
    cfg.train.checkpoint_every = 100
    cfg.train.sample_every = 250
    return cfg


def tiny() -> Config:
    """A 32x32 narrow configuration for tests: a training step takes well under a second."""
    cfg = _as_before_issue_14(Config())
    cfg.model.image_size = 32
    cfg.model.z_dim = 50
    cfg.model.encoder_channels = (8, 16, 16, 32)
    cfg.model.generator_fc_channels = 32
    cfg.model.generator_channels = (32, 16, 16, 8, 8)
    cfg.model.d_img_channels = (4, 8, 8, 16)
    cfg.model.d_img_fc = 32
    cfg.model.d_z_channels = (16, 8, 8)
    cfg.train.batch_size = 8
    cfg.loss.identity_images = 4
    cfg.train.steps = 20
    cfg.train.checkpoint_every = 5
    cfg.train.sample_every = 10
    cfg.train.log_every = 1
    return cfg


def warp() -> Config:
    """The bundled model since 0.2: the cpu preset's networks with the warp head, trained against
    the frozen FER-2013 expression model (the paper's losses stay; see MODEL_CARD.md)."""
    cfg = cpu()
    cfg.model.head = "warp"
    cfg.model.max_flow = 0.1
    # New appearance along fixed expression directions of the training faces (a free mask and
    # colour learned to fool the frozen classifier with blobs; see MODEL_CARD.md)
    cfg.model.appearance = "basis"
    cfg.loss.rec = 5.0               # own label -> no change (reachable exactly: A = 0, flow = 0)
    cfg.loss.identity = 0.0           # the reconstruction branch only has to keep x; identity is asked of the edit
    cfg.loss.target_identity = 1.0
    cfg.loss.identity_images = 8
    cfg.loss.img = 0.5
    cfg.loss.expression = 1.0
    cfg.loss.expression_warmup = 100
    cfg.loss.label = 1.0
    cfg.loss.mask = 1.0
    cfg.loss.change = 0.3
    cfg.loss.mask_tv = 1.0
    cfg.loss.flow_tv = 3.0
    cfg.loss.flow_size = 0.5
    cfg.train.balance = 0.5
    cfg.train.lr = 1e-4
    cfg.train.steps = 2000
    return cfg


PRESETS = {"paper": paper, "cpu": cpu, "warp": warp, "tiny": tiny}


def get_config(name: str = "paper", overrides: list[str] | None = None) -> Config:
    """Build a preset and apply ``section.key=value`` overrides (unknown keys are errors)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides or []).validate()


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        path, value = item.split("=", 1)
        section, key = path.split(".", 1)
        sub = getattr(cfg, section, None)
        if sub is None or not dataclasses.is_dataclass(sub):
            raise KeyError(f"unknown config section {section!r} in {item!r}; known: model, loss, train")
        _set_field(sub, section, key, value)
    return cfg
