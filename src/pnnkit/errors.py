"""Exception hierarchy. Every error pnnkit raises for bad input is a :class:`PnnkitError`."""

from __future__ import annotations


class PnnkitError(Exception):
    """Base class of all pnnkit errors."""


class ConfigError(PnnkitError, ValueError):
    """A configuration (YAML, constructor argument, CLI option) is invalid."""


class ShapeError(PnnkitError, ValueError):
    """A tensor has the wrong shape for the system or layer it is given to."""


class RangeError(PnnkitError, ValueError):
    """A value would leave the hard range declared by a physical system."""


class DeviceError(PnnkitError, RuntimeError):
    """A physical system (device or lab) failed or returned an invalid measurement."""


class TwinError(PnnkitError, RuntimeError):
    """A digital twin is missing, corrupt, or does not match its system."""


class DataError(PnnkitError, RuntimeError):
    """A data set or measurement file is missing or malformed."""


class DivergenceError(PnnkitError, FloatingPointError):
    """Training diverged: the loss became NaN or inf (a learning rate too large, a penalty too small)."""
