"""Power laws of held-out loss against one axis (params, compute, data), fitted with scipy with 1-sigma errors.

Two forms: `L = A * x^-alpha` (a straight line in log-log, fitted by least squares in log space, so every point
counts by its relative error) and, with at least 4 points, `L = E + A * x^-alpha` where E is the loss no scale
removes. The saturating form is kept only when it fits clearly better than the pure one (lower AIC), because with
few points E and alpha trade off and the pure law is the more honest summary. The comparison uses the small-sample
AICc, which never prefers 3 parameters at 4 points.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def _pure(logx: np.ndarray, log_a: float, alpha: float) -> np.ndarray:
    return log_a - alpha * logx


def _saturating(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    return e + a * np.power(x, -alpha)


def _aic(residuals: np.ndarray, k: int) -> float:
    """Small-sample AIC (AICc): plain AIC picks the 3-parameter law far too often at 4-6 points."""
    n = len(residuals)
    rss = float(np.sum(residuals**2))
    if n - k - 1 <= 0:
        return math.inf
    return n * math.log(max(rss, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def fit_power_law(
    x: list[float] | np.ndarray, y: list[float] | np.ndarray, form: str = "auto", x_next: float | None = None
) -> dict[str, Any]:
    """Fit y = A x^-alpha (form 'pure'), y = E + A x^-alpha ('saturating') or the better of both ('auto').

    Returns form, A, alpha, E (0 for pure) with *_err (1 sigma from the covariance), n, r2 (on log y), and, with
    `x_next` (default: one more geometric step beyond the largest x), the predicted loss there with its 1-sigma
    error by the delta method."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or len(np.unique(x)) < 3:
        raise ValueError(f"a power law needs at least 3 distinct x values, got {len(np.unique(x))}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fits need positive x and y")
    logx, logy = np.log(x), np.log(y)
    slope, intercept = np.polyfit(logx, logy, 1)
    (log_a, alpha), cov = curve_fit(_pure, logx, logy, p0=[intercept, -slope])
    pure = {
        "form": "pure",
        "params": np.array([0.0, math.exp(log_a), alpha]),
        "cov": _pure_cov(cov, math.exp(log_a)),
        "aic": _aic(logy - _pure(logx, log_a, alpha), 2),
    }
    best = pure
    if form in ("auto", "saturating") and len(x) >= 4:
        saturating = _fit_saturating(x, y, alpha, curve_fit)
        if saturating is None and form == "saturating":
            raise ValueError("the saturating law E + A x^-alpha did not converge on these points")
        if saturating is not None and (form == "saturating" or saturating["aic"] < pure["aic"] - 2):
            best = saturating
    elif form == "saturating":
        raise ValueError("the saturating form needs at least 4 points")
    e, a, alpha = (float(v) for v in best["params"])
    err = np.sqrt(np.clip(np.diag(best["cov"]), 0, None))
    predicted = np.log(_saturating(x, e, a, alpha))
    ss_res, ss_tot = float(np.sum((logy - predicted) ** 2)), float(np.sum((logy - logy.mean()) ** 2))
    if x_next is None:
        ordered = np.unique(x)
        x_next = float(ordered[-1] * ordered[-1] / ordered[-2])
    y_next, y_next_err = _predict(best["params"], best["cov"], x_next)
    return {
        "form": best["form"],
        "A": a,
        "alpha": alpha,
        "E": e,
        "A_err": float(err[1]),
        "alpha_err": float(err[2]),
        "E_err": float(err[0]),
        "n": int(len(x)),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "x_next": x_next,
        "predicted_next": y_next,
        "predicted_next_err": y_next_err,
    }


def _pure_cov(cov_log: np.ndarray, a: float) -> np.ndarray:
    """Covariance of (E=0, A, alpha) from that of (log A, alpha): dA = A dlogA."""
    jac = np.array([[a, 0.0], [0.0, 1.0]])
    full = np.zeros((3, 3))
    full[1:, 1:] = jac @ cov_log @ jac.T
    return full


def _fit_saturating(x: np.ndarray, y: np.ndarray, alpha0: float, curve_fit) -> dict[str, Any] | None:
    e0 = 0.5 * float(y.min())
    a0 = float((y.max() - e0) * x.min() ** max(alpha0, 1e-3))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, cov = curve_fit(
                _saturating,
                x,
                y,
                p0=[e0, a0, max(alpha0, 1e-3)],
                bounds=([0.0, 0.0, 0.0], [float(y.min()), np.inf, 10.0]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(cov)):
        return None
    residuals = np.log(y) - np.log(_saturating(x, *params))
    return {"form": "saturating", "params": params, "cov": cov, "aic": _aic(residuals, 3)}


def _predict(params: np.ndarray, cov: np.ndarray, x_next: float) -> tuple[float, float]:
    e, a, alpha = params
    value = float(_saturating(np.array([x_next]), e, a, alpha)[0])
    grad = np.array([1.0, x_next**-alpha, -a * x_next**-alpha * math.log(x_next)])
    return value, float(math.sqrt(max(grad @ cov @ grad, 0.0)))
