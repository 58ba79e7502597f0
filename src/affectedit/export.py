"""Export a trained editor for other runtimes: ``export_onnx(checkpoint, "model.onnx")``.

The ONNX graph is the paper's edit, E and G as one network::

    inputs   image  N x 3 x S x S float32 in [-1, 1]  (aligned crops, as ``Editor.edit_crops`` takes them)
             label  N x 2 float32 (valence, arousal) in [-1, 1]
    output   edited N x 3 x S x S float32 in [-1, 1]  = G(E(image), label)

with a dynamic batch dimension N.  The residual mode of ``affectedit.editor`` is glue around this
graph (the same network run on more labels), so a runtime that has the graph can do both modes.
``ort_session(path)`` opens it with ONNX Runtime (optional dependency: ``pip install
affectedit[export]``).  Weights: see ``affectedit.checkpoint.export_weights`` (E and G as fp16
safetensors).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from affectedit.errors import UserError
from affectedit.io import atomic_path
from affectedit.networks import compose

__all__ = ["ONNX_OPSET", "EditNet", "export_onnx", "onnx_bytes", "ort_session"]

#: Opset of the exported graph (ConvTranspose, Tanh, Gemm: all old ops; 17 is widely supported).
ONNX_OPSET = 17


class EditNet(torch.nn.Module):
    """G(E(x), y) as one module: the graph that ``export_onnx`` writes. For a generator with the
    warp head the output is the edited crop, compose(x, G(E(x), y)) (GridSample, opset >= 16)."""

    def __init__(self, encoder: torch.nn.Module, generator: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.generator = generator

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        out = self.generator(self.encoder(image), label)
        return out if torch.is_tensor(out) else compose(image, out)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'affectedit[export]' (onnx, onnxruntime)") from None


def onnx_bytes(encoder: torch.nn.Module, generator: torch.nn.Module, image_size: int) -> bytes:
    """The serialized ONNX model of G(E(x), y) for fp32 CPU copies of ``encoder`` and ``generator``."""
    _require_onnx()
    import copy

    net = EditNet(copy.deepcopy(encoder).float().cpu(), copy.deepcopy(generator).float().cpu()).eval()
    net = net.to(memory_format=torch.contiguous_format)
    x = torch.zeros(2, 3, image_size, image_size)
    y = torch.zeros(2, 2)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: it needs no onnxscript and handles these plain layers
        # exactly; torch marks it deprecated in favour of the torch.export-based one.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x, y), buf, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image", "label"], output_names=["edited"],
            dynamic_axes={"image": {0: "N"}, "label": {0: "N"}, "edited": {0: "N"}},
        )
    return buf.getvalue()


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, force: bool = True) -> Path:
    """Write E and G of a training checkpoint (or exported weights file) as one ONNX graph to ``out``
    (atomically; an existing file is replaced only with ``force``).  Returns the path."""
    from affectedit.checkpoint import load_checkpoint, models_from_checkpoint

    _require_onnx()
    cfg, models = models_from_checkpoint(load_checkpoint(checkpoint), device="cpu")
    data = onnx_bytes(models["encoder"].float(), models["generator"].float(), cfg.model.image_size)
    out = Path(out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, force=force) as tmp:
        Path(tmp).write_bytes(data)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # a model to share: the usual permissions, not mkstemp's 0600
    return out


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session for a model path or serialized bytes (``threads``: intra-op
    threads; default torch's current count, so both runtimes use the same cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running the ONNX model needs onnxruntime: pip install 'affectedit[export]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with contextlib.suppress(Exception):
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    src = model if isinstance(model, (bytes, bytearray)) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
