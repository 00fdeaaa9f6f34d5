"""The supplement's toy numbers (../shared/notes/pat-math.md, beside the repository): forward 0.5 / 3 / 30 %, gradient gap at n=20: 33 % vs 10.5 %."""

from __future__ import annotations

import pytest

from pnnkit.toy import toy_row


@pytest.mark.parametrize("n, forward", [(1, 0.005), (5, 0.031), (20, 0.331)])
def test_forward_gap(n, forward):
    assert toy_row(n).forward_gap == pytest.approx(forward, rel=0.02)


def test_gradient_gaps_at_depth_20():
    r = toy_row(20)
    assert r.in_silico_grad_gap == pytest.approx(0.33, abs=0.01)
    assert r.pat_grad_gap == pytest.approx(1.005**20 - 1, rel=1e-6)  # PAT: only the slope error, 20 times
    assert r.pat_grad_gap < r.in_silico_grad_gap / 3
