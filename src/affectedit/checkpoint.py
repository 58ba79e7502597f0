"""Every file a model lives in: training checkpoints and exported weights, written and read here only.

Training checkpoint (``runs/NAME/checkpoint.pt``, ``save_checkpoint``): a dict of the four
networks' state_dicts, the optimisers, the step, the RNG states, the config and a format version,
written atomically; ``torch.load(weights_only=True)`` reads it (no code is unpickled).

Exported weights (``model.safetensors``, ``save_weights``/``export_weights``): E and G in float16 as
safetensors (no pickle at all), with everything needed to edit inside the file's metadata: the
model config (``config``, JSON), the edit settings (``edit``, JSON: mode, strength, colour,
label_range; see ``editor.EditConfig``), the training ``step`` and the ``sha256`` of the tensor
data, checked on every load. Tensors are named ``encoder.<key>`` and ``generator.<key>``.

The 0.1 bundle (``affectedit.pt`` + ``affectedit.json`` beside it) still loads, with a
FutureWarning, for one release: convert it with ``Editor.from_pretrained(folder).save_pretrained(folder)``.

``load_checkpoint(path)`` reads any of them into one dict {"config", "models", "step", "edit"};
``models_from_checkpoint`` rebuilds networks from it through ``networks.build_models``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectedit.config import Config
from affectedit.errors import UserError
from affectedit.io import atomic_path, write_bytes, write_failure
from affectedit.networks import build_models

__all__ = [
    "BUNDLED_DIR",
    "check_model_config",
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "export_weights",
    "load_checkpoint",
    "models_from_checkpoint",
    "read_torch",
    "read_weights",
    "resolve_weights",
    "save_checkpoint",
    "save_weights",
    "warm_start",
    "write_torch",
]

#: Version of the training checkpoint format (``save_checkpoint``).
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: The exported weights: file name and the version of their metadata.
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FORMAT = 2
#: The bundled model (package data).
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
#: The 0.1 weights bundle, read for one more release.
LEGACY_NAME, LEGACY_JSON = "affectedit.pt", "affectedit.json"

NETWORKS = ("encoder", "generator")


# --------------------------------------------------------------------------------------------- torch files


def write_torch(path: str | os.PathLike, obj) -> None:
    """``torch.save(obj)`` to ``path`` atomically and verified: the archive is read back (every
    member's CRC) and flushed to the disk before it replaces the old file. A full disk is one
    UserError line (torch's own is "RuntimeError: [enforce fail at inline_container.cc...]"), and
    the old file is untouched."""
    with atomic_path(path, check=_check_zip) as tmp:
        with open(tmp, "wb") as fh:  # a file object: the archive's inner folder is "archive", not the
            try:                      # temporary name, so the same state gives the same bytes
                torch.save(obj, fh)
                fh.flush()
            except RuntimeError as e:  # torch's zip writer reports a failed write of the file object so
                cause = e.__context__ or e.__cause__
                if isinstance(cause, OSError):
                    raise cause from None
                if "inline_container" in str(e) or "PytorchStreamWriter" in str(e):
                    raise write_failure(path, "the checkpoint writer failed") from None
                raise


def _check_zip(path: Path) -> None:
    """Raise unless ``path`` is a complete zip archive (torch's format) whose members match their CRCs."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"member {bad} is damaged")


def read_torch(path: Path, missing: str, damaged: str):
    """``torch.load(path, weights_only=True)`` on the CPU. A missing file is the UserError
    ``missing``; an unreadable one the UserError ``damaged``, whose "{error}" names the failure."""
    if not path.is_file():
        raise UserError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle error, not a torch file, ...
        raise UserError(damaged.format(error=type(e).__name__)) from None


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def save_checkpoint(path: str | os.PathLike, models: dict, optimizers: dict, step: int, cfg: Config,
                    precision: str | None = None) -> None:
    """Write a self-describing checkpoint (models, optimisers, step, RNG states, config and, when
    given, the mixed precision the run trains in: "no", "bf16" or "fp16") atomically."""
    write_torch(path, {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "config": cfg.to_dict(),
        **({"precision": precision} if precision else {}),
        "models": {k: m.state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": [int(v) for v in np.random.get_state()[1]],
            "numpy_pos": int(np.random.get_state()[2]),
            "python": _python_rng_state(),
        },
    })


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (a file or its run folder), exported weights (``model.safetensors``
    or a folder holding it) or a 0.1 bundle, as {"config", "models", "step", "edit", ...}."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (CHECKPOINT_NAME, WEIGHTS_NAME, LEGACY_NAME) if (path / n).is_file()]
        path = found[0] if found else path / CHECKPOINT_NAME
    if path.suffix == ".safetensors" or _is_safetensors(path):
        return read_weights(path)
    if _legacy_info(path) is not None:
        return read_weights(path)
    state = read_torch(path, f"checkpoint {path} not found; pass the file written by `affectedit train` (runs/NAME/checkpoint.pt)",
                       f"checkpoint {path} is corrupt or not an affectedit checkpoint ({{error}}); retrain or restore it")
    if isinstance(state, dict) and state.get("kind") == "regressor":
        raise UserError(f"{path} is a valence/arousal regressor, not an editing model; pass a checkpoint written by `affectedit train`")
    if not isinstance(state, dict) or "config" not in state or "models" not in state:
        raise UserError(f"{path} is not an affectedit checkpoint (no config/models inside)")
    version, step = state.get("format_version", 0), state.get("step", 0)
    if isinstance(version, bool) or not isinstance(version, int) or isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path} holds odd values (format_version {version!r}, step {step!r}); it is damaged: retrain or restore it")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer affectedit (format {state['format_version']}); upgrade affectedit")
    return {"edit": {}, **state}


#: Sane bounds of a stored model config, checked before any network is built (``check_model_config``).
MODEL_BOUNDS = {"image_size": (16, 1024), "z_dim": (1, 4096), "label_repeat": (1, 1024), "generator_fc_channels": (1, 16384),
                "d_img_fc": (1, 16384), "d_img_label_repeat": (1, 1024), "kernel_size": (1, 15)}
MAX_CHANNELS, MAX_LAYERS, MAX_PARAMETERS = 8192, 12, 500_000_000


def check_model_config(mc) -> None:
    """UserError unless every size in a ModelConfig is within sane bounds (``MODEL_BOUNDS``; channel
    lists: 1..12 layers of 1..8192 channels) and the four networks hold at most about 500 M
    parameters (``_rough_parameters``: counted from the config, nothing is allocated)."""
    def refuse(what: str, value) -> UserError:
        return UserError(f"the model config stored in the checkpoint asks for {what} = {value!r}, outside sane bounds; "
                         "the file is damaged or not an affectedit model: retrain or restore it")

    for key, (lo, hi) in MODEL_BOUNDS.items():
        v = getattr(mc, key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise refuse(f"model.{key}", v)
    for key in ("encoder_channels", "generator_channels", "d_img_channels", "d_z_channels"):
        v = getattr(mc, key)
        if not isinstance(v, tuple) or not 1 <= len(v) <= MAX_LAYERS \
                or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in v):
            raise refuse(f"model.{key}", v)
    if not (isinstance(mc.max_flow, (int, float)) and 0 <= mc.max_flow <= 1):
        raise refuse("model.max_flow", mc.max_flow)
    n = _rough_parameters(mc)
    if n > MAX_PARAMETERS:
        raise refuse("networks of about", f"{n / 1e6:.0f} M parameters")


def _rough_parameters(mc) -> int:
    """The parameters of E, G, D_img and D_z, from the config alone (their convolutions and fully
    connected layers, as ``networks`` builds them; heads and biases left out): what a config would
    allocate, known before anything is."""
    k2, side = mc.kernel_size ** 2, mc.image_size // 16
    convs = lambda c_in, chans: sum(a * b * k2 for a, b in zip((c_in, *chans[:-1]), chans))  # noqa: E731
    enc = convs(3, mc.encoder_channels) + mc.encoder_channels[-1] * side * side * mc.z_dim
    gen = (mc.z_dim + 2 * mc.label_repeat) * side * side * mc.generator_fc_channels \
        + convs(mc.generator_fc_channels, mc.generator_channels) + mc.generator_channels[-1] * 6 * k2
    d_img = convs(3 + 2 * mc.d_img_label_repeat, mc.d_img_channels) + mc.d_img_channels[-1] * side * side * mc.d_img_fc
    d_z = sum(a * b for a, b in zip((mc.z_dim, *mc.d_z_channels), mc.d_z_channels))
    return int(enc + gen + d_img + d_z)


def models_from_checkpoint(state: dict, names=NETWORKS, device: str | torch.device = "cpu") -> tuple[Config, dict]:
    """Rebuild networks from the config stored inside a checkpoint (``networks.build_models``) and
    load their weights (in float32). Returns (config, {name: network in eval mode on ``device``})."""
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("models"), dict):
        raise UserError("the checkpoint's config or weights are not tables (damaged or edited file); retrain or restore it")
    try:
        cfg = Config.from_dict(state["config"])
        check_model_config(cfg.model)  # before any allocation: a 2e6-wide layer is refused, not allocated
        models = build_models(cfg.model)
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise UserError(f"the config stored in the checkpoint is not valid ({type(e).__name__}: {str(e)[:200]}); retrain or restore it") from None
    out = {}
    for name in names:
        if not isinstance(state["models"].get(name), dict):
            raise UserError(f"the checkpoint holds no {name} weights; pass a checkpoint written by `affectedit train` "
                            "or exported weights")
        bad = [k for k, v in state["models"][name].items()
               if not torch.is_tensor(v) or (v.is_floating_point() and not bool(torch.isfinite(v).all()))]
        if bad:
            raise UserError(f"the {name} weights hold NaN, infinite or non-tensor values (first: {bad[0]}); the file is damaged "
                            "or comes from a diverged run (a matching checksum only shows it was not changed after export): "
                            "restore the weights, reinstall affectedit or use an earlier checkpoint")
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


# --------------------------------------------------------------------------------------------- exported weights


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: 8 bytes of header length (shorter than the file), then a JSON header (a
    torch file is a zip: "PK")."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size


def _fp16(sd: dict) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in sd.items()}


def save_weights(out_dir: str | os.PathLike, models: dict, config: dict, edit: dict | None = None, step: int = 0,
                 force: bool = True) -> Path:
    """Write ``out_dir/model.safetensors``: the encoder and generator of ``models`` (modules or
    state_dicts) in float16, with ``config`` (``Config.to_dict()``), the edit settings ``edit`` (a
    dict of ``editor.EditConfig`` fields; {} = the defaults) and ``step`` in the metadata.
    Atomic; the same weights give the same bytes. Returns the file's path."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_NAME
    if not force and path.exists():
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    tensors = {}
    for name in NETWORKS:
        sd = models[name].state_dict() if isinstance(models[name], torch.nn.Module) else models[name]
        tensors.update({f"{name}.{k}": v for k, v in _fp16(sd).items()})
    meta = {"format": "affectedit-weights", "format_version": str(WEIGHTS_FORMAT), "step": str(int(step or 0)),
            "dtype": "float16", "config": json.dumps(config, sort_keys=True), "edit": json.dumps(edit or {}, sort_keys=True)}
    # The checksum covers the tensor data, which lies after the header: the header's own content
    # (the checksum included) does not move it.
    first = save(tensors, meta)
    data = first[8 + int.from_bytes(first[:8], "little"):]
    blob = _sorted_header(save(tensors, {**meta, "sha256": hashlib.sha256(data).hexdigest()}))
    write_bytes(path, blob, check=lambda tmp: None if tmp.read_bytes() == blob else _raise("the bytes differ"))
    return path


def _raise(why: str):
    raise ValueError(why)


def _sorted_header(blob: bytes) -> bytes:
    """The safetensors bytes with the header's keys sorted: safetensors writes the metadata in hash
    order, so the same weights would not always give the same bytes. Same length, same offsets."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    return blob[:8] + header.ljust(n) + blob[8 + n:] if len(header) <= n else blob


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read exported weights (``model.safetensors``, checksum-verified; or a 0.1 ``affectedit.pt``
    bundle, with a FutureWarning) as {"config", "models": {"encoder", "generator"}, "step", "edit"}."""
    path = Path(path)
    if _legacy_info(path) is not None:
        return _read_legacy(path)
    from safetensors.torch import load

    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    blob = path.read_bytes()
    try:
        n = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
    except Exception as e:  # noqa: BLE001 - not a safetensors header at all
        raise UserError(f"{path} is damaged or not affectedit weights ({type(e).__name__}); export the weights again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is damaged or not affectedit weights (odd metadata); export the weights again")
    if "sha256" in meta and hashlib.sha256(blob[8 + n:]).hexdigest() != meta["sha256"]:
        raise UserError(f"checksum mismatch for {path}: the file is damaged or was changed; reinstall affectedit "
                        "or export the weights again")
    try:
        tensors = load(blob)
        config, edit = json.loads(meta["config"]), json.loads(meta.get("edit") or "{}")
    except Exception as e:  # noqa: BLE001 - foreign safetensors (no config), damaged tensors, ...
        raise UserError(f"{path} is damaged or not affectedit weights ({type(e).__name__}); export the weights again") from None
    try:
        version, step = int(meta.get("format_version", WEIGHTS_FORMAT)), int(meta.get("step", 0) or 0)
        if not isinstance(config, dict) or not isinstance(edit, dict) or step < 0:
            raise TypeError("config and edit must be JSON objects, step a count")
    except (TypeError, ValueError, OverflowError) as e:
        raise UserError(f"{path} holds odd metadata ({str(e)[:120]}); export the weights again") from None
    if version > WEIGHTS_FORMAT:
        raise UserError(f"{path} was written by a newer affectedit (weights format {meta['format_version']}); upgrade affectedit")
    models: dict[str, dict] = {}
    for key, value in tensors.items():
        net, _, name = key.partition(".")
        models.setdefault(net, {})[name] = value
    return {"config": config, "models": models, "step": step, "edit": edit}


def export_weights(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, edit: dict | None = None,
                   force: bool = True, gate_from: float | None = None) -> Path:
    """Write the inference weights of a checkpoint (training checkpoint or weights) to
    ``out_dir/model.safetensors`` with the edit settings ``edit`` (see ``save_weights``; None: the
    settings stored with ``checkpoint``, if any). ``gate_from``: the warp head's dead zone to
    store (``model.gate_from``: targets this close to the face's own label change nothing; None:
    the checkpoint's)."""
    state = load_checkpoint(checkpoint)
    config = state["config"]
    if gate_from is not None:
        if config.get("model", {}).get("head") != "warp":
            raise UserError("--gate-from applies to the warp head only; this model has the pixel generator")
        if not 0.0 <= gate_from < 1.0:
            raise UserError(f"--gate-from must be in [0, 1), got {gate_from}")
        config = {**config, "model": {**config["model"], "gate_from": float(gate_from)}}
        state = {**state, "config": config}
    models_from_checkpoint(state)  # the same checks as when loading: both networks, fitting the config
    settings = state.get("edit", {}) if edit is None else edit
    return save_weights(out_dir, state["models"], config, settings, state.get("step", 0), force)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_weights(name_or_path: str | os.PathLike | None = None) -> Path:
    """The weights file for ``from_pretrained``: None = the bundled model; a folder holding
    ``model.safetensors`` (or a 0.1 bundle); a weights file; or a Hugging Face Hub repo id
    ("owner/name"), downloaded once into huggingface_hub's cache."""
    if name_or_path is None:
        folder = BUNDLED_DIR
        if not any((folder / n).is_file() for n in (WEIGHTS_NAME, LEGACY_NAME)):
            raise UserError(f"no bundled weights in {folder}: this installation ships without a trained model; "
                            "pass --checkpoint runs/NAME/checkpoint.pt, or export one with `affectedit export --format weights`")
        name_or_path = folder
    path = Path(name_or_path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, LEGACY_NAME):
            if (path / name).is_file():
                return path / name
        raise UserError(f"no weights in {path} ({WEIGHTS_NAME}); write them with Editor.save_pretrained({str(path)!r}) "
                        "or `affectedit export --format weights`")
    if path.is_file():
        return path
    if _HUB_ID.match(str(name_or_path)) and not path.parent.exists():
        return _hub_download(str(name_or_path))
    raise UserError(f"{name_or_path} is neither a weights folder or file nor a Hugging Face Hub repo id (owner/name)")


def _hub_download(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("loading weights from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no such file: one line for the user
        raise UserError(f"cannot get {WEIGHTS_NAME} of {repo_id!r} from the Hugging Face Hub ({type(e).__name__}); "
                        "check the name and the network, or pass a local folder") from None


# --------------------------------------------------------------------------------------------- the 0.1 bundle


def _legacy_info(path: Path) -> dict | None:
    """The affectedit.json beside a 0.1 ``affectedit.pt`` bundle (None when ``path`` is not one)."""
    meta = path.with_suffix(".json")
    if path.suffix != ".pt" or not path.is_file() or not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("file") == path.name else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_legacy(path: Path) -> dict[str, Any]:
    info = _legacy_info(path)
    warnings.warn(f"{path} is a 0.1 weights bundle (affectedit.pt + affectedit.json), read for one more release; "
                  f"convert it: Editor.from_pretrained({str(path.parent)!r}).save_pretrained(FOLDER) writes {WEIGHTS_NAME}",
                  FutureWarning, stacklevel=3)
    if _sha256(path) != info.get("sha256"):
        raise UserError(f"checksum mismatch for {path} (expected sha256 {str(info.get('sha256'))[:12]}... from "
                        f"{LEGACY_JSON}): the file is damaged or was replaced; reinstall affectedit or export the weights again")
    state = read_torch(path, f"weights file {path} not found",
                       f"weights file {path} is damaged ({{error}}); reinstall affectedit or export the weights again")
    # 0.1 editors applied the brightness of the residual change by default: colour "keep".
    edit = {"mode": "residual", "colour": "keep"}
    edit.update({k: info[k] for k in ("strength", "label_range") if info.get(k) is not None})
    return {"config": state["config"], "models": state["models"], "step": int(state.get("step", 0)), "edit": edit}


def warm_start(models: dict, path: str | os.PathLike) -> list[str]:
    """Copy every E/G tensor of a checkpoint (or exported weights) whose shape fits into `models`,
    except the action units' negative ranges, which stay as the code defines them (as the units'
    fields, which training draws again).

    For the warp head, the pixel generator's RGB layer initialises the colour channels, so C
    starts as the paper's reconstruction. Returns the names of the tensors that were copied."""
    state = load_checkpoint(path)
    copied = []
    for name in ("encoder", "generator"):
        own = models[name].state_dict()
        for k, v in state["models"].get(name, {}).items():
            v = v.float()
            if k.endswith("motion_negative"):  # the units' ranges are the code's (basis.UNIT_NEGATIVE), not the old model's
                continue
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                copied.append(f"{name}.{k}")
            elif k in own and own[k].ndim == v.ndim == 4 and own[k].shape[1] == 6 and v.shape[1] == 3:
                own[k][:, 3:].copy_(v)  # ConvTranspose2d weight: in x out x k x k
                copied.append(f"{name}.{k}[colour]")
            elif k in own and own[k].shape == (6,) and v.shape == (3,):
                own[k][3:].copy_(v)
                copied.append(f"{name}.{k}[colour]")
            elif k in own and own[k].ndim == v.ndim and own[k].shape[1:] == v.shape[1:] and own[k].shape[0] > v.shape[0] \
                    and not k.endswith("motion_basis"):
                own[k][: v.shape[0]].copy_(v)  # a head that gained outputs (the opening mouth's unit): the old ones
                copied.append(f"{name}.{k}[:{v.shape[0]}]")
        models[name].load_state_dict(own)
    return copied
