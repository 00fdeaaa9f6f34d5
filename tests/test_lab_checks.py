"""The labs' shared option rules (pnnkit.labs.checks.Allowed): what they admit, and their one-line refusals."""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pnnkit.errors import ConfigError
from pnnkit.labs.checks import Allowed, check, check_allowed_fields

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(lo=finite, width=st.floats(min_value=0.0, max_value=1e6), lo_open=st.booleans(), hi_open=st.booleans(),
       v=finite)
def test_a_bounded_rule_admits_exactly_its_interval(lo, width, lo_open, hi_open, v):
    hi = lo + width
    rule = Allowed(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    inside = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    assert rule.admits(v) == inside
    assert Allowed(lo=lo, lo_open=lo_open).admits(v) == (v > lo if lo_open else v >= lo)  # unbounded above


@pytest.mark.parametrize("v", [float("nan"), float("inf"), True, np.bool_(True), "1", None, [1.0]])
def test_a_number_rule_refuses_what_is_not_a_finite_number(v):
    assert not Allowed(lo=-1e9).admits(v)


def test_integer_flag_and_none_rules():
    count = Allowed(lo=1, lo_open=False, kind="int")
    assert count.admits(3) and count.admits(np.int64(3)) and not count.admits(3.0) and not count.admits(0)
    assert Allowed(kind="bool").admits(False) and Allowed(kind="bool").admits(np.bool_(True))
    assert not Allowed(kind="bool").admits(0)
    assert Allowed(none="one per CPU").admits(None) and not Allowed().admits(None)


def test_refusals_are_one_line_and_name_the_lab_option_rule_and_value():
    with pytest.raises(ConfigError) as e:
        Allowed(lo_open=False, hi=1.0, hi_open=True, unit=" V").check("mylab", "gain", 1.0)
    assert str(e.value) == "mylab: gain must be a number in [0, 1) V, got 1.0"
    with pytest.raises(ConfigError) as e:
        Allowed(lo=1, lo_open=False, kind="int", none="automatic").check("mylab", "workers", 0)
    assert str(e.value) == "mylab: workers must be an integer ≥ 1 or None (automatic), got 0"
    with pytest.raises(ConfigError) as e:
        Allowed(kind="bool").check("mylab", "ideal", "yes")
    assert str(e.value) == "mylab: ideal must be true or false, got 'yes'"


def test_values_are_shown_alike_by_both_checks_and_a_whole_real_is_not_shown_as_an_integer():
    # an integer option given 2.0 must not read "got 2"; a derived 0.1 × 12 reads 1.2; numpy scalars like Python's
    with pytest.raises(ConfigError, match=r"^mylab: steps must be an integer ≥ 1, got 2\.0$"):
        Allowed(lo=1, lo_open=False, kind="int").check("mylab", "steps", 2.0)
    with pytest.raises(ConfigError, match=r"^mylab: steps must be an integer ≥ 1, got 2\.0$"):
        check("mylab", "steps", 2.0, "an integer ≥ 1", integer=True)
    with pytest.raises(ConfigError, match=r"^mylab: gain must be a number in \[0, 1\), got 1\.2$"):
        Allowed(lo_open=False, hi=1.0, hi_open=True).check("mylab", "gain", 0.1 * 12)
    for value, text in ((np.float64(-3.0), "-3.0"), (np.int64(-3), "-3"), (np.float32(1.5), "1.5"),
                        (2e20, "2e+20"), (float("nan"), "nan"), ("fast", "'fast'")):
        with pytest.raises(ConfigError) as a:
            Allowed(lo_open=False, hi=1.0).check("mylab", "x", value)
        with pytest.raises(ConfigError) as b:
            check("mylab", "x", value, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        assert str(a.value) == str(b.value) == f"mylab: x must be a number in [0, 1], got {text}"


def test_check_allowed_fields_names_the_option_and_field():
    @dataclass
    class Timing:
        period: float = 1e-3
        steps: int = 4

    rules = {"period": Allowed(unit=" s"), "steps": Allowed(lo=1, lo_open=False, kind="int")}
    check_allowed_fields("mylab", Timing(), "timing", rules)  # the defaults pass
    with pytest.raises(ConfigError, match=r"^mylab: timing\.period must be a finite number > 0 s, got -0\.5$"):
        check_allowed_fields("mylab", Timing(period=-0.5), "timing", rules)
