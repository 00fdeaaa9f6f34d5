"""Pickle-free persistence: checkpoints (tensors in safetensors, structure and scalars in JSON) and network weights
(:func:`save_weights` / :func:`load_weights`, one safetensors file)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .interrupts import interrupt_gate

_T = "__tensor__"
_SAVE = "pnnkit_save"  # the id of one save_checkpoint, in both files of the pair


def _split(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace every tensor in a nested dict/list with a reference and collect it in ``tensors``."""
    if isinstance(obj, Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_T: key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors), _split(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint value of type {type(obj).__name__}")


def _join(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if _T in obj:
            return tensors[obj[_T]]
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_join(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def write_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, then the file's permissions set from the umask like any other file the run
    writes (safetensors creates it readable by its owner only, so colleagues could not read shared weights)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (a set-and-restore would briefly apply
    umask 0 to files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``path``.safetensors + ``path``.json atomically (JSON written last marks completion)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    tree = _split(state, "s", tensors)
    w, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    save = uuid.uuid4().hex  # in both files: a pair from two different saves is recognised when read
    write_safetensors(tensors, str(w) + ".tmp", metadata={_SAVE: save})
    Path(str(j) + ".tmp").write_text(json.dumps({_SAVE: save, "state": tree}))
    with interrupt_gate() as gate:  # Ctrl-C waits until both files are in place
        gate.close()
        Path(str(w) + ".tmp").replace(w)
        Path(str(j) + ".tmp").replace(j)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a pair written by :func:`save_checkpoint`; a missing, unreadable or mismatched pair: :class:`DataError`."""
    path = Path(path)
    w, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (w.exists() and j.exists()):
        raise DataError(f"checkpoint {path} is incomplete or missing ({w.name}, {j.name})")
    try:
        tensors = load_file(str(w))
        tree = json.loads(j.read_text())
        if isinstance(tree, dict) and _SAVE in tree:  # checkpoints written since session 23 name their save
            with safe_open(str(w), "pt") as f:
                save = (f.metadata() or {}).get(_SAVE)
            if save != tree[_SAVE]:
                raise DataError(f"checkpoint {path}: {j.name} and {w.name} come from different saves (a save cut "
                                "short); start the method again, or restore the pair from a copy")
            tree = tree["state"]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # a damaged .json (e.g. bytes that are not UTF-8)
        raise DataError(f"cannot read checkpoint {path}: {j.name} is not JSON text ({e})") from e
    except (SafetensorError, OSError) as e:
        raise DataError(f"cannot read checkpoint {path}: {e}") from e
    try:
        return _join(tree, tensors)
    except (KeyError, TypeError, ValueError) as e:  # a .json from another save than the .safetensors beside it
        raise DataError(f"checkpoint {path}: {j.name} does not match {w.name} ({type(e).__name__}: {e}); "
                        "the pair comes from different saves") from None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` (``X.safetensors``) is the tensor half of a :func:`save_checkpoint` pair: its ``X.json`` is
    beside it and either file carries the save's marker, or it is named ``checkpoint.*`` (pairs written before the
    marker existed). Any name counts, e.g. ``checkpoint_before_readout_refit.safetensors``."""
    path = Path(path)
    j = path.with_suffix(".json")
    if path.suffix != ".safetensors" or not j.is_file():
        return False
    if path.stem == "checkpoint":
        return True
    try:
        with safe_open(str(path), "pt") as f:
            if _SAVE in (f.metadata() or {}):
                return True
    except (SafetensorError, OSError):
        pass
    try:
        with j.open("rb") as fh:  # save_checkpoint writes the marker first: {"pnnkit_save": ...
            return fh.read(len(_SAVE) + 2) == b'{"' + _SAVE.encode()
    except OSError:
        return False


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s ``state_dict`` (θ as stored: physical units, or logits for ``param_constraint: sigmoid``;
    digital weights; not a twin) to one safetensors file, as ``pnnkit run`` writes ``METHOD/model.safetensors``.
    Read it back with :func:`load_weights`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name (e.g. {path / 'model.safetensors'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
    return path


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model``: a file of :func:`save_weights` (a run's ``model.safetensors``), or the
    ``.safetensors`` of a checkpoint (its ``model`` part; :func:`is_checkpoint`), e.g. a run's
    ``checkpoint.safetensors`` or ``checkpoint_before_readout_refit.safetensors``. Errors name the file and what
    does not fit."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"weights file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"weights {path} is a directory; give its model.safetensors or checkpoint.safetensors")
    if is_checkpoint(path):
        ckpt = load_checkpoint(path)
        state = ckpt.get("model") if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ConfigError(f"{path.with_suffix('.json')} is not a checkpoint of pnnkit's trainer (no model part)")
    else:
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"cannot read weights {path} as safetensors: {e}") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]

    def some(label: str, items: list[str], sep: str = ", ", n: int = 4) -> list[str]:
        return [f"{label} {sep.join(items[:n])}" + (" …" if len(items) > n else "")] if items else []

    kinds = [f"{k} ({state[k].dtype})" for k, v in own.items()
             if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    problems = (some("missing", missing) + some("unexpected", unexpected) + some("shapes", shapes, "; ", 3)
                + some("not floating point:", kinds))
    if problems:
        hint = (f" ({path.name} of a trainer checkpoint is read with its {path.with_suffix('.json').name}, which is "
                "not beside it)" if path.stem == "checkpoint" and not path.with_suffix(".json").exists() else "")
        raise ConfigError(f"weights {path} do not fit this network: {'; '.join(problems)}{hint}")
    check_stored_values(model, state, path)
    model.load_state_dict(state)


def check_stored_values(model: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Refuse stored weights (``path``: where they were read) holding NaN or inf, or θ of a ``clamp`` physical layer
    outside its system's declared range."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"weights {path} hold NaN or inf in {', '.join(bad[:4])}" + (" …" if len(bad) > 4 else ""))
    _check_theta_ranges(model, state, path)


def _check_theta_ranges(model: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Refuse stored θ of a ``clamp`` physical layer outside its system's declared range: trained weights never hold
    one, so the file is from another lab (other ranges) or another ``param_constraint`` (sigmoid layers store
    unbounded logits under the same keys), and clamping it silently would deploy something else."""
    from .layers import PhysicalLayer

    for name, layer in model.named_modules():
        if not isinstance(layer, PhysicalLayer) or layer.param_constraint != "clamp":
            continue
        for p in layer.system.spec.params:
            v = state.get(f"{name}.theta.{p.name}" if name else f"theta.{p.name}")
            if v is None:  # a file of another network: load_state_dict names what is missing
                continue
            lo, hi = float(v.min()), float(v.max())
            if lo < p.low or hi > p.high:
                raise ConfigError(f"weights {path}: {name + '.' if name else ''}theta.{p.name} spans [{lo:.4g}, "
                                  f"{hi:.4g}], outside {layer.system.spec.name}'s range [{p.low:g}, {p.high:g}] "
                                  "(weights of another lab, or of a network with param_constraint: sigmoid?)")
