"""Input checks and conversions shared by the theory modules.

Malformed input (wrong lengths, negative rates, ...) raises a one-line
:class:`~jaxsched.errors.JaxschedError` naming the function and the argument.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxsched.errors import JaxschedError

__all__ = [
    "_INT_TOL",
    "_short",
    "_vec",
    "_num",
    "_same_len",
    "_ceil",
    "_arr",
    "_tup",
    "_class_prob",
]


_INT_TOL = 1e-9  # relative tolerance when rounding a real that should be an integer up



def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _vec(fn: str, name: str, values: Any, *, low: float | None = None, strict: bool = False,
         integer: bool = False) -> np.ndarray:
    """A non-empty finite 1-D float array, each entry ``>= low`` (``> low`` if strict)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise JaxschedError(f"{fn}: {name} must be a list of numbers, got {_short(values)}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise JaxschedError(f"{fn}: {name} must be a non-empty list of numbers, got {_short(values)}")
    if not np.all(np.isfinite(arr)):
        raise JaxschedError(f"{fn}: {name} must be finite, got {_short(values)}")
    if low is not None:
        bad = arr <= low if strict else arr < low
        if np.any(bad):
            op = ">" if strict else ">="
            raise JaxschedError(f"{fn}: every {name} must be {op} {low:g}, got {_short(values)}")
    if integer and not np.all(arr == np.round(arr)):
        raise JaxschedError(f"{fn}: {name} must be integers, got {_short(values)}")
    return arr


def _num(fn: str, name: str, value: Any, *, low: float | None = None, strict: bool = False,
         high: float | None = None, high_strict: bool = False, allow_inf: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise JaxschedError(f"{fn}: {name} must be a number, got {_short(value)}") from None
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise JaxschedError(f"{fn}: {name} must be finite, got {value!r}")
    if low is not None and (x <= low if strict else x < low):
        raise JaxschedError(f"{fn}: {name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    if high is not None and (x >= high if high_strict else x > high):
        raise JaxschedError(f"{fn}: {name} must be {'<' if high_strict else '<='} {high:g}, got {value!r}")
    return x


def _same_len(fn: str, **arrays: np.ndarray) -> int:
    sizes = {name: a.size for name, a in arrays.items()}
    first_name, n = next(iter(sizes.items()))
    for name, size in sizes.items():
        if size != n:
            raise JaxschedError(f"{fn}: {name} has {size} entries but {first_name} has {n}")
    return n


def _ceil(x: float) -> int:
    """``ceil`` that forgives floating-point noise just above an integer."""
    return int(math.ceil(x - _INT_TOL * max(1.0, abs(x))))


def _arr(x):
    """Pass arrays (numpy or jax) through untouched; turn lists and scalars into numpy."""
    return x if hasattr(x, "shape") else np.asarray(x, dtype=float)


def _tup(a) -> tuple:
    return tuple(float(v) for v in np.asarray(a, dtype=float).ravel())


def _class_prob(fn, n, rate, class_prob):
    if class_prob is not None:
        pi = _vec(fn, "class_prob", class_prob, low=0)
        if pi.size != n:
            raise JaxschedError(f"{fn}: class_prob has {pi.size} entries, expected {n}")
    elif rate is not None and np.sum(rate) > 0:
        pi = np.asarray(rate, float)
    else:
        pi = np.ones(n)
    if pi.sum() <= 0:
        raise JaxschedError(f"{fn}: class_prob sums to 0")
    return pi / pi.sum()
