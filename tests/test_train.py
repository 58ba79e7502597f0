"""The training engine: losses, resume exactness, data parallel equivalence, overfitting real faces."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from affectedit.checkpoint import load_checkpoint, models_from_checkpoint
from affectedit.config import get_config
from affectedit.errors import UserError
from affectedit.losses import d_img_loss, d_z_loss, e_z_loss, g_img_loss, identity_loss, reconstruction_loss, sample_prior
from affectedit.train import train


def _cfg(*overrides):
    # Identity loss off unless a test asks for it: the dlib net costs ~0.1 s per step here.
    return get_config("tiny", ["loss.identity=0", *overrides])


def _weights(run):
    state = load_checkpoint(run / "checkpoint.pt")
    return state["step"], state["models"]


# ---------------------------------------------------------------- losses


def test_losses_gradcheck():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    g = (torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    logits = torch.randn(2, dtype=torch.float64, requires_grad=True)
    # float64 gradcheck; L1 is not differentiable at 0, random inputs keep away from it.
    assert torch.autograd.gradcheck(lambda a: reconstruction_loss(x, a).double(), (g,))
    assert torch.autograd.gradcheck(lambda l: g_img_loss(l).double(), (logits,))
    assert torch.autograd.gradcheck(lambda l: e_z_loss(l).double(), (logits,))


def test_gan_losses_values():
    # -log(sigmoid(0)) = log 2 for every term
    zero = torch.zeros(3)
    assert torch.allclose(d_img_loss(zero, zero), torch.full((3,), 2 * torch.log(torch.tensor(2.0))))
    assert torch.allclose(d_z_loss(zero, zero), torch.full((3,), 2 * torch.log(torch.tensor(2.0))))
    # a confident correct discriminator has a small loss; the generator then has a large one
    assert d_img_loss(torch.full((1,), 10.0), torch.full((1,), -10.0)).item() < 1e-3
    assert g_img_loss(torch.full((1,), -10.0)).item() > 9


def test_identity_loss_sums_layers():
    a = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5)]
    b = [torch.ones(2, 3, 4, 4), torch.full((2, 5), 2.0)]
    assert torch.allclose(identity_loss(a, b), torch.tensor([3.0, 3.0]))


def test_prior_is_uniform_on_cube():
    z = sample_prior(10000, 50, torch.Generator().manual_seed(0))
    assert z.min() >= -1 and z.max() <= 1 and abs(float(z.mean())) < 0.01


# ---------------------------------------------------------------- engine


def test_train_writes_checkpoint_config_samples(tiny_cache, tmp_path):
    run = tmp_path / "run"
    logs = train(_cfg("train.steps=2", "train.sample_every=2"), tiny_cache, run, progress=False)
    assert {"rec", "d_img", "d_z", "identity"} <= set(logs)
    assert (run / "config.json").exists() and (run / "samples" / "step_0000002.png").exists()
    assert any((run / "tensorboard").iterdir())
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 2 and set(state["models"]) == {"encoder", "generator", "d_z", "d_img"}
    cfg, models = models_from_checkpoint(state)
    assert cfg.model.image_size == 32 and set(models) == {"encoder", "generator"}
    # a second run into the same folder without --resume would clobber it: refused
    with pytest.raises(UserError, match="--resume"):
        train(_cfg("train.steps=2"), tiny_cache, run, progress=False)


def test_identity_loss_runs_in_training(tiny_cache, tmp_path):
    logs = train(get_config("tiny", ["train.steps=1"]), tiny_cache, tmp_path / "run", progress=False)
    assert logs["identity"] > 0


@pytest.mark.slow
def test_resume_matches_uninterrupted(tiny_cache, tmp_path):
    cfg = _cfg("train.steps=6", "train.checkpoint_every=3")
    train(cfg, tiny_cache, tmp_path / "straight", progress=False)
    train(cfg, tiny_cache, tmp_path / "resumed", stop_at=3, progress=False)
    assert _weights(tmp_path / "resumed")[0] == 3
    train(cfg, tiny_cache, tmp_path / "resumed", resume=True, progress=False)
    step_a, a = _weights(tmp_path / "straight")
    step_b, b = _weights(tmp_path / "resumed")
    assert step_a == step_b == 6
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"


@pytest.mark.slow
def test_overfit_eight_real_faces(tiny_cache, tmp_path):
    """The tiny config memorises 8 real faces: L_rec falls far below what random weights give."""
    from affectedit.data.cache import FaceCache

    cfg = _cfg("train.batch_size=8", "train.steps=150", "train.hflip=false", "train.lr=1e-3", "train.checkpoint_every=1000")
    run = tmp_path / "run"
    train(cfg, tiny_cache, run, progress=False)
    cache = FaceCache(tiny_cache)
    x = torch.stack([cache[i][0] for i in range(len(cache))])
    y = torch.stack([cache[i][1] for i in range(len(cache))])
    _, trained = models_from_checkpoint(load_checkpoint(run / "checkpoint.pt"))
    torch.manual_seed(1)
    from affectedit.networks import build_models

    untrained = build_models(cfg.model)
    with torch.no_grad():
        rec_trained = reconstruction_loss(x, trained["generator"](trained["encoder"](x), y)).mean().item()
        rec_random = reconstruction_loss(x, untrained["generator"](untrained["encoder"](x), y)).mean().item()
    print(f"L_rec trained {rec_trained:.3f} vs random {rec_random:.3f}")
    assert rec_random > 0.3
    assert rec_trained < 0.2


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_process_data_parallel_matches_one_process(tiny_cache, tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch follows the 1-process run.

    Tolerance: |a - b| <= 2e-5 + 1e-4 |b| on every weight after 3 Adam steps (lr 2e-4, so a step
    moves a weight by up to ~2e-4), and 2e-3 relative on batch norm's running statistics (buffers
    that only eval mode uses, which the discriminators never run in; they agree to ~5e-4 here). Adam's eps is raised to 1e-3 here: the
    biases in front of batch norm have a true gradient of zero, which the two runs round
    differently (~1e-9), and with eps 1e-8 Adam would blow that rounding up into full +-lr steps."""
    # fp32: bf16 (the automatic choice on a CPU with AMX) rounds differently in 1 and 2 processes
    args = ["--config", "tiny", "--data", str(tiny_cache), "--set", "loss.identity=0", "--set", "train.adam_eps=1e-3",
            "--set", "train.mixed_precision=no",
            "--steps", "3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "affectedit", "train", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(port),
                          "-m", "affectedit", "train", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    _, a = _weights(tmp_path / "one")
    _, b = _weights(tmp_path / "two")
    for n in a:
        for k in a[n]:
            if a[n][k].is_floating_point():
                diff = (a[n][k] - b[n][k]).abs().max().item()
                rtol, atol = (2e-3, 1e-5) if "running" in k else (1e-4, 2e-5)
                assert torch.allclose(a[n][k], b[n][k], rtol=rtol, atol=atol), f"{n}.{k} differs by {diff}"
    # and the runs did move the weights (the comparison is not vacuous): E and G are no longer the
    # networks train() starts from (built after seeding with train.seed)
    from affectedit.networks import build_models

    cfg = get_config("tiny", ["loss.identity=0"])
    torch.manual_seed(cfg.train.seed)
    start = {k: m.state_dict() for k, m in build_models(cfg.model).items()}
    assert load_checkpoint(tmp_path / "one" / "checkpoint.pt")["step"] == 3
    for n in ("encoder", "generator"):
        moved = max((b[n][k].float() - start[n][k].float()).abs().max().item() for k in start[n] if start[n][k].is_floating_point())
        assert moved > 1e-5, f"{n} did not change in 3 steps"


def test_warp_head_trains_against_the_expression_model(tiny_cache, tmp_path):
    """The warp preset's losses on a tiny model: every term is finite and logged, and a warm start
    from a pixel-head checkpoint copies the trunk and initialises the colour from its RGB layer."""
    pytest.importorskip("h5py")
    pixels = tmp_path / "pixels"
    train(_cfg("train.steps=1"), tiny_cache, pixels, progress=False)
    warp = get_config("warp")
    overrides = [f"loss.{k}={getattr(warp.loss, k)}" for k in ("rec", "expression", "mask", "change", "mask_tv", "flow_tv",
                                                              "flow_size", "target_identity")]
    cfg = _cfg("model.head=warp", "train.steps=2", "loss.identity_images=2", f"train.init_from={pixels / 'checkpoint.pt'}", *overrides)
    logs = train(cfg, tiny_cache, tmp_path / "warp", progress=False)
    assert logs["expression"] > 0 and logs["target_identity"] > 0 and logs["warp_reg"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    _, w = _weights(tmp_path / "warp")
    _, p = _weights(pixels)
    assert w["generator"]["deconvs.10.weight"].shape[1] == 6 and p["generator"]["deconvs.10.weight"].shape[1] == 3


def test_warm_start_copies_what_fits(tiny_cache, tmp_path):
    from affectedit.checkpoint import warm_start
    from affectedit.networks import build_models

    train(_cfg("train.steps=1"), tiny_cache, tmp_path / "p", progress=False)
    src = load_checkpoint(tmp_path / "p" / "checkpoint.pt")["models"]["generator"]
    models = build_models(get_config("tiny", ["model.head=warp"]).model)
    copied = warm_start(models, tmp_path / "p" / "checkpoint.pt")
    g = models["generator"].state_dict()
    assert "generator.fc.weight" in copied and torch.equal(g["fc.weight"], src["fc.weight"].float())
    assert torch.equal(g["deconvs.10.weight"][:, 3:], src["deconvs.10.weight"].float())  # colour <- RGB
    assert g["deconvs.10.weight"][:, :3].abs().max() == 0  # flow and mask still start at "no change"


# ---------------------------------------------------------------- mixed precision


def test_a_resumed_run_keeps_the_precision_it_started_in(tiny_cache, tmp_path, monkeypatch):
    """"auto" precision is chosen by timing bf16 against fp32; on a busy machine a resumed process
    may time otherwise. The checkpoint records the run's precision and a resume uses it (here the
    timing would say bf16 on resume), so the run still ends where an uninterrupted one does."""
    import affectedit.runtime as runtime
    import affectedit.train as train_module

    chosen = []
    real_accelerator = __import__("accelerate").Accelerator

    def recording(*args, **kwargs):
        chosen.append(kwargs.get("mixed_precision"))
        return real_accelerator(*args, **kwargs)

    monkeypatch.setattr("accelerate.Accelerator", recording)
    cfg = _cfg("train.mixed_precision=auto", "train.steps=4", "train.checkpoint_every=2")
    monkeypatch.setattr(runtime, "pick_precision", lambda *a: "fp32")
    train(cfg, tiny_cache, tmp_path / "run", stop_at=2, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["precision"] == "no"
    monkeypatch.setattr(runtime, "pick_precision", lambda *a: "bf16")  # the resumed process's timing
    train(cfg, tiny_cache, tmp_path / "run", resume=True, progress=False)
    assert chosen == ["no", "no"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    # a checkpoint that says nothing (older runs): chosen afresh
    assert train_module._resumed_precision({}, torch.device("cpu")) is None
    assert train_module._resumed_precision(None, torch.device("cpu")) is None
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)  # bf16 only where native
    assert train_module._resumed_precision({"precision": "bf16"}, torch.device("cpu")) is None
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert train_module._resumed_precision({"precision": "bf16"}, torch.device("cpu")) == "bf16"


def test_fp16_overflow_in_one_optimizer_leaves_the_others_right(tiny_cache, tmp_path, monkeypatch):
    """fp16 loss scaling with three optimisers: when D_z's gradient overflows, D_z's step is skipped
    and the scale halves, but only after every optimiser of the step has used the scale its
    gradients were made with. D_img's update must equal the unscaled fp32 one.

    fp16 autocast needs a GPU, so the run is fp32 with a loss scaler (torch's GradScaler on CPU)
    put where Accelerate puts its own: the scaling, unscaling and skipping are the same code. An
    overflow is injected into D_z's gradient at the first step. Before the fix, Accelerate updated
    the scale after D_z's step, D_img's gradient was unscaled by half the scale it was made with and
    came out twice too large (here: its Adam moment exp_avg doubled)."""
    import accelerate

    import affectedit.train as train_module

    scalers = []

    class ScaledAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
            scalers.append(self.scaler)

    real_build = train_module.build_models

    def build_with_overflow(mc):
        models = real_build(mc)
        calls = []

        def overflow_once(grad):  # the first backward through D_z (the discriminator update of step 0)
            calls.append(1)
            return grad * float("inf") if len(calls) == 1 else grad

        next(models["d_z"].parameters()).register_hook(overflow_once)
        return models

    cfg = _cfg("train.mixed_precision=no", "train.steps=1")
    train(cfg, tiny_cache, tmp_path / "fp32", progress=False)
    monkeypatch.setattr(accelerate, "Accelerator", ScaledAccelerator)
    monkeypatch.setattr(train_module, "build_models", build_with_overflow)
    train(cfg, tiny_cache, tmp_path / "scaled", progress=False)

    ref, got = load_checkpoint(tmp_path / "fp32" / "checkpoint.pt"), load_checkpoint(tmp_path / "scaled" / "checkpoint.pt")
    assert scalers and scalers[0].get_scale() == 2.0**11  # one overflow -> halved once
    # D_z's step was skipped: its weights are the initial ones, which the reference run moved
    torch.manual_seed(cfg.train.seed)
    init = real_build(cfg.model)["d_z"].state_dict()
    assert all(torch.equal(got["models"]["d_z"][k], init[k]) for k in init if "running" not in k and "num_batches" not in k)
    # D_img's update is the fp32 one: same Adam moments, same weights
    ref_state, got_state = ref["optimizers"]["d_img"]["state"], got["optimizers"]["d_img"]["state"]
    assert ref_state.keys() == got_state.keys() and ref_state
    for k in ref_state:
        for moment in ("exp_avg", "exp_avg_sq"):
            a, b = ref_state[k][moment], got_state[k][moment]
            assert torch.allclose(b, a, rtol=1e-5, atol=1e-12), f"D_img {moment} of param {k}: ratio {(b.abs().sum() / a.abs().sum()).item():.3f}"
    for k, v in ref["models"]["d_img"].items():
        if v.is_floating_point():
            assert torch.allclose(got["models"]["d_img"][k], v, rtol=1e-5, atol=1e-7), k


def test_identity_loss_authors_normalisation():
    """'authors': each layer's mean divided by its H*W once more (their conv1_2 / 224^2 ... conv5_2 / 14^2);
    a feature vector (dlib's descriptor) is left as it is."""
    a = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2), torch.zeros(2, 5)]
    b = [torch.ones(2, 3, 4, 4), torch.full((2, 5, 2, 2), 2.0), torch.full((2, 5), 3.0)]
    assert torch.allclose(identity_loss(a, b), torch.tensor([6.0, 6.0]))
    assert torch.allclose(identity_loss(a, b, "authors"), torch.full((2,), 1 / 16 + 2 / 4 + 3.0))
    with pytest.raises(ValueError):
        identity_loss(a, b, "sum")


def test_class_balanced_sampling_and_authors_identity_norm_train(tiny_cache, tmp_path):
    """The paper preset's data order (train.sampling=classes) and the authors' identity normalisation
    run in training (dlib substitutes VGG-Face, whose weights cannot be shipped)."""
    cfg = get_config("tiny", ["train.sampling=classes", "train.hflip=false", "loss.identity_norm=authors", "train.steps=1",
                              "loss.identity_images=2"])
    logs = train(cfg, tiny_cache, tmp_path / "run", progress=False)
    assert 0 < logs["identity"] and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    with pytest.raises(UserError, match="balance"):
        bad = get_config("tiny")
        bad.train.sampling, bad.train.balance = "classes", 0.5
        train(bad, tiny_cache, tmp_path / "bad", progress=False)
