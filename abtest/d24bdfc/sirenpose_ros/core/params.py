"""Typed, ranged, documented parameters: one declaration serves the core, the ROS node and the CLIs.

Each core module declares its own ``PARAMS`` list of :class:`ParamSpec`. The ROS node declares
every spec as a ROS parameter (type, range, description) and the core validates values with
:func:`validate`, so a bad value is refused at start with a message naming what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable


class ParamError(ValueError):
    """A parameter value is invalid; the message says what is allowed."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any                      # bool, int, float or str; its type is the parameter type
    description: str
    min: float | None = None          # inclusive bounds for int/float
    max: float | None = None
    choices: tuple[str, ...] | None = None   # allowed values for str

    @property
    def type(self) -> type:
        return type(self.default)

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            return f"a {self.type.__name__} in [{lo}, {hi}]"
        return f"a {self.type.__name__}"

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to the spec's type, or raise ParamError."""
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                raise ParamError(f"parameter '{self.name}' = {value!r}: expected true or false")
            return value
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, t) or isinstance(value, bool) and t is not bool:
            raise ParamError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
        if t in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ParamError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ParamError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
        if t is str and self.choices is not None and value not in self.choices:
            raise ParamError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
        return value


def validate(specs: Iterable[ParamSpec], values: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``values``; unknown names and bad values raise ParamError."""
    specs = list(specs)
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(by_name))}")
    out = {s.name: s.default for s in specs}
    for name, value in values.items():
        out[name] = by_name[name].check(value)
    return out


def parse_value(text: str) -> Any:
    """A command-line value typed as ROS types ``-p name:=value`` (a YAML scalar).

    PyYAML (YAML 1.1) reads '1e-3' as a string; ROS users write it, so retry it as a float.
    """
    import yaml
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_assignments(items: Iterable[str], flag: str = "--param") -> dict[str, Any]:
    """``["name:=value", ...]`` -> ``{name: typed value}``; ParamError names a malformed item."""
    out = {}
    for item in items:
        if ":=" not in item:
            raise ParamError(f"{flag} {item!r}: expected NAME:=VALUE")
        name, text = item.split(":=", 1)
        out[name.strip()] = parse_value(text.strip())
    return out
