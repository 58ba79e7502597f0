"""The presets: `--config paper` is the paper (../shared/SPEC.md), the others are what they were."""
import dataclasses
import json

import pytest
import torch

from affectedit.config import PRESETS, Config, get_config
from affectedit.errors import UserError


def _flat(cfg: Config) -> dict:
    return {f"{s}.{k}": v for s, sub in cfg.to_dict().items() for k, v in sub.items()}


def test_paper_preset_holds_every_spec_value():
    cfg = get_config("paper")
    m, loss, t = cfg.model, cfg.loss, cfg.train
    # Task and networks
    assert m.image_size == 96 and m.z_dim == 50 and m.label_repeat == 50  # 150 values into G's FC
    assert m.kernel_size == 5 and m.head == "pixels"
    assert m.encoder_channels == (64, 128, 256, 512)
    assert m.generator_fc_channels == 1024 and m.generator_channels == (512, 256, 128, 64, 32)
    assert m.d_img_channels == (16, 32, 64, 128) and m.d_img_fc == 1024
    assert m.d_img_label_every_block is True  # the paper's text ("crucial"); the authors' code: first block only
    assert m.d_z_channels == (64, 32, 16)
    # Losses (eq. 1-5): 1 L_rec + 1/3 L_iden + 0.01 L_z + 0.01 L_img, nothing else
    assert (loss.rec, loss.identity, loss.z, loss.img) == (1.0, 1.0 / 3, 0.01, 0.01)
    assert loss.identity_backbone == "vggface" and loss.identity_images == 16
    assert loss.identity_norm == "mean"
    extra = ("expression", "mask", "change", "mask_tv", "flow_tv", "flow_size", "target_identity", "label")
    assert all(getattr(loss, k) == 0 for k in extra)
    # Training
    assert t.batch_size == 49 and t.lr == 2e-4 and (t.beta1, t.beta2) == (0.5, 0.999)
    assert t.hflip is False                      # neither the paper nor the authors flip
    assert t.sampling == "classes" and t.balance == 0  # the authors' fill_up_equally (the paper is silent)
    assert t.extra_data == "" and t.extra_fraction == 0 and t.init_from == ""


def test_paper_networks_have_the_papers_layers():
    from affectedit.networks import build_models

    torch.manual_seed(0)
    models = build_models(get_config("paper").model)
    enc, gen, d_z, d_img = (models[k] for k in ("encoder", "generator", "d_z", "d_img"))
    convs = [l for l in enc.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((5, 5), (2, 2))] * 4
    assert [l.out_features for l in enc.modules() if isinstance(l, torch.nn.Linear)] == [50]
    deconvs = [l for l in gen.modules() if isinstance(l, torch.nn.ConvTranspose2d)]
    assert [d.stride for d in deconvs] == [(2, 2)] * 4 + [(1, 1)] * 2 and all(d.kernel_size == (5, 5) for d in deconvs)
    assert [d.out_channels for d in deconvs] == [512, 256, 128, 64, 32, 3]
    fc = [l for l in gen.modules() if isinstance(l, torch.nn.Linear)]
    assert len(fc) == 1 and fc[0].in_features == 150 and fc[0].out_features == 6 * 6 * 1024
    assert len([l for l in d_z.modules() if isinstance(l, torch.nn.Linear)]) == 4
    assert len([l for l in d_z.modules() if isinstance(l, torch.nn.BatchNorm1d)]) == 3
    assert len([l for l in d_img.modules() if isinstance(l, torch.nn.Conv2d)]) == 4
    assert len([l for l in d_img.modules() if isinstance(l, torch.nn.BatchNorm2d)]) == 4
    assert len([l for l in d_img.modules() if isinstance(l, torch.nn.Linear)]) == 2
    # weights N(0, 0.02), biases 0
    w = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(float(w.std()) - 0.02) < 0.002 and all(float(c.bias.detach().abs().max()) == 0 for c in convs)
    with torch.no_grad():
        z = enc(torch.rand(2, 3, 96, 96) * 2 - 1)
        x = gen(z, torch.zeros(2, 2))
    assert z.shape == (2, 50) and z.abs().max() <= 1 and x.shape == (2, 3, 96, 96) and x.abs().max() <= 1


def test_paper_preset_asks_for_vgg_face_in_one_line(tiny_cache, tmp_path):
    from affectedit.identity import build_identity_net
    from affectedit.train import train

    cfg = get_config("paper")
    with pytest.raises(UserError) as err:
        build_identity_net(cfg.loss.identity_backbone, cfg.loss.identity_weights)
    message = str(err.value)
    assert "\n" not in message and "vgg_face_dag.pth" in message
    assert "--set loss.identity_weights=" in message and "--set loss.identity_backbone=dlib" in message
    # train() stops with it before the first step (32x32 only so that the tiny cache fits)
    with pytest.raises(UserError, match="vgg_face_dag.pth"):
        train(get_config("paper", ["model.image_size=32"]), tiny_cache, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match="does not exist"):
        build_identity_net("vggface", str(tmp_path / "missing.pth"))


def test_dlib_substitute_changes_only_the_backbone():
    paper, sub = _flat(get_config("paper")), _flat(get_config("paper", ["loss.identity_backbone=dlib"]))
    assert {k for k in paper if paper[k] != sub[k]} == {"loss.identity_backbone"}


def test_authors_options():
    cfg = get_config("paper", ["loss.identity_norm=authors", "model.d_img_label_every_block=false"])
    assert cfg.loss.identity_norm == "authors" and cfg.model.d_img_label_every_block is False
    with pytest.raises(ValueError, match="identity_norm"):
        get_config("paper", ["loss.identity_norm=sum"])
    with pytest.raises(ValueError, match="sampling"):
        get_config("paper", ["train.sampling=random"])
    with pytest.raises(ValueError, match="balance"):
        get_config("paper", ["train.balance=0.5"])  # two ways of balancing at once
    assert get_config("paper", ["train.sampling=shuffle", "train.balance=0.5"]).train.balance == 0.5


def test_cpu_preset_changes_exactly_what_its_docs_say():
    """config.py's docstring lists what cpu changes from paper; README and the model card repeat it."""
    paper, cpu = _flat(get_config("paper")), _flat(get_config("cpu"))
    changed = {k: cpu[k] for k in paper if paper[k] != cpu[k]}
    assert changed == {
        "model.image_size": 64,
        "model.encoder_channels": (32, 64, 128, 256),
        "model.generator_fc_channels": 256,
        "model.generator_channels": (128, 64, 32, 32, 16),
        "loss.identity_backbone": "dlib",
        "train.hflip": True,
        "train.sampling": "shuffle",
        "train.steps": 6000,
        "train.checkpoint_every": 100,
        "train.sample_every": 250,
    }


def test_other_presets_keep_what_they_were_trained_with():
    # the bundled model (warp), cpu and tiny: dlib identity, flips, plain shuffling / V/A balancing, per-layer mean
    for name in ("cpu", "warp", "tiny"):
        cfg = get_config(name)
        assert cfg.loss.identity_backbone == "dlib" and cfg.loss.identity_norm == "mean", name
        assert cfg.train.hflip is True and cfg.train.sampling == "shuffle", name
    warp = get_config("warp")
    assert warp.train.balance == 0.5 and warp.model.head == "warp" and warp.model.appearance == "basis"
    assert set(PRESETS) == {"paper", "cpu", "warp", "tiny"}


def test_configs_stored_before_the_new_keys_load_as_they_were_trained():
    stored = get_config("warp").to_dict()
    for section, key in (("loss", "identity_norm"), ("train", "sampling"), ("loss", "identity_backbone"), ("train", "hflip")):
        del stored[section][key]
    cfg = Config.from_dict(json.loads(json.dumps(stored)))
    assert cfg == get_config("warp")
    # the bundled model's config
    from pathlib import Path

    import affectedit
    from affectedit.checkpoint import load_checkpoint

    bundled = load_checkpoint(Path(affectedit.__file__).parent / "weights")
    cfg = Config.from_dict(bundled["config"])
    assert cfg.loss.identity_backbone == "dlib" and cfg.train.hflip is True and cfg.train.sampling == "shuffle"
    # the warp preset's model with the five documented changes (MODEL_CARD.md, "Training")
    assert cfg.model == dataclasses.replace(get_config("warp").model, motion="units", mouth="open", appearance_range=0.25,
                                            appearance_mouth=False, gate_from=0.2)
    assert cfg.loss.units_prior == 8 and cfg.loss.units_prior_open == 15  # 0.9's and 0.10's runs (5 before)
    assert cfg.loss.units_prior_tau == 0.01 and cfg.loss.units_prior_calm is True
