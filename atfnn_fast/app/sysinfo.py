"""What ``atfnn-fast info`` prints: versions, the CPU, the CPU path of the fused front-end
(the native core and its ISA, or the ATen path and why) and the GPUs torch sees."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_system() -> dict[str, str]:
    import torch

    from atfnn_fast import __version__
    from atfnn_fast.kernels import get_backend, native

    info = native.info()
    if info["native"]:
        path = (
            f"native ({info['isa']}; this CPU runs {', '.join(info['isas_supported'])}; "
            f"{info['library']})"
        )
    else:
        path = f"aten ({info['reason']}; {native.INSTALL_HINT})"
    if get_backend() in ("aten", "torch"):
        path += f" [ATFNN_BACKEND={get_backend()} overrides it]"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed (GPU kernels unavailable; the CPU paths need none)"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "atfnn-fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "CPU": f"{cpu_name()} ({platform.machine()}, {torch.get_num_threads()} torch threads)",
        "CPU path": path,
        "backend": get_backend(),
        "GPUs": ", ".join(gpus) if gpus else "none",
    }
