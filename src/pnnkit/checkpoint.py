"""Pickle-free checkpoints: tensors in safetensors, structure and scalars in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import DataError

_T = "__tensor__"


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


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``path``.safetensors + ``path``.json atomically (JSON written last marks completion)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    tree = _split(state, "s", tensors)
    w, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    save_file(tensors, str(w) + ".tmp")
    Path(str(w) + ".tmp").replace(w)
    Path(str(j) + ".tmp").write_text(json.dumps(tree))
    Path(str(j) + ".tmp").replace(j)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    w, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (w.exists() and j.exists()):
        raise DataError(f"checkpoint {path} is incomplete or missing ({w.name}, {j.name})")
    try:
        tensors = load_file(str(w))
        tree = json.loads(j.read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read checkpoint {path}: {e}") from e
    return _join(tree, tensors)


