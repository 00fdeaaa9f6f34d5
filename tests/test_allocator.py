"""pnnkit.allocator: glibc heap retention, applied once by the PAT path unless opted out or tuned by the user."""

from __future__ import annotations

import platform

import pytest
import torch

from helpers import tanh_model, tanh_system
from pnnkit import PhysicalLayer, allocator


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which auto_retain has not run yet (restored afterwards)."""
    monkeypatch.setattr(allocator, "_auto_checked", False)
    monkeypatch.setattr(allocator, "_state", {"applied": False, "reason": "not requested"})
    for k in ("PNNKIT_RETAIN_HEAP", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
              "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_first_pat_forward_retains_freed_memory(fresh):
    layer = PhysicalLayer(tanh_system(4), tanh_model)
    layer(torch.zeros(2, 4)).sum().backward()
    st = allocator.allocator_state()
    assert st["applied"] is True and st["trim_threshold_mb"] == allocator.TRIM_THRESHOLD_MB


@pytest.mark.parametrize("env,value,reason", [
    ("PNNKIT_RETAIN_HEAP", "0", "PNNKIT_RETAIN_HEAP is off"),
    ("PNNKIT_RETAIN_HEAP", "off", "PNNKIT_RETAIN_HEAP is off"),
    ("MALLOC_TRIM_THRESHOLD_", "1000000", "MALLOC_TRIM_THRESHOLD_ is set"),
    ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000", "GLIBC_TUNABLES"),
    ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "jemalloc is preloaded"),
])
def test_opt_out_and_user_tuning_are_respected(fresh, env, value, reason):
    fresh.setenv(env, value)
    called = []
    fresh.setattr(allocator, "retain_freed_memory", lambda *a, **k: called.append(1))
    allocator.auto_retain()
    allocator.auto_retain()
    st = allocator.allocator_state()
    assert st["applied"] is False and reason in st["reason"] and called == []


def test_auto_retain_runs_once(fresh):
    called = []
    fresh.setattr(allocator, "retain_freed_memory", lambda *a, **k: called.append(1) or True)
    for _ in range(3):
        allocator.auto_retain()
    assert called == [1]


def test_not_glibc_is_a_no_op(fresh):
    fresh.setattr(allocator, "_glibc_mallopt", lambda: None)
    assert allocator.retain_freed_memory() is False
    assert allocator.allocator_state() == {"applied": False, "reason": "not glibc malloc"}


# --- F6: the allocator hands glibc the documented values -----------------------------------------------------
def test_retain_freed_memory_passes_the_thresholds_in_bytes(monkeypatch):
    from pnnkit import allocator

    calls = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: (lambda param, value: calls.append((param, value)) or 1))
    monkeypatch.setattr(allocator, "_state", {"applied": False, "reason": "not requested"})
    assert allocator.retain_freed_memory() is True
    # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, and M_MMAP_MAX = 0: blocks above the threshold come from the heap too
    assert sorted(calls) == sorted([(-3, 32 * 2**20), (-1, 128 * 2**20), (-4, 0)])
    assert allocator.allocator_state()["large_blocks_on_heap"] is True
    calls.clear()
    allocator.retain_freed_memory(trim_threshold_mb=64, mmap_threshold_mb=16, large_blocks_on_heap=False)
    assert sorted(calls) == sorted([(-3, 16 * 2**20), (-1, 64 * 2**20)])
    assert allocator.allocator_state()["large_blocks_on_heap"] is False


@glibc
def test_training_and_readout_fits_apply_it_too(fresh):
    from torch import nn

    from pnnkit.training import fit_readout

    fit_readout(nn.Linear(3, 2), torch.randn(8, 3), torch.tensor([0, 1] * 4), max_iter=2)
    assert allocator.allocator_state()["applied"] is True


@glibc
def test_keeping_large_blocks_changes_no_result():
    """A readout fit whose full-batch tensors exceed 32 MiB (4,000 × 2,200 float32: 35.2 MB), with the heap policy
    off and on, each in its own process (the policy is process-wide; benchmarks/readout_refit_heap.py): the same
    loss and parameters to the last bit."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "readout_refit_heap.py"
    spec = importlib.util.spec_from_file_location("readout_refit_heap", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    off, on = bench.compare(samples=4000, features=2200, iters=3, repeats=1).values()
    assert off["allocator"]["applied"] is False and on["allocator"]["large_blocks_on_heap"] is True
    assert (off["loss"], off["parameters_sha256"]) == (on["loss"], on["parameters_sha256"])
