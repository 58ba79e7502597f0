"""Device, precision and thread choice (affectedit.runtime)."""
from __future__ import annotations

import pytest
import torch

from affectedit import runtime
from affectedit.errors import UserError


def test_thread_policy_uses_the_cores_other_processes_leave(monkeypatch):
    """torch's thread count, less one for every core that other processes clearly keep busy."""
    policy = runtime.ThreadPolicy()
    monkeypatch.setattr(policy, "_own", 0.0)
    cases = [  # cpus, load of others, ceiling -> threads
        (2, 0.0, 2, 2), (2, 0.75, 2, 2), (2, 0.95, 2, 1), (2, 2.0, 2, 1),  # a quiet 2-core machine uses both
        (4, 0.0, 4, 4), (4, 0.3, 4, 4), (4, 1.0, 4, 3), (4, 2.6, 4, 2), (4, 9.0, 4, 1),
        (4, 2.0, 2, 2), (4, 3.0, 2, 1),  # 2 threads on 4 cores: others may take the 2 cores left
    ]
    for cpus, load, ceiling, want in cases:
        monkeypatch.setattr(runtime, "cpu_count", lambda cpus=cpus: cpus)
        monkeypatch.setattr(runtime.os, "getloadavg", lambda load=load: (load, load, load))
        monkeypatch.setattr(policy, "_t", float("inf"))  # no update of the process's own share
        assert policy(ceiling) == want, (cpus, load, ceiling)


def test_threads_are_restored_after_a_call():
    before = torch.get_num_threads()
    with runtime.ThreadPolicy().threads(torch.device("cpu"), fixed=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_precision_auto_is_bf16_only_where_it_is_native_and_faster(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    assert runtime.pick_precision("fp32", cpu) == "fp32" and runtime.pick_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="precision"):
        runtime.pick_precision("fp16x", cpu)
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not runtime.cpu_has_bf16(str(info))
    info.write_text("processor : 0\nflags : fpu avx512f avx512_bf16 amx_tile\n")
    assert runtime.cpu_has_bf16(str(info))
    assert not runtime.cpu_has_bf16(str(tmp_path / "missing"))
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.pick_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "cpu_bf16_is_faster", lambda: False)
    assert runtime.pick_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_bf16_is_faster", lambda: True)
    assert runtime.pick_precision("auto", cpu) == "bf16"


def test_devices():
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="unknown device"):
        runtime.pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            runtime.pick_device("cuda")


def test_deferred_interrupt_finishes_the_body_then_raises():
    import os
    import signal

    import pytest

    from affectedit.runtime import deferred_interrupt

    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)  # arrives inside the body ...
        done.append("rest of the body")  # ... which still runs to its end
    assert done == ["rest of the body"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred_interrupt():  # no signal: nothing raised
        done.append("again")
    assert done[-1] == "again"


def test_cli_reports_an_interrupt_that_a_library_turned_into_another_error(monkeypatch, capsys):
    import affectedit.cli as cli

    def run(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None  # context kept

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(func=run)
    assert cli.main([]) == 130
    assert capsys.readouterr().err.strip() == "affectedit: interrupted"


def test_bf16_measures_faster_compares_the_given_workload():
    import time

    from affectedit.runtime import bf16_measures_faster

    def workload(slow):
        return lambda precision: time.sleep(0.004 if precision == slow else 0.0)

    assert bf16_measures_faster(workload("fp32")) is True
    assert bf16_measures_faster(workload("bf16")) is False


def test_auto_precision_editor_keeps_what_its_own_pass_measures_faster(monkeypatch):
    from affectedit import runtime
    from affectedit.editor import Editor

    monkeypatch.setattr(runtime, "pick_precision", lambda precision, device: "bf16" if precision == "auto" else precision)
    seen = []

    def measure(run):
        run("bf16")  # the editor's own pass runs in the precision asked
        seen.append(True)
        return False

    monkeypatch.setattr(runtime, "bf16_measures_faster", measure)
    ed = Editor.from_pretrained(None, device="cpu")
    assert seen and ed.precision == "fp32"
    monkeypatch.setattr(runtime, "bf16_measures_faster", lambda run: True)
    assert Editor.from_pretrained(None, device="cpu").precision == "bf16"
    assert Editor.from_pretrained(None, device="cpu", precision="fp32").precision == "fp32"
