"""pnnkit — physical neural networks trained with physics-aware training (PAT).

Public API (``__all__``; everything else is internal):
  systems   :class:`PhysicalSystem`, :class:`FunctionSystem`, :class:`SystemSpec`, :class:`ParamSpec`,
            :func:`clamp_to_range`, :func:`inner_bounds`
  layers    :class:`PhysicalLayer`, :class:`ParallelPhysical`, :class:`ElementwiseRescale`, :class:`Slice`,
            :class:`Pool`, :class:`Repeat`, :func:`set_mode`, :func:`using_mode`, :func:`project_parameters`,
            :func:`physical_layers`, :func:`pat_forward`, :func:`twin_vjp`, :func:`init_from_data`, ``MODES``
  twins     :class:`DigitalTwin`, :class:`MLPTwin`, :class:`FitReport`, :func:`fit_twin`, :func:`evaluate_twin`,
            :func:`register_twin`, :class:`MeasurementSet`, :class:`MeasurementLog`, :func:`acquire`
  labs      :func:`make_lab`, :func:`lab_names`
  training  :class:`Trainer`, :class:`TrainConfig`, :class:`TrainResult`, :class:`ClassificationTask`,
            :func:`save_weights`, :func:`load_weights`
  errors    :class:`PnnkitError` and subclasses
"""

from __future__ import annotations

from .checkpoint import load_weights, save_weights
from .errors import ConfigError, DataError, DeviceError, DivergenceError, PnnkitError, RangeError, ShapeError, TwinError
from .labs import lab_names, make_lab
from .layers import (
    MODES,
    ElementwiseRescale,
    ParallelPhysical,
    PhysicalLayer,
    Pool,
    Repeat,
    init_from_data,
    Slice,
    physical_layers,
    project_parameters,
    set_mode,
    using_mode,
)
from .measurements import MeasurementLog, MeasurementSet, acquire
from .pat import pat_forward, twin_vjp
from .spec import ParamSpec, SystemSpec
from .tasks import ClassificationTask
from .system import FunctionSystem, PhysicalSystem, clamp_to_range, inner_bounds
from .twins import DigitalTwin, FitReport, MLPTwin, evaluate_twin, fit_twin, register_twin
from .training import TrainConfig, Trainer, TrainResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataError", "DeviceError", "DivergenceError", "PnnkitError", "RangeError", "ShapeError", "TwinError",
    "lab_names", "make_lab",
    "MODES", "ElementwiseRescale", "ParallelPhysical", "PhysicalLayer", "Pool", "Repeat", "Slice", "init_from_data",
    "physical_layers", "project_parameters", "set_mode", "using_mode",
    "MeasurementLog", "MeasurementSet", "acquire", "pat_forward", "twin_vjp",
    "ParamSpec", "SystemSpec", "FunctionSystem", "PhysicalSystem", "clamp_to_range", "inner_bounds",
    "DigitalTwin", "FitReport", "MLPTwin", "evaluate_twin", "fit_twin", "register_twin",
    "TrainConfig", "Trainer", "TrainResult", "ClassificationTask", "save_weights", "load_weights",
    "__version__",
]
