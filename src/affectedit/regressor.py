"""The valence and arousal regressors of the paper's Table II, used to score edited faces
(Table III on real validation faces, Table IV on generated ones).

One network per dimension, as in the paper: VGG-like, input S x S x 3 (S = 96 in the paper)
in [-1, 1], output one value in [-1, 1] (tanh). Trained with SGD (lr 0.001, momentum 0.9) on
the mean absolute error. ``width`` scales every conv and hidden FC layer (1.0 = the paper's
64 ... 512 channels and 4096/2622/2622 units) so that the networks train on a CPU and in tests.

Checkpoint format (``torch.load(path, weights_only=True)``): a dict with ``format`` (int),
``kind`` ("regressor"), ``config`` ({width, image_size, dimension}), ``state_dict``,
``optimizer`` (SGD state, for resuming), ``step`` and ``val_metrics`` ({rmse, sagr, ccc} or {}).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectedit import metrics
from affectedit.checkpoint import read_torch, write_torch
from affectedit.errors import UserError

FORMAT_VERSION = 1
DIMENSIONS = ("valence", "arousal")  # column order of the caches' labels (N x 2)

# Table III: the paper's regressors on 4500 held-out AffectNet images.
PAPER_TABLE_III = {
    "valence": {"rmse": 0.450, "sagr": 0.676, "ccc": 0.484},
    "arousal": {"rmse": 0.411, "sagr": 0.708, "ccc": 0.405},
}

# Table II at width 1.0.
CONV_CHANNELS = ((64,), (128,), (256, 256), (512, 512))  # one tuple per block, each ends in max-pool 2
FC_UNITS = (4096, 2622, 2622)                            # each followed by ReLU and dropout 0.5
DROPOUT = 0.5


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scaled(units: int, width: float) -> int:
    return max(1, int(round(units * width)))


class Regressor(nn.Module):
    """Table II: 4 conv blocks (3x3 'same' convs + ReLU, max-pool 2), 3 FC + ReLU + dropout, FC 1, tanh.

    ``forward`` takes N x 3 x S x S images in [-1, 1] (S = ``image_size``) and returns N values in
    [-1, 1] for ``dimension`` ("valence" or "arousal").
    """

    def __init__(self, dimension: str = "valence", width: float = 1.0, image_size: int = 96):
        super().__init__()
        if dimension not in DIMENSIONS:
            raise ValueError(f"dimension must be one of {DIMENSIONS}, got {dimension!r}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        if image_size < 16 or image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 (four 2x2 poolings), got {image_size}")
        self.config = {"width": float(width), "image_size": int(image_size), "dimension": dimension}

        layers: list[nn.Module] = []
        channels = 3
        for block in CONV_CHANNELS:
            for out in block:
                layers += [nn.Conv2d(channels, _scaled(out, width), 3, padding=1), nn.ReLU(inplace=True)]
                channels = _scaled(out, width)
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = [nn.Flatten()]
        units = channels * (image_size // 16) ** 2
        for out in FC_UNITS:
            head += [nn.Linear(units, _scaled(out, width)), nn.ReLU(inplace=True), nn.Dropout(DROPOUT)]
            units = _scaled(out, width)
        head += [nn.Linear(units, 1), nn.Tanh()]
        self.head = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper does not say. A plain VGG (no batch norm) barely moves from PyTorch's default
        # init at lr 0.001, so He init for the ReLU layers (as torchvision's VGG) and a small last
        # layer, which starts the tanh near 0, the middle of the label range.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        last = self.head[-2]
        nn.init.normal_(last.weight, std=0.01)

    @property
    def dimension(self) -> str:
        return self.config["dimension"]

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).squeeze(1)


# ---------------------------------------------------------------------------------------------
# Training.

def make_optimizer(regressor: Regressor, lr: float = 1e-3, momentum: float = 0.9) -> torch.optim.SGD:
    """The paper's optimiser: SGD, learning rate 0.001, momentum 0.9."""
    return torch.optim.SGD(regressor.parameters(), lr=lr, momentum=momentum)


def train_step(regressor: Regressor, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor) -> float:
    """One SGD step on the mean absolute error. images: N x 3 x S x S in [-1, 1]; targets: N in [-1, 1].

    Returns the batch's MAE before the step.
    """
    regressor.train()
    loss = F.l1_loss(regressor(images), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _open_cache(cache):
    """A FaceCache from a folder path; anything else is taken to be a FaceCache already."""
    if isinstance(cache, (str, os.PathLike)):
        if not Path(cache).is_dir():
            raise UserError(f"cache folder {cache} does not exist; make one with `affectedit prepare`")
        from affectedit.data.cache import FaceCache

        return FaceCache(cache)
    return cache


def _cache_image_size(cache) -> int:
    image, _ = cache[0]
    return int(image.shape[-1])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def train_regressor(cache_train, cache_val, dimension: str, steps: int, batch_size: int = 32,
                    width: float = 1.0, out_path: str | os.PathLike = "regressor.pt", *,
                    image_size: int | None = None, lr: float = 1e-3, momentum: float = 0.9,
                    seed: int = 0, hflip: bool = True, checkpoint_every: int = 1000,
                    eval_every: int = 0, resume: bool = False, device: torch.device | str | None = None,
                    progress: bool = True) -> dict:
    """Train one regressor (``dimension`` "valence" or "arousal") for ``steps`` SGD steps.

    ``cache_train``/``cache_val``: cache folders (or FaceCache objects) whose labels are N x 2
    [valence, arousal]. ``image_size``: the network's input size; default the cache's own. The
    checkpoint is written to ``out_path`` every ``checkpoint_every`` steps and at the end, with
    the validation metrics of the final weights (``cache_val`` may be None to skip them).
    ``resume=True`` continues from the step stored in an existing ``out_path``.
    Returns {"step", "loss" (mean MAE of the last up to 100 steps), "val_metrics"}.
    """
    from affectedit.data.cache import batches

    if dimension not in DIMENSIONS:
        raise UserError(f"--dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    if steps < 0 or batch_size < 1:
        raise UserError(f"steps must be >= 0 and batch size >= 1, got {steps} and {batch_size}")
    device = torch.device(device) if device is not None else default_device()
    train_data = _open_cache(cache_train)
    val_data = _open_cache(cache_val) if cache_val is not None else None
    column = DIMENSIONS.index(dimension)

    torch.manual_seed(seed)
    start_step = 0
    optimizer_state = None
    if resume and Path(out_path).exists():
        checkpoint = _read_checkpoint(out_path)
        regressor = _regressor_from_checkpoint(checkpoint, out_path)
        if regressor.dimension != dimension:
            raise UserError(f"{out_path} holds a {regressor.dimension} regressor, not {dimension}")
        start_step = int(checkpoint["step"])
        optimizer_state = checkpoint.get("optimizer")
    else:
        regressor = Regressor(dimension, width, image_size or _cache_image_size(train_data))
    regressor.to(device)
    optimizer = make_optimizer(regressor, lr, momentum)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)

    from tqdm.auto import tqdm

    losses: list[float] = []
    val_metrics: dict = {}
    data = batches(train_data, batch_size, seed, hflip=hflip, start_step=start_step)
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc=f"regressor {dimension}",
               disable=not progress, dynamic_ncols=True)
    step = start_step
    for step in bar:
        images, labels = next(data)
        images = _resize(torch.as_tensor(images, dtype=torch.float32).to(device), regressor.image_size)
        targets = torch.as_tensor(labels, dtype=torch.float32)[:, column].to(device)
        losses = (losses + [train_step(regressor, optimizer, images, targets)])[-100:]
        bar.set_postfix(mae=f"{np.mean(losses):.4f}")
        done = step + 1
        if eval_every and val_data is not None and done % eval_every == 0 and done < steps:
            scores = evaluate_regressor(regressor, val_data)
            bar.write(f"step {done}: val RMSE {scores['rmse']:.3f}  SAGR {scores['sagr']:.3f}  CCC {scores['ccc']:.3f}")
        if checkpoint_every and done % checkpoint_every == 0 and done < steps:
            save_regressor(regressor, out_path, step=done, optimizer=optimizer)
    bar.close()
    if val_data is not None:
        val_metrics = evaluate_regressor(regressor, val_data)
    save_regressor(regressor, out_path, step=max(steps, start_step), optimizer=optimizer, val_metrics=val_metrics)
    return {"step": max(steps, start_step), "loss": float(np.mean(losses)) if losses else float("nan"),
            "val_metrics": val_metrics}


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def save_regressor(regressor: Regressor, path: str | os.PathLike, step: int = 0,
                   optimizer: torch.optim.Optimizer | None = None, val_metrics: dict | None = None) -> None:
    """Write a self-describing checkpoint atomically (temporary file, then rename)."""
    module = getattr(regressor, "_orig_mod", regressor)  # unwrap torch.compile
    checkpoint = {
        "format": FORMAT_VERSION,
        "kind": "regressor",
        "config": dict(module.config),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "step": int(step),
        "val_metrics": {k: float(v) for k, v in (val_metrics or {}).items()},
    }
    write_torch(path, checkpoint)


def _read_checkpoint(path) -> dict:
    path = Path(path)
    checkpoint = read_torch(path, f"regressor checkpoint {path} not found; train one with `affectedit regressor train`",
                            f"{path} is not a readable regressor checkpoint ({{error}}); retrain it or pass another file")
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != "regressor":
        raise UserError(f"{path} is not a regressor checkpoint (made by `affectedit regressor train`)")
    if checkpoint.get("format") != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {checkpoint.get('format')}, this version reads "
                        f"{FORMAT_VERSION}; retrain the regressor")
    return checkpoint


def _regressor_from_checkpoint(checkpoint: dict, path) -> Regressor:
    try:
        config = checkpoint["config"]
        regressor = Regressor(config["dimension"], config["width"], config["image_size"])
        regressor.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is a damaged regressor checkpoint ({type(e).__name__}: {e}); retrain it") from None
    return regressor


def load_regressor(path: str | os.PathLike, device: torch.device | str | None = None) -> Regressor:
    """The regressor stored at ``path``, in eval mode, on ``device`` (default CUDA if available).

    Raises UserError for a missing, unreadable or foreign file.
    """
    checkpoint = _read_checkpoint(path)
    regressor = _regressor_from_checkpoint(checkpoint, path)
    regressor.step = int(checkpoint.get("step", 0))
    regressor.val_metrics = dict(checkpoint.get("val_metrics", {}))
    return regressor.to(device if device is not None else default_device()).eval()


# ---------------------------------------------------------------------------------------------
# Inference and Table III.

@torch.no_grad()
def predict(regressor: Regressor, images, batch_size: int = 64) -> np.ndarray:
    """Predicted valence or arousal (N floats in [-1, 1]) for N x 3 x S x S images in [-1, 1].

    ``images``: numpy array or tensor; resized (bilinear, antialiased) when S differs from the
    regressor's input size. Runs in eval mode (no dropout) on the regressor's device.
    """
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be N x 3 x S x S, got shape {tuple(images.shape)}")
    device = next(regressor.parameters()).device
    was_training = regressor.training
    regressor.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size].to(device=device, dtype=torch.float32)
        outputs.append(regressor(_resize(chunk, regressor.image_size)).cpu())
    regressor.train(was_training)
    if not outputs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(outputs).numpy().astype(np.float32)


def predict_cache(regressor: Regressor, cache, batch_size: int = 64,
                  max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels of the regressor's dimension) for a cache folder or FaceCache."""
    data = _open_cache(cache)
    if max_images is not None:
        data = torch.utils.data.Subset(data, range(min(max_images, len(data))))
    column = DIMENSIONS.index(regressor.dimension)
    predictions, labels = [], []
    for images, label in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False):
        predictions.append(predict(regressor, images, batch_size))
        labels.append(np.asarray(label, dtype=np.float32)[:, column])
    if not predictions:
        raise UserError("the evaluation cache holds no images")
    return np.concatenate(predictions), np.concatenate(labels)


def evaluate_regressor(regressor: Regressor, cache, batch_size: int = 64,
                       max_images: int | None = None) -> dict[str, float]:
    """Table III for one regressor: {"rmse", "sagr", "ccc"} of its predictions against the labels
    of a validation cache (folder or FaceCache)."""
    predictions, labels = predict_cache(regressor, cache, batch_size, max_images)
    return {
        "rmse": metrics.rmse(predictions, labels),
        "sagr": metrics.sagr(predictions, labels),
        "ccc": metrics.ccc(predictions, labels),
    }
