from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property-based tests draw the same examples on every run (the suite is deterministic); failures still shrink.
settings.register_profile("pnnkit", derandomize=True, deadline=None)  # no timing in unit tests
settings.load_profile("pnnkit")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# Loaders read $PNNKIT_DATA_DIR; default to the shared data sets beside the checkout (as .ci/run does).
if "PNNKIT_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PNNKIT_DATA_DIR"] = str(SHARED_DATA)


# One intra-op thread: the suite's tensors are small (threads add overhead, not speed) and results stay
# bit-reproducible whatever else runs on the machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    d = Path(os.environ.get("PNNKIT_DATA_DIR", SHARED_DATA))
    if not d.is_dir():
        pytest.skip(f"shared data directory {d} not present (set PNNKIT_DATA_DIR)")
    return d
