"""The hyper-parameter search space: bounds, integer and log-scale parameters, YAML I/O.

The swarm moves in *internal* coordinates: the value itself, or its natural logarithm for a
``log: true`` parameter (so a swarm explores 1e-6 ... 1e-2 evenly by decade). Integer
parameters are rounded to the nearest integer in value space when a position becomes a
parameter dict (:meth:`SearchSpace.values`); positions themselves stay continuous.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from oamlm_dist.errors import InputError


@dataclass(frozen=True)
class Parameter:
    """One searched parameter.

    Parameters
    ----------
    name : str
        Parameter name (the key of the objective's parameter dict).
    low, high : float
        Inclusive bounds in value space, ``low < high`` (``low > 0`` when ``log``).
    type : {"float", "int"}
        Integer parameters are rounded to the nearest integer.
    log : bool
        Search uniformly in ``ln(value)`` instead of ``value``.
    """

    name: str
    low: float
    high: float
    type: str = "float"
    log: bool = False

    def __post_init__(self) -> None:
        if self.type not in ("float", "int"):
            raise InputError(f"search space: {self.name}: type must be int or float, "
                             f"not {self.type!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise InputError(f"search space: {self.name}: need finite low < high, got "
                             f"low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise InputError(f"search space: {self.name}: log: true needs low > 0")
        if self.type == "int" and math.floor(self.high) < math.ceil(self.low):
            raise InputError(f"search space: {self.name}: no integer in [{self.low}, "
                             f"{self.high}]")

    @property
    def bounds(self) -> tuple[float, float]:
        """Bounds in internal coordinates."""
        if self.log:
            return math.log(self.low), math.log(self.high)
        return float(self.low), float(self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "type": self.type, "log": self.log}


class SearchSpace:
    """An ordered set of :class:`Parameter` plus fixed values passed through unchanged."""

    def __init__(self, parameters: list[Parameter], fixed: Mapping[str, Any] | None = None):
        names = [p.name for p in parameters]
        if len(set(names)) != len(names):
            raise InputError(f"search space: repeated parameter in {names}")
        self.parameters = list(parameters)
        self.fixed = dict(fixed or {})
        overlap = set(names) & set(self.fixed)
        if overlap:
            raise InputError(f"search space: {sorted(overlap)} both searched and fixed")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Build from ``{name: {low, high, type, log} | {value: v}}``.

        An entry with ``value`` is fixed (passed to the objective, not searched).
        """
        if not isinstance(data, Mapping) or not data:
            raise InputError("search space: expected a mapping of parameter names to "
                             "{low, high, type, log} (or {value})")
        parameters, fixed = [], {}
        for name, entry in data.items():
            if not isinstance(entry, Mapping):
                raise InputError(f"search space: {name}: expected a mapping, got {entry!r}")
            if "value" in entry:
                fixed[str(name)] = entry["value"]
                continue
            unknown = sorted(set(entry) - {"low", "high", "type", "log"})
            if unknown or "low" not in entry or "high" not in entry:
                raise InputError(f"search space: {name}: give low and high (and optionally "
                                 f"type: int|float, log: true); unknown keys {unknown}")
            try:
                parameters.append(Parameter(str(name), float(entry["low"]),
                                            float(entry["high"]),
                                            str(entry.get("type", "float")),
                                            bool(entry.get("log", False))))
            except (TypeError, ValueError) as exc:
                raise InputError(f"search space: {name}: {exc}") from exc
        return cls(parameters, fixed)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SearchSpace:
        """Read a YAML search-space file (see :meth:`from_dict`)."""
        import yaml

        try:
            with open(path) as handle:
                data = yaml.safe_load(handle)
        except OSError as exc:
            raise InputError(f"{path}: cannot read search space ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from exc
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = {p.name: p.to_dict() for p in self.parameters}
        out.update({name: {"value": value} for name, value in self.fixed.items()})
        return out

    def subspace(self, names: set[str], fixed: Mapping[str, Any] | None = None) -> SearchSpace:
        """The parameters (and fixed values) named in ``names``, plus extra ``fixed``."""
        return SearchSpace([p for p in self.parameters if p.name in names],
                           {**{k: v for k, v in self.fixed.items() if k in names},
                            **(fixed or {})})

    # ---- coordinates -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def dim(self) -> int:
        return len(self.parameters)

    @property
    def lower(self) -> np.ndarray:
        return np.array([p.bounds[0] for p in self.parameters])

    @property
    def upper(self) -> np.ndarray:
        return np.array([p.bounds[1] for p in self.parameters])

    def values(self, x: np.ndarray) -> dict[str, Any]:
        """Parameter dict of one internal position (ints as ``int``), with the fixed values."""
        out: dict[str, Any] = {}
        for p, xi in zip(self.parameters, np.asarray(x, dtype=np.float64), strict=True):
            value = math.exp(xi) if p.log else float(xi)
            if p.type == "int":
                value = min(max(round(value), math.ceil(p.low)), math.floor(p.high))
            out[p.name] = value
        out.update(self.fixed)
        return out
