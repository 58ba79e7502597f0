"""The training loop of the conditional adversarial autoencoder.

One function, `train`, reads top to bottom: each step updates D_z and D_img on the current
encoder/generator outputs, then E and G on the paper's total loss (eq. 5). It runs on Hugging
Face Accelerate, so `accelerate launch --multi_gpu ...` (or several nodes) gives data-parallel
training and `train.mixed_precision=bf16|fp16` mixed precision (fp16's loss scale is updated once per
step, after all three optimisers: see `step_optimizers`).

Exactness across process counts: every rank reads the same GLOBAL batch and keeps its slice;
every random draw (prior samples) is made for the global batch from a generator seeded by
(seed, step); losses are per-sample sums divided by the global batch size; batch norm in the
discriminators is synchronised. A run with W processes therefore follows the one-process run,
and a resumed run follows the uninterrupted one (the data order is a function of the step).

With the warp head (``model.head="warp"``, preset ``warp``) each step has two branches through the
same G: the reconstruction branch (the face's own label; L_rec, so that asking a face for its own
expression changes nothing) and the edited branch (a sampled target y_t, see ``sample_targets``),
which D_img judges against real (face, label) pairs and which carries the identity loss and the
expression loss of the frozen FER-2013 model (``affectedit.expression``), seen through random
small shifts and blur (``_jitter``), plus the mask, change and flow regularisers (losses.py).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from affectedit.basis import action_unit_basis, appearance_basis, motion_basis, rest_landmarks
from affectedit.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, warm_start
from affectedit.config import Config
from affectedit.data.labels import CIRCUMPLEX
from affectedit.errors import UserError
from affectedit.io import atomic_path
from affectedit.losses import (
    d_img_loss,
    d_z_loss,
    e_z_loss,
    expression_loss,
    expression_va_loss,
    g_img_loss,
    identity_loss,
    reconstruction_loss,
    sample_prior,
    soft_expression_targets,
    total_variation,
    units_prior_loss,
)
from affectedit.networks import build_models, compose, warp_image

# Labels of the progress grid's columns: (valence, arousal) and a short name.
SAMPLE_LABELS = [(0.9, 0.5, "happy"), (0.7, -0.6, "relaxed"), (-0.7, -0.5, "sad"), (-0.7, 0.7, "angry"), (0.1, 0.95, "surprised")]


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def _kept(ckpt_path: Path, last_saved: int, out_dir) -> str:
    """What a stop leaves behind (the last good checkpoint, or that none was written yet) and what to do."""
    if ckpt_path.is_file():
        return (f"the last good checkpoint (step {last_saved}) is kept in {out_dir}. "
                "Resume with a lower train.lr or train.mixed_precision=no")
    return (f"no checkpoint was saved yet, so none is kept in {out_dir}. "
            "Start again with a lower train.lr or train.mixed_precision=no")


# ----------------------------------------------------------------------------- helpers


def requires_grad(model: torch.nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice [lo, hi) of a global batch of n for this rank (sizes differ by at most 1)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def generate(generator, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x_gen for either head: G(z, y) (the paper's pixels) or compose(x, G(z, y)) (warp head)."""
    out = generator(z, y)
    return out if torch.is_tensor(out) else compose(x, out)


# Targets for the edited branch of the warp head: the anchors of the expression model's classes
# (the labels' own anchors, affectedit.data.labels.CIRCUMPLEX) and a calm point, drawn with jitter,
# half of the time; otherwise uniform on the unit disc (continuous dials).
TARGET_ANCHORS = [CIRCUMPLEX[c] for c in ("neutral", "happiness", "surprise", "anger", "sadness", "fear", "disgust")] \
    + [(0.75, -0.65)]  # calm


RARE_ANCHORS = (3, 4, 5, 6)  # anger, sadness, fear, disgust in TARGET_ANCHORS


def sample_targets(n: int, generator: torch.Generator, anchor_share: float = 0.5, rare: float = 1.0) -> torch.Tensor:
    """n target labels (valence, arousal) for the edited branch: with probability ``anchor_share``
    one of TARGET_ANCHORS with jitter (the negative ones ``rare`` times as likely as each other
    one), otherwise uniform on the unit disc. The defaults draw exactly as 0.2 did."""
    anchors = torch.tensor(TARGET_ANCHORS)
    if rare == 1.0:
        pick = anchors[torch.randint(len(anchors), (n,), generator=generator)]
    else:
        weights = torch.tensor([rare if i in RARE_ANCHORS else 1.0 for i in range(len(anchors))])
        pick = anchors[torch.multinomial(weights, n, replacement=True, generator=generator)]
    pick = pick + 0.08 * torch.randn(n, 2, generator=generator)
    r = torch.rand(n, generator=generator).sqrt()
    t = torch.rand(n, generator=generator) * (2 * math.pi)
    disc = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    use_anchor = torch.rand(n, generator=generator) < anchor_share
    return torch.where(use_anchor[:, None], pick, disc).clamp(-1, 1)


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random small shift, scale and rotation of each crop (+-4% / 5% / 4 degrees), so that the
    edit must read as the expression wherever the classifier looks, not as a pixel pattern it
    happens to respond to (expectation over transformations)."""
    n = len(x)
    r = (torch.rand(n, 4, generator=generator) * 2 - 1).to(x.device, torch.float32)
    scale, angle = 1 + 0.05 * r[:, 0], r[:, 1] * (4 * math.pi / 180)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, :, 2] = 0.08 * r[:, 2:]
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid.to(x.dtype), padding_mode="border", align_corners=False)
    # then the classifier sees a low-pass copy (half resolution, and a random extra blur): a
    # pattern that only works at full resolution is not an expression
    size = x.shape[-2:]
    x = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), size=size, mode="bilinear", align_corners=False)
    b = r[:, 3:4, None, None].abs().to(x.dtype)
    return (1 - b) * x + b * torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def step_optimizers(accelerator, *optimizers) -> None:
    """Step Accelerate-prepared optimisers; with an fp16 loss scaler, without updating the scale.

    Accelerate's ``AcceleratedOptimizer.step`` updates the shared scaler after each optimiser: when
    D_z's gradient overflowed, the scale was halved before D_img's step, whose gradient (made with
    the old scale) then came out twice too large. Here each optimiser is unscaled with the scale its
    gradients were made with (an optimiser whose gradients hold inf/NaN skips its step) and the
    caller updates the scale once, after the last optimiser of the training step. Without a scaler
    (fp32, bf16) this is ``opt.step()``."""
    scaler = accelerator.scaler
    for opt in optimizers:
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt.optimizer)


def _sample_grid(encoder, generator, x, y, device) -> torch.Tensor:
    """Rows: faces. Columns: input, reconstruction with its own label, then SAMPLE_LABELS. In [0, 1]."""
    with torch.no_grad():
        x = x.to(device)
        z = encoder(x)
        cols = [x, generate(generator, z, y.to(device), x)]
        for v, a, _ in SAMPLE_LABELS:
            cols.append(generate(generator, z, torch.tensor([[v, a]], device=device).expand(len(x), 2), x))
    grid = torch.stack(cols, 1).float()  # N x C x 3 x S x S
    n, c, _, s, _ = grid.shape
    grid = grid.permute(0, 3, 1, 4, 2).reshape(n * s, c * s, 3)
    return ((grid + 1) / 2).clamp(0, 1).cpu()


def _save_png(img01: torch.Tensor, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((img01.numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- the loop


def _resumed_precision(state: dict | None, device: torch.device) -> str | None:
    """The mixed precision a resumed run (its checkpoint ``state``) trained in, where ``device`` runs
    it natively; None for a new run, a checkpoint that does not say, or a device that would only
    emulate it (the caller then chooses afresh)."""
    from affectedit.runtime import bf16_is_native

    saved = (state or {}).get("precision")
    if saved == "no" or (saved == "bf16" and bf16_is_native(device)) or (saved == "fp16" and device.type == "cuda"):
        return saved
    return None


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
    from affectedit.data.sampling import resample
    from affectedit.identity import build_identity_net

    out_dir = Path(out_dir)
    from accelerate.state import AcceleratorState

    tc, mc, lc = cfg.train, cfg.model, cfg.loss
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    # Accelerate keeps one global state per process; forget the previous run's precision so that
    # several runs can happen in one process (tests, benchmarks). The process group is kept.
    AcceleratorState._reset_state()
    from affectedit.runtime import ThreadPolicy, deferred_interrupt, pick_device, pick_precision

    ckpt_path = out_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    precision = tc.mixed_precision
    if precision == "auto":
        # a resumed run keeps the precision it started in (a timing taken on a busy machine may
        # choose otherwise, and the run would no longer end where an uninterrupted one does) as
        # long as this machine runs it natively; else the same choice as inference: bf16 only
        # where it is native and faster
        auto_device = pick_device(None)
        precision = _resumed_precision(state, auto_device)
        if precision is None:
            precision = "bf16" if pick_precision("auto", auto_device) == "bf16" else "no"
    policy = ThreadPolicy()
    ceiling = torch.get_num_threads()
    accelerator = Accelerator(
        mixed_precision=precision,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device

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
    warp = mc.head == "warp"
    if tc.init_from and not (resume and ckpt_path.exists()):
        copied = warm_start(models, tc.init_from)
        if accelerator.is_main_process:
            print(f"warm start from {tc.init_from}: {len(copied)} E/G tensors copied")
    if warp and not (resume and ckpt_path.exists()):
        # The fixed bases, measured on the training data; a warm start from a model with the same
        # bases (copied above, non-zero) keeps the appearance and "basis" motions (the landmark pass
        # takes minutes). The action units' fields are always drawn again from the units as the code
        # defines them (basis.ACTION_UNITS, mouth.MOUTH_OPEN; seconds): a warm start from weights
        # whose units moved otherwise would train G on movements the photo path no longer makes.
        caches = [data, *([tc.extra_data] if tc.extra_data else [])]
        g = models["generator"]
        if mc.appearance == "basis" and not g.basis.any():
            g.basis.copy_(appearance_basis(caches))
        if mc.motion == "units":
            rest = rest_landmarks(caches)
            g.motion_basis.copy_(action_unit_basis(caches, mouth=mc.mouth == "open", rest=rest))
            if mc.mouth == "open":  # unit crop coordinates
                g.rest_landmarks.copy_(torch.from_numpy((rest + 0.5) / mc.image_size).float())
        elif mc.motion in ("basis", "hybrid") and not g.motion_basis.any():
            if accelerator.is_main_process:
                print("motion basis: dlib's 68 landmarks on the training faces (a few minutes) ...")
            g.motion_basis.copy_(motion_basis(caches))
    if state is not None:
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
        state = None  # restored: the paper preset's optimiser states are hundreds of MB
    elif ckpt_path.exists() and not resume:
        raise UserError(f"{ckpt_path} exists; pass --resume to continue that run, or choose another --out folder")

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp*"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
        with atomic_path(out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    if identity_net is None and (lc.identity > 0 or (warp and lc.target_identity > 0)):
        identity_net = build_identity_net(lc.identity_backbone, lc.identity_weights)
    if identity_net is not None:
        identity_net = identity_net.to(device).eval()
        requires_grad(identity_net, False)
    prototypes = fer_anchors = unit_weights = None
    if warp and lc.units_prior > 0:
        if mc.motion != "units" or mc.mouth != "open":
            raise UserError("loss.units_prior needs model.motion=units and model.mouth=open (G's action-unit coefficients)")
        from affectedit.basis import ACTION_UNITS, prior_prototypes

        prototypes, fer_anchors = (t.to(device) for t in prior_prototypes(lc.units_prior_calm))
        unit_weights = torch.ones(prototypes.shape[1], device=device)
        from affectedit.mouth import PARTING_INDEX

        unit_weights[[*PARTING_INDEX, -1]] = lc.units_prior_open  # the lips' parting: the bared lips and the opening
        unit_weights[list(ACTION_UNITS).index("lip_corner_pull")] = lc.units_prior_smile
    expression_net = None
    if warp and lc.expression > 0:
        from affectedit.expression import ExpressionModel

        expression_net = ExpressionModel.from_fer_package().to(device).eval()
        requires_grad(expression_net, False)

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
    sample_x, sample_y = next(batches(cache, 8, seed=12345, hflip=False))

    B, k_id = tc.batch_size, min(lc.identity_images, tc.batch_size)
    lo, hi = _shard(B, rank, world)
    id_hi = max(min(hi, k_id) - lo, 0)  # this rank's share of the first k_id images of the global batch
    n_extra = int(round(B * tc.extra_fraction)) if tc.extra_data else 0
    # train.sampling=classes: epochs over the authors' class-balanced list (data/sampling.py)
    stream = batches(resample(cache, tc.sampling, tc.seed), B - n_extra, seed=tc.seed, hflip=tc.hflip, start_step=start,
                     balance=tc.balance)
    if n_extra:
        extra = FaceCache(tc.extra_data)
        if extra.size != mc.image_size:
            raise UserError(f"train.extra_data {tc.extra_data} holds {extra.size}px faces, not {mc.image_size}")
        extra_stream = batches(extra, n_extra, seed=tc.seed + 1, hflip=tc.hflip, start_step=start)
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
                        f"the {k} weights became NaN or infinite by step {step}; {_kept(ckpt_path, last_saved, out_dir)}")
            with deferred_interrupt():  # Ctrl-C while saving: finish the file, then stop
                save_checkpoint(ckpt_path, unwrapped, {"eg": opt_eg.optimizer, "d_z": opt_dz.optimizer, "d_img": opt_dimg.optimizer}, step, cfg,
                                precision=precision)
        last_saved = step

    for step in range(start, end):
        if device.type == "cpu" and (step - start) % 50 == 0:
            # 2 OpenMP threads on a core that another job keeps busy run 2-8x slower than 1 thread
            torch.set_num_threads(tc.threads or policy(ceiling))
        x_all, y_all = next(stream)
        if n_extra:
            xe, ye = next(extra_stream)
            x_all, y_all = torch.cat([x_all, xe]), torch.cat([y_all, ye])
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        z_prior = sample_prior(B, mc.z_dim, gen)[lo:hi].to(device)
        x, y = x_all[lo:hi].to(device), y_all[lo:hi].to(device)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        requires_grad(d_z, True)
        requires_grad(d_img, True)

        with accelerator.autocast():
            code = encoder(x)
            z = code[:, : mc.z_dim]  # the warp head's encoder also reads out the face's own label
            if warp:
                y_src = code[:, mc.z_dim :]
                code = torch.cat([z, y_src.detach()], dim=1)  # G learns from the read-out, not into it
                # Reconstruction branch (own label: G should change nothing) and edited branch
                # (a sampled target y_t), both moving x's own pixels.
                y_t = sample_targets(B, gen, lc.target_anchors, lc.rare_targets)[lo:hi].to(device)
                both = generator(torch.cat([code, code]), torch.cat([y, y_t]))
                n = len(x)
                fields_rec = type(both)(*(None if t is None else t[:n] for t in both))
                fields_t = type(both)(*(None if t is None else t[n:] for t in both))
                x_gen = compose(x, fields_rec)
                warped_t = warp_image(x, fields_t.flow.to(x.dtype))  # also what the change budget compares with
                x_t = compose(x, fields_t, warped_t)
                fake, fake_y = x_t, y_t
            else:
                x_gen = generator(z, y)
                fake, fake_y = x_gen, y

            # Update D_z and D_img (eq. 3 and 4, discriminator side) on detached E/G outputs.
            loss_dz = d_z_loss(d_z(z_prior), d_z(z.detach())).sum() * world / B
            loss_dimg = d_img_loss(d_img(x, y), d_img(fake.detach(), fake_y)).sum() * world / B
        opt_dz.zero_grad(set_to_none=True)
        opt_dimg.zero_grad(set_to_none=True)
        accelerator.backward(loss_dz + loss_dimg)
        step_optimizers(accelerator, opt_dz, opt_dimg)

        # Update E and G on L_total (eq. 5) against the updated, frozen discriminators.
        requires_grad(d_z, False)
        requires_grad(d_img, False)
        with accelerator.autocast():
            loss_rec = reconstruction_loss(x, x_gen).sum() * world / B
            loss_ez = e_z_loss(d_z(z)).sum() * world / B
            loss_gimg = g_img_loss(d_img(fake, fake_y)).sum() * world / B
            zero = x_gen.new_zeros((), dtype=torch.float32)
            loss_id = zero
            if identity_net is not None and id_hi > 0:
                feats_real = identity_net.features(x[:id_hi])
                if not warp or lc.identity > 0:
                    loss_id = identity_loss(feats_real, identity_net.features(x_gen[:id_hi]), lc.identity_norm).sum() * world / k_id
            loss_eg = lc.rec * loss_rec + lc.identity * loss_id + lc.z * loss_ez + lc.img * loss_gimg
            loss_expr = loss_reg = loss_tid = zero
            if warp:
                if identity_net is not None and id_hi > 0 and lc.target_identity > 0:
                    loss_tid = identity_loss(feats_real, identity_net.features(x_t[:id_hi]), lc.identity_norm).sum() * world / k_id
                if expression_net is not None:
                    soft = soft_expression_targets(y_t, expression_net.anchors, lc.expression_tau)
                    logits_t = expression_net(_jitter(x_t, gen))
                    loss_expr = expression_loss(logits_t, soft)
                    if lc.expression_va > 0:
                        loss_expr = loss_expr + lc.expression_va * expression_va_loss(logits_t, expression_net.anchors, y_t)
                    loss_expr = loss_expr.sum() * world / B
                mask, flow = torch.cat([fields_rec.mask, fields_t.mask]), torch.cat([fields_rec.flow, fields_t.flow])
                loss_reg = (lc.mask * mask.float().flatten(1).mean(1) + lc.mask_tv * total_variation(mask)
                            + lc.flow_tv * total_variation(flow) * (mc.image_size / 2)
                            + lc.flow_size * flow.float().abs().flatten(1).mean(1) * (mc.image_size / 2) / 10).sum() * world / (2 * B)
                loss_reg = loss_reg + lc.change * (x_t.float() - warped_t.float()).abs().flatten(1).mean(1).sum() * world / B
                loss_reg = loss_reg + lc.label * (y_src.float() - y.float()).pow(2).sum(1).sum() * world / B
                if prototypes is not None:
                    mix = soft_expression_targets(y_t, fer_anchors, lc.units_prior_tau)
                    loss_reg = loss_reg + lc.units_prior * units_prior_loss(fields_t.units, mix, prototypes, unit_weights).sum() * world / B
                ramp = min(1.0, (step + 1) / lc.expression_warmup) if lc.expression_warmup > 0 else 1.0
                loss_eg = loss_eg + lc.target_identity * loss_tid + ramp * lc.expression * loss_expr + loss_reg
        opt_eg.zero_grad(set_to_none=True)
        accelerator.backward(loss_eg)

        values = torch.stack([loss_rec, loss_id, loss_ez, loss_gimg, loss_dz, loss_dimg, loss_eg,
                              loss_expr, loss_reg, loss_tid]).detach().float()
        if not torch.isfinite(values).all():
            raise TrainingDiverged(
                f"a loss became NaN or infinite at step {step}; {_kept(ckpt_path, last_saved, out_dir)}"
            )
        grads = [p.grad for group in opt_eg.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).all():
            # finite losses, NaN gradients (an op with an infinite slope): stop here, before the
            # update poisons the weights (and a NaN flow crashes grid_sample on the CPU)
            raise TrainingDiverged(
                f"the encoder/generator gradients became NaN or infinite at step {step}; {_kept(ckpt_path, last_saved, out_dir)}"
            )
        step_optimizers(accelerator, opt_eg)
        if accelerator.scaler is not None:  # fp16: one scale update per training step, after all three steps
            accelerator.scaler.update()
        done = step + 1

        # Logging, samples, checkpoints.
        if done % tc.log_every == 0 or done == end:
            names = ["rec", "identity", "e_z", "g_img", "d_z", "d_img", "total_eg", "expression", "warp_reg", "target_identity"]
            # Each rank holds its share times W, so the mean over ranks is the global loss.
            reduced = accelerator.reduce(values, reduction="mean") if world > 1 else values
            logs = {n: float(v) for n, v in zip(names, reduced.cpu())}
            logs["sec_per_step"] = (time.perf_counter() - t0) / max(done - start, 1)
            if writer is not None:
                for n, v in logs.items():
                    writer.add_scalar(f"loss/{n}" if n != "sec_per_step" else "perf/sec_per_step", v, done)
            bar.set_postfix(rec=f"{logs['rec']:.3f}", id=f"{logs['identity']:.3f}", d_img=f"{logs['d_img']:.2f}",
                            **({"expr": f"{logs['expression']:.2f}", "tid": f"{logs['target_identity']:.3f}"} if warp else {}), refresh=False)
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
