"""Where and how inference runs: the device, the numeric precision and the CPU thread count.

``pick_device``: CUDA, then Apple MPS, then the CPU, unless told.
``pick_precision``: "auto" is bf16 on a CUDA device that supports it; on the CPU bf16 only when the
CPU has native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo) AND a quick
measurement (a convolution and a matrix product, ~0.1 s, once per process) finds bf16 faster than
fp32: without them bf16 is emulated and 1.3-3x slower (measured on an AVX-512 Xeon without them).
An ``Editor`` then times its own networks on one face in both (``bf16_measures_faster``) and keeps
the faster: the warp head's small pass on one face can be faster in fp32 even where bf16 convolutions
are not (3.7 against 4.9 ms on a 2-core AMX CPU), while a training step's batch is 1.8x faster in bf16.
``ThreadPolicy``: how many torch threads one CPU inference call gets.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time

import torch

from affectedit.errors import UserError

__all__ = ["PRECISIONS", "ThreadPolicy", "autocast", "bf16_measures_faster", "cpu_count", "cpu_has_bf16", "deferred_interrupt", "pick_device", "pick_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C (SIGINT) back while the body runs, then raise KeyboardInterrupt after it.

    For writes that must not be cut in half: an interrupt inside ``torch.save`` makes its zip writer
    fail on clean-up with a RuntimeError that hides the KeyboardInterrupt (the run then ended with
    "error" and status 1 instead of "interrupted" and 130). The file is still safe (written to a
    temporary name first), but the user asked to stop, not to see an error. Only the main thread can
    handle signals; elsewhere this does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is not signal.SIG_IGN:
        if callable(previous):
            previous(signal.SIGINT, None)  # the handler that was there (Python's: KeyboardInterrupt)
        raise KeyboardInterrupt


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device=None) -> torch.device:
    """CUDA, then Apple MPS, then CPU when ``device`` is None or "auto"; otherwise the device asked
    for (a UserError when it does not exist here)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} asked for but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not _mps_available():
        raise UserError(f"device {device!r} asked for but MPS is not available; use --device cpu")
    return dev


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list native bf16 arithmetic (AVX512_BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _best_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Measured once per process: a 5x5 convolution (the networks' kernel) and a matrix product run
    faster under bf16 autocast than in fp32 on this CPU. The caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(64, 64, 5, padding=2).eval().to(memory_format=torch.channels_last)
        x = torch.randn(8, 64, 32, 32).contiguous(memory_format=torch.channels_last)
        a, b = torch.randn(512, 512), torch.randn(512, 512)

    def work():
        conv(x)
        a @ b

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            work()

    with torch.inference_mode():
        return _best_seconds(bf16) < 0.9 * _best_seconds(work)


def bf16_measures_faster(run, repeats: int = 3) -> bool:
    """``run(precision)`` (a workload, e.g. one face through an editor's networks) is faster in
    "bf16" than in "fp32" by at least 10% (best of ``repeats`` after a warm-up each)."""
    return _best_seconds(lambda: run("bf16"), repeats) < 0.9 * _best_seconds(lambda: run("fp32"), repeats)


def bf16_is_native(device: torch.device) -> bool:
    """``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with avx512_bf16
    or AMX (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def pick_precision(precision: str, device: torch.device) -> str:
    """The precision inference runs in, "fp32" or "bf16", for a requested "auto", "fp32" or "bf16"."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if not bf16_is_native(device):
        return "fp32"
    # a GPU's bf16 is taken as it is; a CPU's only where it also measures faster
    return "bf16" if device.type == "cuda" or cpu_bf16_is_faster() else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadPolicy:
    """How many torch threads one CPU inference call gets, when the Editor is not told.

    Measured on the 2-core machine this project is built on (benchmarks/run.py): while another job
    keeps a core busy, 2 OpenMP threads run the networks 2-8x SLOWER than 1 thread (every parallel
    region waits for the thread the OS has descheduled), while on idle cores the second thread
    helps. So: torch's thread count (``ceiling``), less one thread for every core that OTHER
    processes clearly keep busy beyond the cores those threads leave free. "Clearly busy": the
    1-minute load average of the others (the load less this process's own share of it, an
    average of its CPU use with the same time constant) reaches ``BUSY`` per core; a quiet machine
    or a short burst keeps every thread."""

    TAU = 60.0  # seconds: the time constant of the kernel's 1-minute load average
    BUSY = 0.9  # load of other processes that counts as one core taken

    def __init__(self):
        self._t, self._cpu, self._own = time.monotonic(), time.process_time(), 0.0

    def others_load(self) -> float | None:
        """The 1-minute load average of the other processes (None where the OS has none)."""
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
        now, cpu = time.monotonic(), time.process_time()
        dt = now - self._t
        if dt > 0.5:
            w = math.exp(-dt / self.TAU)
            self._own = self._own * w + (cpu - self._cpu) / dt * (1 - w)
            self._t, self._cpu = now, cpu
        return max(0.0, load - self._own)

    def __call__(self, ceiling: int | None = None) -> int:
        ceiling = int(ceiling or torch.get_num_threads())
        others = self.others_load()
        if others is None:
            return ceiling
        spare = max(0, cpu_count() - ceiling)  # cores our threads leave to the others anyway
        taken = math.floor(max(0.0, others - spare) / self.BUSY + 1e-9)
        return max(1, min(ceiling, ceiling - taken))

    @contextlib.contextmanager
    def threads(self, device: torch.device, fixed: int | None = None):
        """torch's CPU thread count for one inference call (``fixed`` or this policy's choice);
        restored after. No-op off the CPU."""
        if device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        n = fixed if fixed is not None else self(before)
        if n == before:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
