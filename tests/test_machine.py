"""What a run records about the machine it ran on."""

from __future__ import annotations

import torch

from pnnkit.machine import NUMERICS_ENV, machine_summary


def test_machine_summary_names_the_kernel_path_and_the_numerics_env(monkeypatch) -> None:
    for k in NUMERICS_ENV:
        monkeypatch.delenv(k, raising=False)
    m = machine_summary()
    assert m["env"] == {}
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and m["cpu"]
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # read at start-up by MKL: recorded, not applied, here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert machine_summary(threads=3)["env"] == {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
    assert machine_summary(threads=3)["torch_threads"] == 3
