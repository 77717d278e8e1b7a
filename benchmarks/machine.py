"""What a benchmark ran on, recorded next to its results: one description for every script.

    from machine import describe      # scripts under benchmarks/ run with this folder on sys.path
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch
import torchvision

from graft_fx.serving.measure import cpu_model


def describe(device: torch.device | str | None = None) -> dict[str, Any]:
    """The CPU, its cores and torch's threads, the Python, torch, torchvision and (if installed)
    timm versions, the graft_fx commit (``git describe --dirty``), and the device with its GPU."""
    machine: dict[str, Any] = {
        "cpu": cpu_model() or platform.processor() or "unknown CPU", "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import timm

        machine["timm"] = timm.__version__
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        machine["graft_fx"] = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                                             capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if device is not None:
        device = torch.device(device)
        machine["device"] = str(device)
        if device.type == "cuda":
            machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def announce(device: torch.device | str, threads: int | None = None) -> dict[str, Any]:
    """Set torch's thread count (``threads``, where given), then print and return the machine's
    description (`describe`), as a benchmark does before it measures."""
    if threads:
        torch.set_num_threads(threads)
    machine = describe(device)
    print(" | ".join(f"{k}: {v}" for k, v in machine.items()))
    return machine
