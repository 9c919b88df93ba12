"""What a Python model does with an input for a feature it lacks: the value that means "off" is
accepted (an upstream client sends every input, most at their neutral values), anything else is a
400 naming the input rather than a silently different answer.

Copied next to each model.py of a published repository (self-contained, numpy only).
"""

from __future__ import annotations

import numpy as np

ZERO = (0,)  # the default "off": 0, 0.0, False; for text, the empty string


def is_off(array: np.ndarray, off: tuple = ZERO) -> bool:
    """Empty, or every element one of the `off` values (text: empty strings)."""
    values = array.reshape(-1)
    if values.size == 0:
        return True
    if values.dtype == np.object_ or values.dtype.kind in "SU":
        return all((v.decode("utf-8") if isinstance(v, bytes) else str(v)) == "" for v in values.tolist())
    return bool(np.isin(values.astype(np.float64), np.asarray(off, dtype=np.float64)).all())


def refuse_unless_off(
    name: str, array: np.ndarray | None, off: tuple = ZERO, *, who: str, shown: str = ""
) -> None:
    """Raise (the client gets a 400) when `array` holds a value other than off; `shown`: the name the
    client used, when it differs from `name`."""
    if array is None or is_off(array, off):
        return
    called = f"'{shown}' ('{name}' here)" if shown else f"'{name}'"
    accepted = " or ".join(repr(v) for v in off) if off != ZERO else "0, false or empty"
    raise ValueError(f"input {called} is not supported by {who}: only {accepted}, which means off")
