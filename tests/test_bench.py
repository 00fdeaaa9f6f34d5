"""``pnnkit bench … --quick``: every benchmark runs and writes the JSON contract. No timing thresholds here —
speed goals live in the benchmarks' own ``goals``, never in timed unit tests."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from pnnkit.cli import app

BENCHMARKS = ("overhead", "latency", "queries", "labs", "scaling")


def _check_contract(res: dict, name: str) -> None:
    assert res["benchmark"] == name
    m = res["machine"]
    for key in ("cpu", "cores", "torch", "torch_threads", "load_average_start", "loaded", "date"):
        assert key in m, key
    assert len(m["load_average_start"]) == 3
    assert isinstance(res["rows"], list) and res["rows"]
    assert all(isinstance(r, dict) and r for r in res["rows"])
    assert isinstance(res["goals"], list) and res["goals"]
    for g in res["goals"]:
        assert set(g) >= {"name", "value", "target", "direction", "met"}
        assert isinstance(g["name"], str) and g["name"]
        assert isinstance(g["value"], float) and isinstance(g["target"], float)
        assert g["direction"] in ("<=", ">=")
        assert isinstance(g["met"], bool)
        if math.isfinite(g["value"]):  # ``met`` is computed from value and target, never hand-set
            want = g["value"] <= g["target"] if g["direction"] == "<=" else g["value"] >= g["target"]
            assert g["met"] == want, g


@pytest.mark.parametrize("name", BENCHMARKS)
def test_bench_quick_writes_the_json_contract(name, tmp_path):
    out = tmp_path / f"{name}.json"
    res = CliRunner().invoke(app, ["bench", name, "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    _check_contract(data, name)
    assert "goals" in res.output  # the rich tables were printed
    if name == "queries":
        assert out.with_suffix(".png").exists()
        methods = {r["method"] for r in data["rows"]}
        assert methods == {"pat", "in_silico", "spsa", "cma", "nevergrad", "fd"}
    if name == "overhead":
        assert all(r["grads_identical"] for r in data["rows"])  # ours vs the authors' formulation
    if name == "latency":
        assert {r["overlap"] for r in data["rows"]} == {True, False}
        assert all(r["grads_identical"] for r in data["rows"])


def test_bench_group_is_registered():
    res = CliRunner().invoke(app, ["bench", "--help"])
    assert res.exit_code == 0
    for name in BENCHMARKS:
        assert name in res.output


def test_overhead_selects_labs_batches_and_depths(tmp_path):
    out = tmp_path / "o.json"
    res = CliRunner().invoke(app, ["bench", "overhead", "--quick", "--lab", "shg", "--batch", "16", "--depth", "2",
                                   "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    _check_contract(data, "overhead")
    assert [(r["lab"], r["batch"], r["depth"]) for r in data["rows"]] == [("shg", 16, 2)]
    r = data["rows"][0]
    assert data["settings"]["min_rounds"] == 1  # --repeats reached the benchmark
    assert r["grads_identical"] and r["digital_ms"] > 0 and r["rounds"] >= 1
    assert "allocator" in data["settings"]
    bad = CliRunner().invoke(app, ["bench", "overhead", "--quick", "--lab", "nope"])
    assert bad.exit_code == 2 and "unknown lab(s) ['nope']" in bad.output and "Traceback" not in bad.output
