"""Backend selection: impl=, FASTGAN_IMPL at call time, auto rules, clear errors, info."""
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import _backend
from fastgan.ops import batch_norm_act

CPU = torch.device("cpu")


def grad_fn_name(impl=None, **kw):
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = batch_norm_act(x, **({} if impl is None else {"impl": impl}), **kw)
    return type(y.grad_fn).__name__


def test_auto_on_cpu_is_ref(monkeypatch):
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    assert _backend.resolve("auto", CPU) == "ref"
    assert "BatchNormAct" not in grad_fn_name("auto")


def test_env_replaces_the_default_at_call_time(monkeypatch):
    monkeypatch.setenv("FASTGAN_IMPL", "ref")
    assert _backend.resolve("auto", CPU) == "ref"
    if _backend.interpreter_usable():
        monkeypatch.setenv("FASTGAN_IMPL", "triton")
        assert _backend.resolve("auto", CPU) == "triton"
        assert grad_fn_name() == "NormActFnBackward"
        assert "BatchNormAct" not in grad_fn_name("ref")  # an explicit impl beats the env
    monkeypatch.setenv("FASTGAN_IMPL", "bogus")
    with pytest.raises(ValueError, match="FASTGAN_IMPL must be one of"):
        _backend.resolve("auto", CPU)


def test_explicit_unavailable_backends_raise(monkeypatch):
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    with pytest.raises(fastgan.BackendUnavailableError, match="impl='cuda' is unavailable.*CUDA tensors"):
        _backend.resolve("cuda", CPU, "batch_norm_act")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(fastgan.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        _backend.resolve("triton", CPU)
    with pytest.raises(ValueError, match="impl must be one of"):
        _backend.resolve("fast", CPU)


def test_interpreter_incompatibility_is_named():
    # Triton <= 3.6's interpreter calls int() on 1-element arrays, an error since numpy 2.3
    reason = _backend.interpreter_incompatibility("3.6.0", "2.5.2")
    assert "Triton 3.6.0" in reason and "numpy 2.5.2" in reason and "Triton >= 3.7" in reason
    assert _backend.interpreter_incompatibility("3.6.0", "2.2.6") is None
    assert _backend.interpreter_incompatibility("3.7.0", "2.5.2") is None
    assert _backend.interpreter_incompatibility("3.8.0+git1234", "2.3.0rc1") is None


@pytest.mark.skipif(not _backend.interpreter_usable(), reason="needs a usable Triton interpreter (TRITON_INTERPRET=1, no GPU)")
def test_explicit_triton_on_cpu_runs_the_kernels():
    assert grad_fn_name("triton") == "NormActFnBackward"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_picks_a_fused_backend(monkeypatch):
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    assert _backend.resolve("auto", torch.device("cuda")) in ("cuda", "triton")


def test_info_reports_backends(capsys):
    report = fastgan.info()
    out = capsys.readouterr().out
    assert set(report["backends"]) == {"ref", "triton", "cuda"}
    assert report["torch"] == torch.__version__
    assert "backends:" in out and "auto picks" in out
    assert report["backends"]["ref"][0] is True
    for live, why in report["backends"].values():
        assert why  # every backend says why it is (not) live


def test_info_reports_rather_than_raises_when_fastgan_impl_names_an_unavailable_backend(monkeypatch, capsys):
    monkeypatch.setenv("FASTGAN_IMPL", "cuda")  # (CPU tensors: the CUDA backend is not live for them)
    report = fastgan.info()
    out = capsys.readouterr().out
    assert report["auto"]["cpu tensors"].startswith("error (") and "unavailable" in report["auto"]["cpu tensors"]
    assert "the default impl (FASTGAN_IMPL=cuda) picks: cpu tensors -> error" in out


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fastgan._C built:" in out.stdout and "triton" in out.stdout


def test_cli_version_and_plain_help(capsys):
    from fastgan.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fastgan {fastgan.__version__}"
    for command in ("eval", "train", "demo"):  # --help in plain text: no Sphinx roles or ``literals``
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert ":class:" not in out and "``" not in out and ":data:" not in out, command
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "fastgan sample CHECKPOINT --n N" not in capsys.readouterr().out  # (sample's own --help has it)
