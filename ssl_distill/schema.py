"""Value checks declared on config dataclasses: `ranged` and `choice` fields, checked when a config loads.

    mask_ratio: float = ranged(0.75, "[0, 1)")
    center_on: str = choice("logits", ("logits", "probabilities"))

An interval is written as in mathematics, `inf` for no bound; None always passes (an unset optional);
list values are checked element by element. `check_values` walks a validated section with its schema
and raises ConfigError naming the key, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ssl_distill.errors import ConfigError


def _field(default: Any, metadata: dict[str, Any]) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def ranged(default: Any, interval: str) -> Any:
    """A dataclass field whose value must lie in `interval`, e.g. "[0, 1)", "(0, inf)", "[1, inf)"."""
    _parse(interval)
    return _field(default, {"interval": interval})


def choice(default: Any, choices: Sequence[Any]) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return _field(default, {"choices": tuple(choices)})


def _parse(interval: str) -> tuple[float, float, bool, bool]:
    text = interval.strip()
    if text[0] not in "[(" or text[-1] not in "])" or "," not in text:
        raise ValueError(f"interval must look like '[0, 1)', got {interval!r}")
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "[", text[-1] == "]"


def _inside(value: float, interval: str) -> bool:
    low, high, low_closed, high_closed = _parse(interval)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    return above and below


def check_values(node: Any, schema: type, where: str, prefix: str = "") -> None:
    """Raise ConfigError for the first value of `node` (a validated section) outside its declared range
    or choices; nested dataclass sections are checked too."""
    for spec in dataclasses.fields(schema):
        if spec.name not in node:
            continue
        value = node[spec.name]
        key = f"{prefix}{spec.name}"
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(default) and value is not None:
            check_values(value, type(default), where, f"{key}.")
            continue
        if value is None:
            continue
        if "interval" in spec.metadata:
            interval = spec.metadata["interval"]
            values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
            if not all(_inside(v, interval) for v in values):
                raise ConfigError(f"{where}: {key}={_show(value)} is out of range: it must lie in {interval}")
        if "choices" in spec.metadata and value not in spec.metadata["choices"]:
            options = ", ".join(map(str, spec.metadata["choices"]))
            raise ConfigError(f"{where}: {key}={_show(value)} is not one of: {options}")


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, Sequence) and not isinstance(value, str) else str(value)
