"""Keep freed heap memory for the next training step instead of handing it back to the OS (glibc malloc).

A PAT step allocates and frees the same large temporaries every step — e.g. the SHG lab's and its twin's complex
FFT buffers, 1–5 MB each at batch 256–1024, and the twin's autograd graph built and freed in every backward.
torch's CPU allocator gets them from ``malloc``. glibc's malloc returns the free memory at the top of its heap to
the OS as soon as more than ``M_TRIM_THRESHOLD`` bytes are free there; by default that threshold is dynamic, twice
the largest block freed so far (e.g. ≈ 10 MB once 5 MB blocks have been freed), so a step whose temporaries peak
above it gives them back at its end, and the next step page-faults the same memory in again — the kernel zeroes
every 4 KiB page anew. Measured on the SHG lab (batch 1024, depth 1, one thread): ≈ 15,000 page faults per step
and about half of the step's CPU time (27 ms → 13 ms with the memory kept); the same effect, smaller, at batch
128–256, and it depends on the history of the process (what was freed before), which made step timings noisy.

:func:`retain_freed_memory` sets ``M_MMAP_THRESHOLD`` to 32 MiB (the value the dynamic scheme reaches anyway, at
most) and ``M_TRIM_THRESHOLD`` to 128 MiB by default: up to that much free memory stays with the process for the
next step — the CPU analogue of torch's GPU caching allocator. Blocks above the mmap threshold would still be mapped
and unmapped one by one (glibc allows no threshold above 32 MiB on 64-bit systems), so by default it also sets
``M_MMAP_MAX`` to 0: large blocks come from the heap as well and are reused like the others. That matters for the
readout refits (:func:`fit_readout <pnnkit.training.fit_readout>`), whose full-batch tensors are often larger: with
8,000 × 1,168 float32 features (37 MB; the electronic MNIST config) one L-BFGS evaluation took 266.7 ms with them
mapped anew each time and 81.8 ms with them kept, the same loss and parameters to the last bit (2-core AMD EPYC,
one thread; ``benchmarks/readout_refit_heap.py``). The cost: memory freed in the middle of the heap stays with the
process (peak RSS of that benchmark: 566 → 779 MB). :func:`pat_forward <pnnkit.pat.pat_forward>`,
:meth:`Trainer.train <pnnkit.training.Trainer.train>` and :func:`fit_readout <pnnkit.training.fit_readout>` apply
it once per process, on the first call of any, unless

* the environment variable ``PNNKIT_RETAIN_HEAP`` is ``0`` / ``false`` / ``no`` / ``off``;
* the user already tuned malloc (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_``,
  ``MALLOC_TOP_PAD_``, or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``) or preloads another allocator (jemalloc,
  tcmalloc, mimalloc);
* the C library is not glibc (macOS, Windows, musl): then nothing happens.

It changes no result — only where freed memory waits until it is reused.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: defaults of :func:`retain_freed_memory`
TRIM_THRESHOLD_MB = 128
MMAP_THRESHOLD_MB = 32  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems

_ENV_OFF = ("0", "false", "no", "off")
_USER_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_lock = threading.Lock()
_auto_checked = False
_state: dict[str, Any] = {"applied": False, "reason": "not requested"}


def _glibc_mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def retain_freed_memory(trim_threshold_mb: int = TRIM_THRESHOLD_MB, mmap_threshold_mb: int = MMAP_THRESHOLD_MB,
                        large_blocks_on_heap: bool = True) -> bool:
    """Let glibc keep up to ``trim_threshold_mb`` MiB of freed heap memory for reuse (see the module docstring);
    ``large_blocks_on_heap``: blocks above ``mmap_threshold_mb`` MiB too (``M_MMAP_MAX`` = 0), not mapped one by one.

    Process-wide; returns True when applied, False where the C library is not glibc or refused the values.
    """
    mallopt = _glibc_mallopt()
    with _lock:
        if mallopt is None:
            _state.update(applied=False, reason="not glibc malloc")
            return False
        ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20))
        ok = bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20)) and ok
        if large_blocks_on_heap:
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and ok
        _state.update(applied=ok, reason="" if ok else "mallopt refused the values",
                      trim_threshold_mb=int(trim_threshold_mb), mmap_threshold_mb=int(mmap_threshold_mb),
                      large_blocks_on_heap=bool(large_blocks_on_heap))
        return ok


def _user_tuned() -> str:
    if os.environ.get("PNNKIT_RETAIN_HEAP", "").strip().lower() in _ENV_OFF:
        return "PNNKIT_RETAIN_HEAP is off"
    for k in _USER_MALLOC_ENV:
        if k in os.environ:
            return f"{k} is set"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc.*"
    pre = os.environ.get("LD_PRELOAD", "")
    for name in _OTHER_ALLOCATORS:
        if name in pre:
            return f"{name} is preloaded"
    return ""


def auto_retain() -> None:
    """Apply :func:`retain_freed_memory` once per process unless opted out or tuned by the user (cheap after)."""
    global _auto_checked
    if _auto_checked:
        return
    with _lock:
        if _auto_checked:
            return
        _auto_checked = True
        why = _user_tuned()
        if why:
            _state.update(applied=False, reason=why)
            return
    retain_freed_memory()


def allocator_state() -> dict[str, Any]:
    """What :func:`retain_freed_memory` / :func:`auto_retain` did in this process (for benchmark records)."""
    with _lock:
        return dict(_state)
