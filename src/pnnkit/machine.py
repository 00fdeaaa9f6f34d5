"""What a run was computed on: the processor, torch's CPU kernel path, cores and threads.

Same code, config and seed give the same floats on one machine but not always on another: torch picks its CPU
kernels by instruction set (``cpu_capability``: ``DEFAULT``, ``AVX2``, ``AVX512``, …) and kernels for different sets
round differently, which training amplifies. ``ATEN_CPU_CAPABILITY=default`` (or ``avx2``) pins torch's choice;
MKL chooses its own path (``MKL_CBWR=COMPATIBLE`` pins it), oneDNN too (``ONEDNN_MAX_CPU_ISA``).
docs/experiments/mnist.md, round 17, measures the effect of the first two.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def cpu_model() -> str:
    """The processor's name as the OS reports it (Linux: ``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Environment variables that change which kernels run or how many threads they use (recorded when set).
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_summary(threads: int | None = None) -> dict[str, Any]:
    """``cpu``, ``cpu_capability`` (torch's kernel path), ``cores``, ``torch_threads``, ``platform`` and ``env``
    (those of :data:`NUMERICS_ENV` that are set)."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ},
    }
