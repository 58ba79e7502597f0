"""The training loop of the conditional adversarial autoencoder, and its checkpoints.

One function, `train`, reads top to bottom: each step updates D_z and D_img on the current
encoder/generator outputs, then E and G on the paper's total loss (eq. 5). It runs on Hugging
Face Accelerate, so `accelerate launch --multi_gpu ...` (or several nodes) gives data-parallel
training and `train.mixed_precision=bf16|fp16` mixed precision without plumbing of our own.

Exactness across process counts: every rank reads the same GLOBAL batch and keeps its slice;
every random draw (prior samples) is made for the global batch from a generator seeded by
(seed, step); losses are per-sample sums divided by the global batch size; batch norm in the
discriminators is synchronised. A run with W processes therefore follows the one-process run,
and a resumed run follows the uninterrupted one (the data order is a function of the step).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectedit.config import Config
from affectedit.errors import UserError
from affectedit.io import atomic_path
from affectedit.losses import (
    d_img_loss,
    d_z_loss,
    e_z_loss,
    g_img_loss,
    identity_loss,
    reconstruction_loss,
    sample_prior,
)
from affectedit.networks import build_models

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"

# Labels of the progress grid's columns: (valence, arousal) and a short name.
SAMPLE_LABELS = [(0.9, 0.5, "happy"), (0.7, -0.6, "relaxed"), (-0.7, -0.5, "sad"), (-0.7, 0.7, "angry"), (0.1, 0.95, "surprised")]


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, models: dict, optimizers: dict, step: int, cfg: Config) -> None:
    """Write a self-describing checkpoint (models, optimisers, step, RNG states, config) atomically."""
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "config": cfg.to_dict(),
        "models": {k: m.state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": [int(v) for v in np.random.get_state()[1]],
            "numpy_pos": int(np.random.get_state()[2]),
            "python": _python_rng_state(),
        },
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (weights_only, no code is unpickled)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"checkpoint {path} not found; pass the file written by `affectedit train` (runs/NAME/checkpoint.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise UserError(f"checkpoint {path} is corrupt or not an affectedit checkpoint ({type(e).__name__}); retrain or restore it") from None
    if isinstance(state, dict) and state.get("kind") == "regressor":
        raise UserError(f"{path} is a valence/arousal regressor, not an editing model; pass a checkpoint written by `affectedit train`")
    if not isinstance(state, dict) or "config" not in state or "models" not in state:
        raise UserError(f"{path} is not an affectedit checkpoint (no config/models inside)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer affectedit (format {state['format_version']}); upgrade affectedit")
    return state


def models_from_checkpoint(state: dict, names=("encoder", "generator"), device: str | torch.device = "cpu") -> tuple[Config, dict]:
    """Rebuild networks from the config stored inside a checkpoint and load their weights."""
    try:
        cfg = Config.from_dict(state["config"])
        models = build_models(cfg.model)
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise UserError(f"the config stored in the checkpoint is not valid ({type(e).__name__}: {e}); retrain or restore it") from None
    out = {}
    for name in names:
        if name not in state["models"]:
            raise UserError(f"checkpoint holds no {name} weights")
        try:
            weights = {k: v.float() for k, v in state["models"][name].items()}
            models[name].load_state_dict(weights)
        except (RuntimeError, AttributeError, TypeError) as e:
            # load_state_dict's first line only names the module; the next names the first bad tensor.
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
            raise UserError(f"the {name} weights in the checkpoint do not fit the config stored with them ({detail[:200]}); "
                            "the file is damaged or from another configuration: retrain or restore it") from None
        out[name] = models[name].to(device).eval()
    return cfg, out


# ----------------------------------------------------------------------------- helpers


def requires_grad(model: torch.nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice [lo, hi) of a global batch of n for this rank (sizes differ by at most 1)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def _sample_grid(encoder, generator, x, y, device) -> torch.Tensor:
    """Rows: faces. Columns: input, reconstruction with its own label, then SAMPLE_LABELS. In [0, 1]."""
    with torch.no_grad():
        z = encoder(x.to(device))
        cols = [x.to(device), generator(z, y.to(device))]
        for v, a, _ in SAMPLE_LABELS:
            cols.append(generator(z, torch.tensor([[v, a]], device=device).expand(len(x), 2)))
    grid = torch.stack(cols, 1).float()  # N x C x 3 x S x S
    n, c, _, s, _ = grid.shape
    grid = grid.permute(0, 3, 1, 4, 2).reshape(n * s, c * s, 3)
    return ((grid + 1) / 2).clamp(0, 1).cpu()


def _save_png(img01: torch.Tensor, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((img01.numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    identity_net: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Train E, G, D_z and D_img on a prepared face cache (see `affectedit prepare`).

    Writes `out_dir/config.json`, `out_dir/checkpoint.pt` (every train.checkpoint_every steps
    and at the end), TensorBoard scalars and sample grids (`out_dir/samples/step_N.png`).
    `stop_at` ends the run early at that step (a checkpoint is written) as if interrupted.
    Returns the last logged losses.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    from affectedit.data.cache import FaceCache, batches
    from affectedit.identity import build_identity_net

    out_dir = Path(out_dir)
    from accelerate.state import AcceleratorState

    tc, mc, lc = cfg.train, cfg.model, cfg.loss
    # Accelerate keeps one global state per process; forget the previous run's precision so that
    # several runs can happen in one process (tests, benchmarks). The process group is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    ckpt_path = out_dir / CHECKPOINT_NAME

    cache = FaceCache(data)
    if not np.isfinite(cache.labels).all():
        raise UserError(f"cache {data} has faces without valence/arousal labels (e.g. CelebA); train on a labelled cache")
    if cache.size != mc.image_size:
        raise UserError(f"cache {data} holds {cache.size}x{cache.size} faces but model.image_size is {mc.image_size}; "
                        f"prepare the data with --size {mc.image_size} or pick another config")

    # Build, or restore, the networks and their optimisers.
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    models = build_models(mc)
    optimizers = {
        "eg": torch.optim.Adam(list(models["encoder"].parameters()) + list(models["generator"].parameters()), tc.lr, (tc.beta1, tc.beta2), eps=tc.adam_eps),
        "d_z": torch.optim.Adam(models["d_z"].parameters(), tc.lr, (tc.beta1, tc.beta2), eps=tc.adam_eps),
        "d_img": torch.optim.Adam(models["d_img"].parameters(), tc.lr, (tc.beta1, tc.beta2), eps=tc.adam_eps),
    }
    start = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = Config.from_dict(state["config"])
        if saved.model != mc:
            raise UserError(f"{ckpt_path} was trained with another model config; use a new --out folder or the same config")
        for k, m in models.items():
            m.load_state_dict(state["models"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
            for group in o.param_groups:  # the config's lr, not the saved one: "resume with a lower train.lr" must work
                group["lr"], group["betas"] = tc.lr, (tc.beta1, tc.beta2)
        start = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(("MT19937", np.array(state["rng"]["numpy"], dtype=np.uint32), state["rng"]["numpy_pos"]))
        v, internal, gauss = state["rng"]["python"]
        random.setstate((v, tuple(internal), gauss))
    elif ckpt_path.exists() and not resume:
        raise UserError(f"{ckpt_path} exists; pass --resume to continue that run, or choose another --out folder")

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp*"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
        with atomic_path(out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    if identity_net is None and lc.identity > 0:
        identity_net = build_identity_net(lc.identity_backbone, lc.identity_weights)
    if identity_net is not None:
        identity_net = identity_net.to(device).eval()
        requires_grad(identity_net, False)

    if tc.channels_last:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
    encoder, generator, d_z, d_img, opt_eg, opt_dz, opt_dimg = accelerator.prepare(
        models["encoder"], models["generator"], models["d_z"], models["d_img"],
        optimizers["eg"], optimizers["d_z"], optimizers["d_img"],
    )

    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
    sample_x, sample_y = cache.fixed_batch(8) if hasattr(cache, "fixed_batch") else next(batches(cache, 8, seed=12345, hflip=False))

    B, k_id = tc.batch_size, min(lc.identity_images, tc.batch_size)
    lo, hi = _shard(B, rank, world)
    id_hi = max(min(hi, k_id) - lo, 0)  # this rank's share of the first k_id images of the global batch
    stream = batches(cache, B, seed=tc.seed, hflip=tc.hflip, start_step=start, balance=tc.balance)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    logs: dict[str, float] = {}
    last_saved = start
    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        nonlocal last_saved
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = {"encoder": encoder, "generator": generator, "d_z": d_z, "d_img": d_img}
            unwrapped = {k: accelerator.unwrap_model(m) for k, m in unwrapped.items()}
            for k, m in unwrapped.items():  # never replace the last good checkpoint by a diverged one
                if not all(torch.isfinite(t).all() for t in m.state_dict().values() if t.is_floating_point()):
                    raise TrainingDiverged(
                        f"the {k} weights became NaN or infinite by step {step}; the last good checkpoint (step {last_saved}) "
                        f"is kept in {out_dir}. Resume with a lower train.lr or train.mixed_precision=no")
            save_checkpoint(ckpt_path, unwrapped, {"eg": opt_eg.optimizer, "d_z": opt_dz.optimizer, "d_img": opt_dimg.optimizer}, step, cfg)
        last_saved = step

    for step in range(start, end):
        x_all, y_all = next(stream)
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        z_prior = sample_prior(B, mc.z_dim, gen)[lo:hi].to(device)
        x, y = x_all[lo:hi].to(device), y_all[lo:hi].to(device)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        requires_grad(d_z, True)
        requires_grad(d_img, True)

        with accelerator.autocast():
            z = encoder(x)
            x_gen = generator(z, y)

            # Update D_z and D_img (eq. 3 and 4, discriminator side) on detached E/G outputs.
            loss_dz = d_z_loss(d_z(z_prior), d_z(z.detach())).sum() * world / B
            loss_dimg = d_img_loss(d_img(x, y), d_img(x_gen.detach(), y)).sum() * world / B
        opt_dz.zero_grad(set_to_none=True)
        opt_dimg.zero_grad(set_to_none=True)
        accelerator.backward(loss_dz + loss_dimg)
        opt_dz.step()
        opt_dimg.step()

        # Update E and G on L_total (eq. 5) against the updated, frozen discriminators.
        requires_grad(d_z, False)
        requires_grad(d_img, False)
        with accelerator.autocast():
            loss_rec = reconstruction_loss(x, x_gen).sum() * world / B
            loss_ez = e_z_loss(d_z(z)).sum() * world / B
            loss_gimg = g_img_loss(d_img(x_gen, y)).sum() * world / B
            if identity_net is not None and id_hi > 0:
                feats_real = identity_net.features(x[:id_hi])
                feats_gen = identity_net.features(x_gen[:id_hi])
                loss_id = identity_loss(feats_real, feats_gen).sum() * world / k_id
            else:
                loss_id = x_gen.new_zeros((), dtype=torch.float32)
            loss_eg = lc.rec * loss_rec + lc.identity * loss_id + lc.z * loss_ez + lc.img * loss_gimg
        opt_eg.zero_grad(set_to_none=True)
        accelerator.backward(loss_eg)

        values = torch.stack([loss_rec, loss_id, loss_ez, loss_gimg, loss_dz, loss_dimg, loss_eg]).detach().float()
        if not torch.isfinite(values).all():
            raise TrainingDiverged(
                f"a loss became NaN or infinite at step {step}; the last good checkpoint (step {last_saved}) is kept in {out_dir}. "
                "Resume with a lower train.lr or train.mixed_precision=no"
            )
        opt_eg.step()
        done = step + 1

        # Logging, samples, checkpoints.
        if done % tc.log_every == 0 or done == end:
            names = ["rec", "identity", "e_z", "g_img", "d_z", "d_img", "total_eg"]
            # Each rank holds its share times W, so the mean over ranks is the global loss.
            reduced = accelerator.reduce(values, reduction="mean") if world > 1 else values
            logs = {n: float(v) for n, v in zip(names, reduced.cpu())}
            logs["sec_per_step"] = (time.perf_counter() - t0) / max(done - start, 1)
            if writer is not None:
                for n, v in logs.items():
                    writer.add_scalar(f"loss/{n}" if n != "sec_per_step" else "perf/sec_per_step", v, done)
            bar.set_postfix(rec=f"{logs['rec']:.3f}", id=f"{logs['identity']:.3f}", d_img=f"{logs['d_img']:.2f}", refresh=False)
        if writer is not None and (done % tc.sample_every == 0 or done == end):
            grid = _sample_grid(accelerator.unwrap_model(encoder).eval(), accelerator.unwrap_model(generator).eval(), sample_x, sample_y, device)
            encoder.train()
            generator.train()
            writer.add_image("samples", grid, done, dataformats="HWC")
            (out_dir / "samples").mkdir(exist_ok=True)
            _save_png(grid, out_dir / "samples" / f"step_{done:07d}.png")
        if done % tc.checkpoint_every == 0 or done == end:
            checkpoint(done)
        bar.update(1)

    bar.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return logs


def seconds_per_step(cfg: Config, data, steps: int = 3, identity: bool = True) -> float:
    """Time one training step (after one warm-up step) without writing anything important."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        c = Config.from_dict(cfg.to_dict())
        c.train.steps = steps + 1
        c.train.checkpoint_every = c.train.sample_every = 10**9
        c.train.log_every = 1
        if not identity:
            c.loss.identity = 0.0
        logs = train(c, data, d, progress=False)
    return logs.get("sec_per_step", math.nan)
