"""Lab and task options are checked against the annotations of the parameters they go to (pnnkit.options)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pnnkit.errors import ConfigError
from pnnkit.labs import make_lab
from pnnkit.options import check_options
from pnnkit.tasks import load_task


@dataclass
class _Timing:
    step: float = 1.0
    label: str = "a"


def _target(n: int, rate: float = 1.0, name: str = "x", flag: bool = False, workers: int | None = None,
            timing: _Timing | None = None, blob: object = None, dtype: torch.dtype = torch.float32) -> None:
    """Stands for a lab constructor."""


def _error(*args) -> str:
    with pytest.raises(ConfigError) as info:
        check_options("lab 'demo'", _target, *args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_plain_values_are_validated_and_converted():
    out = check_options("lab 'demo'", _target, {"n": 49.0, "rate": "5e-6", "workers": None, "flag": True,
                                                 "blob": "anything", "unknown": "passed on"})
    assert out == {"n": 49, "rate": 5e-6, "workers": None, "flag": True, "blob": "anything", "unknown": "passed on"}
    assert type(out["n"]) is int and type(out["rate"]) is float


@pytest.mark.parametrize("options, msg", [
    ({"n": "abc"}, "lab 'demo': option 'n' must be int, got 'abc'"),
    ({"n": 1.5}, "lab 'demo': option 'n' must be int, got 1.5"),
    ({"n": True}, "lab 'demo': option 'n' must be int, got True"),
    ({"workers": True}, "lab 'demo': option 'workers' must be int or None, got True"),
    ({"rate": [1]}, "lab 'demo': option 'rate' must be float, got [1]"),
    ({"name": 3}, "lab 'demo': option 'name' must be str, got 3"),
    ({"flag": 3}, "lab 'demo': option 'flag' must be bool, got 3"),
    ({"timing": {"step": "fast"}}, "lab 'demo': option 'timing.step' must be float, got 'fast'"),
])
def test_a_value_of_the_wrong_type_is_named(options, msg):
    assert _error(options) == msg


def test_a_dataclass_mapping_is_checked_field_by_field():
    out = check_options("lab 'demo'", _target, {"timing": {"step": 2, "label": "b"}})
    assert out["timing"] == {"step": 2.0, "label": "b"}
    # an unknown field is named here, as a top-level option is, not left to the dataclass's TypeError
    with pytest.raises(ConfigError, match=r"^lab 'demo' option 'timing' has no option 'stp' \(did you mean 'step'\?\); "
                                          r"its options: label, step$"):
        check_options("lab 'demo'", _target, {"timing": {"stp": 2}})


def test_make_lab_names_a_bad_option_type():
    with pytest.raises(ConfigError, match=r"^lab 'oscillators': option 'n' must be int, got 'abc'$"):
        make_lab("oscillators", n="abc")
    with pytest.raises(ConfigError, match=r"^lab 'oscillators': option 'imperfections.coupling_error' must be float"):
        make_lab("oscillators", n=4, imperfections={"coupling_error": "big"})
    assert make_lab("oscillators", n=4.0).spec.input_dim == 4


def test_load_task_names_a_bad_option_type_and_seed():
    with pytest.raises(ConfigError, match=r"^task 'digits': option 'test_size' must be int, got 'abc'$"):
        load_task("digits", test_size="abc")
    with pytest.raises(ConfigError, match=r"^task 'digits': option 'seed' must be in 0 … 2\*\*32 − 1, got 4294967296$"):
        load_task("digits", seed=2**32)
    with pytest.raises(ConfigError, match=r"got -1$"):
        load_task("digits", seed=-1)
    assert load_task("digits", seed=2**32 - 1).n_features == 64


def test_a_structured_option_takes_a_mapping_and_a_dtype_takes_its_name():
    assert _error({"timing": "fast"}) == ("lab 'demo': option 'timing' must be a mapping of _Timing's fields (step, "
                                          "label), got 'fast'")
    assert check_options("lab 'demo'", _target, {"timing": None, "dtype": "float64"}) == {"timing": None,
                                                                                          "dtype": torch.float64}
    assert check_options("lab 'demo'", _target, {"dtype": torch.float32})["dtype"] is torch.float32
    for bad in ("float16", "complex128", torch.bfloat16, 64):
        assert _error({"dtype": bad}) == f"lab 'demo': option 'dtype' must be float32 or float64, got {bad!r}"
