"""Export a trained editor for other runtimes: ``export_onnx(None, "affectedit.onnx")`` (the bundled
weights) or ``export_onnx(checkpoint, path)``.

The ONNX graph is the whole crop edit that ``Editor.edit`` runs, with the settings stored with the
weights (mode, colour, label range) built in, i.e. exactly ``Editor.edit_crops(image, label,
strength=s)`` in fp32::

    inputs   image     N x 3 x S x S float32 in [-1, 1]  (aligned crops, ``faces.align_faces_batch``)
             label     N x 2 float32 (valence, arousal) in [-1, 1], the dials
             strength  N float32 in [0, 4] (the weights' own: the ``default_strength`` metadata entry)
    output   edited    N x 3 x S x S float32 in [-1, 1]

with a dynamic batch dimension N. Inside, for the bundled model (mode "warp"): E gives the code and
its read-out of the face's own label, G the warp head's fields (flow, mask, colour or appearance
change) for the label mapped by the label range, the fields are scaled by the strength
(``CropEdit.from_fields``) and applied to the crop (``warp.compose``). Mode "residual": the face's
own label is estimated in the graph as ``Editor.estimate_labels`` does (the closest of the 16
``LABEL_GRID`` generations), the change G(E(x), y) - G(E(x), y_x) is added; mode "paper": G's face
replaces the crop. Pasting the edited crop back into the photo (``warp.apply_to_photo``) stays
outside the graph.

``onnx_bytes(encoder, generator, S)`` is the older, smaller graph G(E(x), y) (the benchmarks time
it). ``ort_session(path)`` opens either with ONNX Runtime (optional dependency: ``pip install
affectedit[export]``). Weights: see ``affectedit.checkpoint.export_weights`` (E and G as fp16
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

__all__ = ["ONNX_OPSET", "CropEditNet", "EditNet", "edit_onnx_bytes", "export_onnx", "onnx_bytes", "ort_session"]

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


class CropEditNet(torch.nn.Module):
    """``Editor.crop_edit`` + ``warp.compose`` of one Editor as one module (see the module docstring):
    forward(image N x 3 x S x S, label N x 2, strength N) -> edited crops N x 3 x S x S."""

    def __init__(self, editor):
        super().__init__()
        from affectedit.editor import LABEL_GRID

        self.encoder = editor.encoder
        self.generator = editor.generator
        settings = editor.edit_config
        self.mode, self.colour = settings.mode, settings.colour
        self.warp_head = getattr(self.generator, "head", "pixels") == "warp"
        r = settings.label_range
        self.register_buffer("label_range", torch.tensor(r if r is not None else [[-1.0, 1.0], [-1.0, 1.0]], dtype=torch.float32))
        self.register_buffer("grid", LABEL_GRID.clone())
        if self.mode == "warp" and not self.warp_head:
            raise UserError("mode 'warp' needs weights whose generator has the warp head")

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """``Editor.model_labels``: the dials' [-1, 0] and [0, 1] onto the label range."""
        r = self.label_range
        return torch.where(y < 0, y * -r[:, 0], y * r[:, 1])

    def images(self, x: torch.Tensor, generated) -> torch.Tensor:
        return generated if torch.is_tensor(generated) else compose(x, generated)

    def forward(self, image: torch.Tensor, label: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        from affectedit.warp import CropEdit, luma_change
        from affectedit.warp import compose as apply

        s = strength.reshape(-1, 1, 1, 1).to(image.dtype)
        code = self.encoder(image)
        generated = self.generator(code, self.labels(label))
        if self.mode == "warp":
            return apply(image, CropEdit.from_fields(generated, s))
        target = self.images(image, generated)
        if self.mode == "paper":
            return apply(image, CropEdit(mask=s.clamp(max=1.0).expand_as(target[:, :1]).contiguous(), colour=target))
        # residual: the face's own expression as G draws it, the closest of the LABEL_GRID generations
        n, k = image.shape[0], self.grid.shape[0]
        xs = image[:, None].expand(-1, k, -1, -1, -1).reshape(-1, *image.shape[1:])
        codes = code[:, None].expand(-1, k, -1).reshape(-1, code.shape[1])
        grid = self.grid[None].expand(n, -1, -1).reshape(-1, 2)
        cand = self.images(xs, self.generator(codes, self.labels(grid))).reshape(n, k, *image.shape[1:])
        best = (cand - image[:, None]).abs().flatten(2).mean(2).argmin(1)
        pick = torch.nn.functional.one_hot(best, k).to(cand.dtype)[:, :, None, None, None]
        source = (cand * pick).sum(1)
        change = target - source
        return apply(image, CropEdit(delta=s * (luma_change(change) if self.colour == "keep" else change)))


def edit_onnx_bytes(editor) -> bytes:
    """The serialized ONNX model of ``editor``'s whole crop edit (:class:`CropEditNet`), fp32 on the CPU."""
    _require_onnx()
    import copy

    import onnx

    net = CropEditNet(editor).eval()
    net.encoder = copy.deepcopy(editor.encoder).float().cpu().to(memory_format=torch.contiguous_format)
    net.generator = copy.deepcopy(editor.generator).float().cpu().to(memory_format=torch.contiguous_format)
    S = editor.image_size
    # A real-looking input (a smooth face-like gradient), so that every branch traced is the general one.
    x = torch.linspace(-0.8, 0.8, S)[None, None, :, None].expand(2, 3, S, S).contiguous()
    y = torch.tensor([[0.7, 0.4], [-0.6, -0.3]])
    s = torch.tensor([1.0, 0.5])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x, y, s), buf, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image", "label", "strength"], output_names=["edited"],
            dynamic_axes={"image": {0: "N"}, "label": {0: "N"}, "strength": {0: "N"}, "edited": {0: "N"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    settings = editor.edit_config
    meta = {"producer": "affectedit", "mode": settings.mode, "colour": settings.colour,
            "default_strength": f"{settings.strength:g}", "image_size": str(S),
            "label_range": "none" if settings.label_range is None else str(settings.label_range),
            "step": str(getattr(editor, "step", 0))}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def export_onnx(checkpoint: str | os.PathLike | None, out: str | os.PathLike, force: bool = True) -> Path:
    """Write the whole crop edit of ``checkpoint`` (a training checkpoint, exported weights or a
    folder of them; None = the bundled model) as one ONNX graph to ``out`` (atomically; an
    existing file is replaced only with ``force``). Returns the path."""
    from affectedit.editor import Editor

    _require_onnx()
    if checkpoint is None:
        editor = Editor.from_pretrained(device="cpu", precision="fp32")
    else:
        editor = Editor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    data = edit_onnx_bytes(editor)
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
