"""``pnnkit bench … --quick``: every benchmark runs and writes the JSON contract. No timing thresholds here —
speed goals live in the benchmarks' own ``goals``, never in timed unit tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pnnkit.cli import app
from pnnkit.provenance import source_revision

BENCHMARKS = ("overhead", "latency", "queries", "labs", "scaling")


def _check_contract(res: dict, name: str) -> None:
    assert res["benchmark"] == name
    m = res["machine"]
    for key in ("cpu", "cpu_capability", "cores", "torch", "torch_threads", "load_average_start", "loaded", "date"):
        assert key in m, key
    assert m["source"] == source_revision()  # the code's commit (None outside a git checkout)
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
    assert bad.exit_code == 2 and "unknown lab(s) ['nope']" in bad.output and isinstance(bad.exception, SystemExit)


# --- bad input: one-line errors (exit 2, no traceback) before anything runs; nothing measured is lost ------------
def _error_line(output: str) -> str:
    """The one line of typer's error panel that carries the message (the panel is as wide as the terminal, set
    wide here so that a long path is not wrapped)."""
    lines = [ln.strip("│ ") for ln in output.splitlines() if ln.startswith("│")]
    assert len(lines) == 1, output  # one line, not a traceback
    return lines[0]


@pytest.fixture
def no_run(monkeypatch):
    """Make every benchmark's ``run`` fail loudly: a bad-input test must stop before anything is measured."""
    import importlib

    calls = []
    for name in BENCHMARKS:
        mod = importlib.import_module(f"pnnkit.bench.{name}")
        monkeypatch.setattr(mod, "run", lambda *a, _n=name, **k: calls.append(_n) or pytest.fail(f"{_n} ran"))
    return calls


def _bad(args: list[str], no_run) -> str:
    res = CliRunner(env={"COLUMNS": "1000"}).invoke(app, ["bench", *args])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # refused, not a crash
    assert no_run == []
    return _error_line(res.output)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_bench_out_that_is_a_directory_is_refused_before_running(name, tmp_path, no_run):
    adir = tmp_path / "adir"
    adir.mkdir()
    msg = _bad([name, "--quick", "--out", str(adir)], no_run)
    assert f"Invalid value for '--out': {adir} is a directory; give a file path, e.g. {adir / 'results.json'}" in msg
    assert list(adir.iterdir()) == []


def test_bench_out_below_a_file_or_in_an_unwritable_place_is_refused(tmp_path, no_run):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (afile / "x.json", afile / "sub" / "x.json"):
        msg = _bad(["latency", "--quick", "--out", str(out)], no_run)
        assert f"cannot create {out}: {afile} is not a directory" in msg
    assert afile.read_text() == "keep"
    if Path("/proc/self").is_dir():  # a place no one can create files in, not even root
        msg = _bad(["labs", "--quick", "--out", "/proc/pnnkit-bench.json"], no_run)
        assert "cannot create /proc/pnnkit-bench.json: cannot write in /proc" in msg


def test_bench_queries_refuses_an_out_whose_plot_path_is_unusable(tmp_path, no_run):
    msg = _bad(["queries", "--quick", "--out", str(tmp_path / "r.png")], no_run)
    assert "the plot is written to <out>.png, which would be the results file itself; give a .json path" in msg
    (tmp_path / "q.png").mkdir()
    msg = _bad(["queries", "--quick", "--out", str(tmp_path / "q.json")], no_run)
    assert f"the plot goes beside the results, to {tmp_path / 'q.png'}, which is a directory" in msg
    assert not (tmp_path / "q.json").exists() and not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("args", [["--batch", "0"], ["--batch", "-4"], ["--batch", "16", "--batch", "0"],
                                  ["--depth", "0"], ["--depth", "-1"], ["--repeats", "0"]])
def test_bench_overhead_sizes_must_be_positive(args, no_run):
    msg = _bad(["overhead", "--quick", "--lab", "shg", *args], no_run)
    assert f"Invalid value for '{args[-2]}': Input should be greater than or equal to 1" in msg


def test_bench_overhead_unknown_lab_is_refused_before_running(no_run):
    msg = _bad(["overhead", "--quick", "--lab", "shg", "--lab", "nope"], no_run)
    assert "unknown lab(s) ['nope']; choose from ['oscillators', 'shg']" in msg


def test_bench_overhead_measures_a_repeated_value_once(monkeypatch):
    from pnnkit.bench import overhead

    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(overhead, "run", fake_run)
    res = CliRunner().invoke(app, ["bench", "overhead", "--lab", "shg", "--lab", "shg", "--batch", "16", "--batch",
                                   "8", "--batch", "16", "--depth", "2", "--depth", "2"])
    assert res.exit_code == 0, res.output
    assert (seen["labs"], seen["batches"], seen["depths"]) == (["shg"], [16, 8], [2])


def _fake_result(name: str) -> dict:
    from pnnkit.bench.common import goal, machine_info, result

    return result(name, machine_info(1), [{"a": 1.5}], [goal("g", 1.0, 2.0, "<=")], settings={"x": 1})


def test_bench_results_survive_an_out_that_cannot_be_written_at_the_end(tmp_path, monkeypatch):
    import tempfile

    from pnnkit.bench import latency

    out = tmp_path / "r.json"
    saved = tmp_path / "tmp"
    saved.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(saved))

    def run_then_block(**kw):  # the path was fine when checked, but is a directory by the time results are written
        out.mkdir()
        return _fake_result("latency")

    monkeypatch.setattr(latency, "run", run_then_block)
    res = CliRunner().invoke(app, ["bench", "latency", "--quick", "--out", str(out)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "goals" in res.output  # the tables were printed first
    [line] = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    [fallback] = list(saved.glob("pnnkit-bench-latency-*.json"))
    assert line == f"error: could not write the results to {out} (Is a directory); the results were saved to {fallback} instead"
    data = json.loads(fallback.read_text())  # everything the run returned
    assert (data["benchmark"], data["rows"], data["settings"]) == ("latency", [{"a": 1.5}], {"x": 1})
    assert list(out.iterdir()) == []


def test_bench_queries_keeps_its_results_when_the_plot_cannot_be_written(tmp_path, monkeypatch):
    from pnnkit.bench import queries

    def fail(*a):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(queries, "_plot", fail)
    why = queries.save_plot({}, {}, tmp_path / "q.png")
    assert why == f"could not write the plot to {tmp_path / 'q.png'} (Permission denied)"


def test_paired_comparison_counts_discordant_items_and_tests_them():
    from pnnkit.bench.common import format_paired, paired_comparison

    # 10 items: both right 4, only A right 1, only B right 4, both wrong 1
    a = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
    c = paired_comparison([bool(v) for v in a], [bool(v) for v in b])
    assert (c["both_right"], c["only_a"], c["only_b"], c["both_wrong"]) == (4, 1, 4, 1)
    assert c["accuracy_a"] == pytest.approx(0.5) and c["accuracy_b"] == pytest.approx(0.8)
    assert c["b_minus_a_points"] == pytest.approx(30.0)
    assert c["paired_se_points"] == pytest.approx(math.sqrt(5) * 10)
    assert c["mcnemar_p"] == pytest.approx(12 / 32)  # exact two-sided binomial: P(≤ 1 or ≥ 4 of 5) = 12/32
    assert format_paired(c) == ("both right 4, only A 1, only B 4, both wrong 1\n"
                                "B − A: +30.00 points, paired SE ≈ √(only A + only B)/n = 22.36 points, "
                                "McNemar exact p = 0.375")
    assert paired_comparison([True], [True])["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_comparison([True, False], [True])
