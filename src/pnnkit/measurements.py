"""Measured data sets (x, θ) → y: space-filling acquisition from a system and HDF5 storage."""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from scipy.stats import qmc
from torch import Tensor

from .config import SEED_LIMIT
from .errors import ConfigError, DataError
from .spec import SystemSpec
from .system import PhysicalSystem, clamp_to_range

FORMAT = "pnnkit.measurements/1"
_WIDE = ".f8"  # suffix of a dataset being rewritten as float64 (MeasurementLog._widen)


@dataclass
class MeasurementSet:
    """Measurements of one system: ``x`` (N, in), ``params[name]`` (N, *shape), ``y`` (N, R, out).

    ``R`` repeated measurements of the same (x, θ) estimate the device noise. ``meta`` carries the seed, date,
    design and anything else worth keeping with the data.
    """

    spec: SystemSpec
    x: Tensor
    params: dict[str, Tensor]
    y: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MeasurementSet({self.spec.name!r}, {self.x.shape[0]} samples × {self.y.shape[1]} repeats, "
                f"in={self.spec.input_dim}, out={self.spec.output_dim}, params={self.spec.param_names})")

    def __post_init__(self) -> None:
        spec = self.spec
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise DataError("measurements: x and y must be torch tensors")
        n = self.x.shape[0]
        if self.y.dim() == 2:
            self.y = self.y.unsqueeze(1)
        if self.x.dim() != 2 or self.x.shape[1] != spec.input_dim:
            raise DataError(f"measurements of {spec.name!r}: x must be (N, {spec.input_dim}), got {tuple(self.x.shape)}")
        if self.y.dim() != 3 or self.y.shape[2] != spec.output_dim:
            raise DataError(f"measurements of {spec.name!r}: y must be (N, repeats, {spec.output_dim}), got "
                            f"{tuple(self.y.shape)}")
        if set(self.params) != set(spec.param_names):
            raise DataError(f"measurements of {spec.name!r}: parameters {sorted(self.params)} do not match the spec "
                            f"{spec.param_names}")
        for p in spec.params:
            if tuple(self.params[p.name].shape[1:]) != p.shape:
                raise DataError(f"measurements of {spec.name!r}: parameter {p.name!r} must be (N, *{p.shape}), got "
                                f"{tuple(self.params[p.name].shape)}")
        if self.y.shape[0] != n or any(v.shape[0] != n for v in self.params.values()):
            raise DataError("measurement arrays disagree on the number of samples")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def y_mean(self) -> Tensor:
        return self.y.mean(dim=1)

    def noise_std(self) -> Tensor | None:
        """Per-output noise std estimated from repeats (``None`` with a single repeat)."""
        if self.y.shape[1] < 2:
            return None
        return self.y.std(dim=1, unbiased=True).pow(2).mean(dim=0).sqrt()

    def subset(self, idx: Tensor) -> "MeasurementSet":
        return MeasurementSet(self.spec, self.x[idx], {k: v[idx] for k, v in self.params.items()}, self.y[idx], dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """Write an HDF5 file (datasets ``x``, ``y``, ``params/<name>``; spec, units and meta as attributes).

        An existing file at ``path`` is never overwritten: it is renamed with its modification time appended.
        """
        path = Path(path)
        if path.is_dir():
            raise DataError(f"{path} is a directory; give a file name (e.g. {path / 'measurements.h5'})")
        path.parent.mkdir(parents=True, exist_ok=True)
        keep_existing(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["spec"] = json.dumps(self.spec.to_dict())
            f.attrs["meta"] = json.dumps(self.meta, default=str)
            z = {"compression": "gzip", "compression_opts": 1, "shuffle": True}  # θ repeats within a setting
            dx = f.create_dataset("x", data=self.x.cpu().numpy(), **z)
            dx.attrs["unit"] = self.spec.input_unit
            dy = f.create_dataset("y", data=self.y.cpu().numpy(), **z)
            dy.attrs["unit"] = self.spec.output_unit
            dy.attrs["axes"] = "sample, repeat, output"
            g = f.create_group("params")
            for p in self.spec.params:
                d = g.create_dataset(p.name, data=self.params[p.name].cpu().numpy(), **z)
                d.attrs["unit"] = p.unit
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MeasurementSet":
        path = Path(path)
        if not path.exists():
            raise DataError(f"measurement file not found: {path}")
        if path.is_dir():
            raise DataError(f"{path} is a directory; give its .h5 file (e.g. {path / 'twin_measurements.h5'})")
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise DataError(f"{path} is not a pnnkit measurement file (format {f.attrs.get('format')!r})")
                spec = SystemSpec.from_dict(json.loads(f.attrs["spec"]))
                meta = json.loads(f.attrs["meta"])
                x = torch.from_numpy(f["x"][...])
                y = torch.from_numpy(f["y"][...])
                params = {p.name: torch.from_numpy(f["params"][p.name][...]) for p in spec.params}
        except (OSError, KeyError, ValueError, TypeError, ConfigError) as e:  # ValueError: a damaged JSON attribute;
            # TypeError: a spec with unknown fields, or a dataset of strings; ConfigError: a spec that does not hold
            raise DataError(" ".join(f"cannot read measurement file {path}: {e}".split())) from e
        return cls(spec, x, params, y, meta)


def keep_existing(path: Path, companions: Sequence[str] = ()) -> Path | None:
    """Rename an existing ``path`` to ``<stem>.<mtime>[.k]<suffix>`` so new data never replaces measured data.
    ``companions``: suffixes of files beside it that belong with it (a twin's ``.json``), renamed to the same
    stem. Returns the new name of ``path`` (None if nothing was there)."""
    files = [p for p in (path, *(path.with_suffix(s) for s in companions)) if p.exists()]
    if not files:
        return None
    stamp = _dt.datetime.fromtimestamp(files[0].stat().st_mtime, _dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem, k = f"{path.stem}.{stamp}", 1
    while any(path.with_name(stem + p.suffix).exists() for p in files):
        stem, k = f"{path.stem}.{stamp}.{k}", k + 1
    for p in files:
        p.rename(path.with_name(stem + p.suffix))
    return path.with_name(stem + path.suffix)


def _design(kind: str, dim: int, n: int, seed: int) -> np.ndarray:
    """``n`` space-filling points in ``[0, 1)^dim``."""
    if kind == "sobol":
        m = max(0, math.ceil(math.log2(max(n, 1))))
        pts = qmc.Sobol(d=dim, scramble=True, seed=seed).random_base2(m)[:n]
    elif kind == "lhs":
        pts = qmc.LatinHypercube(d=dim, seed=seed).random(n)
    elif kind == "random":
        pts = np.random.default_rng(seed).random((n, dim))
    else:
        raise ConfigError(f"unknown design {kind!r}; choose sobol, lhs or random")
    return pts


def acquire(
    system: PhysicalSystem,
    n_samples: int,
    *,
    inputs_per_setting: int = 64,
    design: str = "sobol",
    repeats: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> MeasurementSet:
    """Measure ``system`` on a space-filling design over its declared input and parameter ranges.

    Parameter settings (θ) come from one design over the θ box; for each setting a batch of
    ``inputs_per_setting`` inputs from a second design over the input box is measured in one call (devices
    change θ slowly and measure batches fast). Each call is repeated ``repeats`` times to estimate noise.
    """
    if not isinstance(system, PhysicalSystem):
        raise ConfigError(f"acquire: system must be a PhysicalSystem (make_lab(...), FunctionSystem(fn, spec) or a "
                          f"subclass), got {type(system).__name__}")
    counts = {"n_samples": n_samples, "inputs_per_setting": inputs_per_setting, "repeats": repeats, "seed": seed}
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ConfigError(f"acquire: {name} must be an integer, got {v!r}")
    if n_samples < 2 or inputs_per_setting < 1 or repeats < 1:
        raise ConfigError("acquire: need n_samples ≥ 2, inputs_per_setting ≥ 1, repeats ≥ 1")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"acquire: seed must be in 0 … 2**32 − 1, got {seed}")
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"acquire: dtype must be torch.float32 or torch.float64, got {dtype}")
    spec = system.spec
    n_set = math.ceil(n_samples / inputs_per_setting)
    n = n_set * inputs_per_setting
    pdim = spec.n_params
    theta_u = _design(design, pdim, n_set, seed) if pdim else np.zeros((n_set, 0))
    x_u = _design(design, spec.input_dim, n, seed + 1)
    x_all = torch.as_tensor(spec.input_low + (spec.input_high - spec.input_low) * x_u, dtype=dtype)
    x_all = clamp_to_range(x_all, spec.input_low, spec.input_high)
    ys, ps = [], {p.name: [] for p in spec.params}
    it = range(n_set)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"measuring {spec.name}", unit="setting")
    meta = {
        "seed": seed,
        "design": design,
        "inputs_per_setting": inputs_per_setting,
        "repeats": repeats,
        "system": spec.name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

    def measured() -> MeasurementSet:
        m = len(ys) * inputs_per_setting
        return MeasurementSet(spec, x_all[:m], {k: torch.cat(v) if v else torch.empty(0, *spec.param(k).shape)
                                                for k, v in ps.items()},
                              torch.cat(ys) if ys else torch.empty(0, repeats, spec.output_dim), meta)

    try:
        for s in it:
            off, params = 0, {}
            for p in spec.params:
                u = torch.as_tensor(theta_u[s, off : off + p.numel], dtype=dtype).reshape(p.shape)
                params[p.name] = clamp_to_range(p.low + (p.high - p.low) * u, p.low, p.high)
                off += p.numel
            xb = x_all[s * inputs_per_setting : (s + 1) * inputs_per_setting]
            ys.append(torch.stack([system(xb, params) for _ in range(repeats)], dim=1))
            for k, v in params.items():
                ps[k].append(v.expand(xb.shape[0], *v.shape))
    except BaseException as e:  # a device error or an interruption: the settings measured so far go with it
        if ys:
            e.partial_measurements = measured()  # type: ignore[attr-defined]
        raise
    return measured()


class MeasurementLog:
    """Append every call of a system — inputs, parameter setting, measured outputs — to an HDF5 file.

    Attach with ``system.attach_log(MeasurementLog(path, system.spec))``; each call is flushed to disk before the measurement is
    returned, so an interrupted run keeps everything it measured. Layout: ``x`` (N, in), ``y`` (N, out),
    ``call`` (N,) index into ``params/<name>`` (n_calls, *shape) — a shared θ is stored once per call.
    Values are stored exactly: as float32 while float32 holds them, and a dataset is rewritten as float64 the first
    time a value arrives that float32 would round (a float64 instrument or simulator, integer ADC codes above 2²⁴;
    integers are exact up to 2⁵³). HDF5 does not reuse the space of the float32 version (``h5repack`` reclaims it).
    """

    def __init__(self, path: str | Path, spec: SystemSpec) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        try:
            self._f = h5py.File(self.path, "a")
        except OSError as e:
            raise DataError(f"cannot open measurement log {self.path} as HDF5: {e}") from None
        f = self._f
        if len(f) and f.attrs.get("format") != FORMAT + "+log":  # never write into someone else's file
            f.close()
            raise DataError(f"{self.path} is not a pnnkit measurement log; choose a new file")
        if "x" not in f:
            f.attrs["format"] = FORMAT + "+log"
            f.attrs["spec"] = json.dumps(spec.to_dict())
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.create_dataset("x", (0, spec.input_dim), maxshape=(None, spec.input_dim), dtype="f4", chunks=True)
            f.create_dataset("y", (0, spec.output_dim), maxshape=(None, spec.output_dim), dtype="f4", chunks=True)
            # -1: a row resized but never written (a process killed mid-append) is told from call 0
            f.create_dataset("call", (0,), maxshape=(None,), dtype="i8", chunks=True, fillvalue=-1)
            g = f.create_group("params")
            for p in spec.params:
                g.create_dataset(p.name, (0, *p.shape), maxshape=(None, *p.shape), dtype="f4", chunks=True)
        elif SystemSpec.from_dict(json.loads(f.attrs["spec"])) != spec:
            f.close()
            raise DataError(f"measurement log {self.path} belongs to another system; choose a new file")
        self._finish_widening()
        self._lookup()
        self._repair()

    def _lookup(self) -> None:
        """Look the dataset handles up once (h5py's name lookup costs as much as a small measurement per call)."""
        f = self._f
        self._x, self._y, self._call = f["x"], f["y"], f["call"]
        self._params = {p.name: f["params"][p.name] for p in self.spec.params}

    def _finish_widening(self) -> None:
        """Complete a :meth:`_widen` cut short: its float64 copy is whole once the old dataset is gone."""
        f = self._f
        for name in ("x", "y", *(f"params/{p.name}" for p in self.spec.params)):
            tmp = name + _WIDE
            if tmp in f:
                if name in f:  # the copy may be unfinished; the original is intact
                    del f[tmp]
                else:
                    f.move(tmp, name)

    def _widen(self, d: h5py.Dataset) -> h5py.Dataset:
        """Rewrite a float32 dataset as float64, so that a reading finer than float32 is stored exactly. Copy
        first, then swap: a process killed in between leaves one whole version (:meth:`_finish_widening`)."""
        f, name = self._f, d.name.lstrip("/")
        if name + _WIDE in f:  # left by a widening that failed earlier in this process (disk full, say)
            del f[name + _WIDE]
        wide = f.create_dataset(name + _WIDE, d.shape, maxshape=d.maxshape, dtype="f8", chunks=True)
        for start in range(0, d.shape[0], 1 << 16):
            wide[start : start + (1 << 16)] = d[start : start + (1 << 16)]
        f.flush()
        del f[name]
        f.move(name + _WIDE, name)
        f.flush()
        self._lookup()
        return f[name]

    def _stored(self, d: h5py.Dataset, v: np.ndarray) -> tuple[h5py.Dataset, np.ndarray]:
        """``v`` as the dataset stores it: float32 when that is exact, else the dataset widened to float64."""
        if d.dtype == np.float64 or v.dtype == np.float32:
            return d, v
        with np.errstate(over="ignore"):  # beyond float32's range: inf here, so the dataset is widened below
            narrow = v.astype(np.float32)
        if v.dtype.itemsize <= 4 and v.dtype.kind == "f":  # float16: float32 holds it exactly
            return d, narrow
        if np.array_equal(narrow.astype(v.dtype), v, equal_nan=True):
            return d, narrow
        return self._widen(d), v

    def _repair(self) -> None:
        """Cut a call that was not written whole (the process killed inside :meth:`append`).

        A call's ``call`` rows are written last and commit it: ``x``/``y`` rows beyond them, θ rows beyond the last
        committed call, and a ``call`` tail left unfilled by a resize (its indices go backwards) are removed.
        """
        calls = self._call[...]
        n = len(calls)
        unwritten = np.flatnonzero(calls < 0)  # the fill value of a row resized but never written
        if len(unwritten):
            n = int(unwritten[0])
        if n > 1:  # logs written before the fill value was -1: an unwritten tail of zeros goes backwards
            back = np.flatnonzero(np.diff(calls[:n]) < 0)
            if len(back):
                n = int(back[0]) + 1
        n = min(n, self._x.shape[0], self._y.shape[0])
        m = int(calls[n - 1]) + 1 if n else 0
        if self.spec.params:
            m = min(m, *(d.shape[0] for d in self._params.values()))
            n = int(np.searchsorted(calls[:n], m))  # a call whose θ rows are missing is not whole either
        for d, size in ((self._x, n), (self._y, n), (self._call, n), *((d, m) for d in self._params.values())):
            if d.shape[0] != size:
                d.resize(size, axis=0)

    @staticmethod
    def _append(d: h5py.Dataset, v: np.ndarray) -> None:
        n = d.shape[0]
        d.resize(n + len(v), axis=0)
        d[n:] = v

    def append(self, x: Tensor, params: Mapping[str, Tensor], y: Tensor) -> None:
        """Write one call: its θ rows, then ``x`` and ``y``, then the ``call`` rows that commit it. Every array is
        built, and any dataset widened to float64, before the call's first row is written, so a conversion error
        leaves the file's rows as they were."""
        dsets = self._params
        call = dsets[self.spec.params[0].name].shape[0] if self.spec.params else int(self._call.shape[0])
        b = x.shape[0]
        batched = any(v.dim() > len(self.spec.param(k).shape) for k, v in params.items())
        rows: list[tuple[h5py.Dataset, np.ndarray]] = []
        for k, v in params.items():
            v = _real(v)
            shape = self.spec.param(k).shape
            if not batched:
                v = v[None]
            elif v.ndim == len(shape):  # a shared block in a call with per-sample θ: one row per sample too
                v = np.broadcast_to(v, (b, *shape))
            rows.append((dsets[k], v))
        rows += [(self._x, _real(x)), (self._y, _real(y))]
        # any widening (rare: the first reading finer than float32) comes before the call's first write
        stored = [self._stored(d, v) for d, v in rows]
        calls = np.arange(call, call + b) if batched else np.full(b, call)
        for d, v in stored:
            self._append(d, v)
        self._append(self._call, calls)
        self._f.flush()

    def append_refused(self, x: Tensor, params: Mapping[str, Tensor], reading: Any, why: str) -> str:
        """Keep a reading the system refused (wrong shape or type) as it came back, with the call's inputs, in
        ``refused/<k>``; returns that group's name. Such readings are not part of :meth:`to_measurements`."""
        g = self._f.require_group("refused").create_group(str(len(self._f["refused"])))
        g.attrs["why"] = why
        g.attrs["rows_before"] = int(self._x.shape[0])  # where it came in the stream of logged rows
        g.create_dataset("x", data=x.detach().cpu().numpy())
        for k, v in params.items():
            g.create_dataset(f"params/{k}", data=v.detach().cpu().numpy())
        data = reading.detach().cpu().numpy() if isinstance(reading, Tensor) else reading
        try:
            g.create_dataset("reading", data=np.ma.filled(data, np.nan) if isinstance(data, np.ma.MaskedArray)
                             else np.asarray(data))
        except (TypeError, ValueError):  # not storable as an array (e.g. objects): its text
            g.attrs["reading_repr"] = repr(reading)[:100_000]
        self._f.flush()
        return g.name

    def __len__(self) -> int:
        return int(self._f["x"].shape[0])

    def to_measurements(self) -> MeasurementSet:
        """The logged samples as a :class:`MeasurementSet` (e.g. extra twin data near the operating point). Rows
        whose output has NaN/inf (a failed measurement, kept in the file as it came back) are left out."""
        f = self._f
        call = torch.from_numpy(f["call"][...])
        # one dtype for all arrays: float64 as soon as any dataset was widened
        dt = torch.float64 if any(d.dtype == np.float64 for d in (self._x, self._y, *self._params.values())) \
            else torch.float32
        params = {p.name: torch.from_numpy(f["params"][p.name][...])[call].to(dt) for p in self.spec.params}
        x, y = torch.from_numpy(f["x"][...]).to(dt), torch.from_numpy(f["y"][...]).to(dt)
        ok = torch.isfinite(y).all(dim=1)
        if not bool(ok.all()):
            x, y, params = x[ok], y[ok], {k: v[ok] for k, v in params.items()}
        meta = {"source": str(self.path), "skipped_nonfinite": int((~ok).sum())}
        return MeasurementSet(self.spec, x, params, y, meta)

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()


def _real(v: Tensor) -> np.ndarray:
    """A logged tensor as a numpy array at its own precision: bfloat16 (which numpy lacks) as float32 and integers
    as float64, both exact (integers up to 2⁵³ in magnitude)."""
    a = v.detach().cpu()
    if a.dtype == torch.bfloat16:
        a = a.to(torch.float32)
    return (a if a.is_floating_point() else a.to(torch.float64)).numpy()
