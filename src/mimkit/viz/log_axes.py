"""Log-axis tick labels that do not collide. Matplotlib labels minor ticks (2x10^4, 3x10^4, ...) when an axis spans
about a decade, and those long labels overlap; here a log axis is labelled at powers of ten, plus 2 and 5 times
them when it spans under two decades, in a short form (2e4), and minor ticks stay unlabelled."""

from __future__ import annotations

import math
from typing import Any


def short_number(value: float) -> str:
    """500, 0.01, 2e4, 1.5e-05 -> '1.5e-5': at most four characters of digits for a tick."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    if -2 <= exponent <= 3:
        return f"{value:g}"
    return f"{value / 10**exponent:g}e{exponent}"


def readable_log_axes(fig: Any) -> None:
    """Apply to every log-scaled x or y axis of `fig` (call once its data are drawn, before saving)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in fig.axes:
        for axis, scale, limits in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            if scale != "log" or min(limits) <= 0:
                continue
            decades = math.log10(max(limits) / min(limits))
            axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades >= 2 else (1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda value, _: short_number(value)))
            axis.set_minor_formatter(NullFormatter())
