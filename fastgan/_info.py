"""``fastgan.info()``: versions, and which backends are live here and why not."""
from __future__ import annotations

import platform

import torch

from . import _backend, _ext


def info(print_it: bool = True) -> dict:
    """Report torch / Triton / CUDA versions and the state of each backend (printed with ``print_it``).

    Returns a dict: ``fastgan``, ``python``, ``torch``, ``torch_cuda``, ``triton`` (version or None),
    ``gpu`` (name or None), ``extension_built``, ``TRITON_INTERPRET``, ``FASTGAN_IMPL``; ``backends``:
    {"ref" | "triton" | "cuda": (usable, why)}; ``auto``: {"cpu tensors" / "cuda tensors": the backend
    ``impl="auto"`` picks there}."""
    ok_triton, triton_msg = _backend.triton_status()
    cuda_dev = torch.cuda.is_available()
    built = _ext.prebuilt_available()
    report = {
        "fastgan": __import__("fastgan").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_msg if ok_triton else None,
        "gpu": torch.cuda.get_device_name(0) if cuda_dev else None,
        "extension_built": built,
        "TRITON_INTERPRET": _backend.interpreter_enabled(),
        "FASTGAN_IMPL": _backend.requested_impl("auto"),
        "backends": {},
    }
    report["backends"]["ref"] = (True, "pure PyTorch, always available")
    device = torch.device("cuda" if cuda_dev else "cpu")
    why = _backend.triton_reason_unusable(device)
    report["backends"]["triton"] = (why is None, why or f"{triton_msg} on {device.type}"
                                    + (" (interpreter)" if device.type == "cpu" else ""))
    if cuda_dev:
        loaded, how = _ext.load()
    else:
        loaded, how = False, ("fastgan._C is built, but there is no CUDA device" if built
                              else "fastgan._C is not built and there is no CUDA device")
    report["backends"]["cuda"] = (loaded, how)
    report["auto"] = {"cpu tensors": _default_pick(torch.device("cpu"))}
    if cuda_dev:
        report["auto"]["cuda tensors"] = _default_pick(torch.device("cuda"))
    if print_it:
        print(format_report(report))
    return report


def _default_pick(device: torch.device) -> str:
    """The backend a call with the default impl gets on ``device``'s tensors, or why it fails there (FASTGAN_IMPL
    naming a backend that is not live: the case this report is for, so it says so rather than raising)."""
    try:
        return _backend.resolve("auto", device)
    except _backend.BackendUnavailableError as exc:
        return f"error ({exc})"


def format_report(report: dict) -> str:
    lines = [f"fastgan {report['fastgan']}  (python {report['python']}, torch {report['torch']}, "
             f"CUDA {report['torch_cuda'] or 'none'}, {report['triton'] or 'Triton missing'})",
             f"GPU: {report['gpu'] or 'none'}",
             f"fastgan._C built: {'yes' if report['extension_built'] else 'no'}",
             f"TRITON_INTERPRET: {'on' if report['TRITON_INTERPRET'] else 'off'}; "
             f"FASTGAN_IMPL: {report['FASTGAN_IMPL']}",
             "backends:"]
    for name, (live, why) in report["backends"].items():
        lines.append(f"  {name:<7} {'live' if live else 'off ':<5} {why}")
    who = "auto" if report["FASTGAN_IMPL"] == "auto" else f"the default impl (FASTGAN_IMPL={report['FASTGAN_IMPL']})"
    lines.append(f"{who} picks: " + ", ".join(f"{k} -> {v}" for k, v in report["auto"].items()))
    return "\n".join(lines)
