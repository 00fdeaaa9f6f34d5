"""Performance benchmarks: ``pnnkit bench overhead | latency | queries | labs | scaling --out FILE.json``.

Each benchmark writes ``{"benchmark", "machine", "rows", "goals"}`` (see :mod:`pnnkit.bench.common`) and prints
rich tables. Speed goals live here, never in timed unit tests.
"""
