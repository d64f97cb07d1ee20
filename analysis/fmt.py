"""Text formatting of numbers for report tables: fixed rounding, '-' for missing values."""

from __future__ import annotations

import math

import pandas as pd

MB = 1e6  # reports use decimal megabytes, as nccl-tests and the papers do


def is_missing(x: object) -> bool:
    """None, NA or NaN."""
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def fmt_sig(x: object, digits: int = 4) -> str:
    """`x` to about `digits` significant digits, fixed notation above 1e-4 ('-' if missing)."""
    if is_missing(x):
        return "-"
    v = float(x)  # type: ignore[arg-type]
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    # Below ~1e-4 fixed notation would need more than 6 decimals: say it in exponent form.
    return f"{v:.{digits - 1}e}" if decimals > 6 else f"{v:.{decimals}f}"


def fmt_fixed(x: object, decimals: int) -> str:
    """`x` with `decimals` decimals ('-' if missing)."""
    return "-" if is_missing(x) else f"{float(x):.{decimals}f}"  # type: ignore[arg-type]


def fmt_int(x: object) -> str:
    """Integer text ('-' if missing)."""
    return "-" if is_missing(x) else str(int(x))  # type: ignore[call-overload]


def fmt_mb(x: object) -> str:
    """Bytes `x` as decimal megabytes (10^6 bytes), 4 significant digits ('-' if missing)."""
    return "-" if is_missing(x) else fmt_sig(float(x) / MB)  # type: ignore[arg-type]


def fmt_text(x: object) -> str:
    """Text of `x`; '-' if missing or empty."""
    return "-" if is_missing(x) or x == "" else str(x)
