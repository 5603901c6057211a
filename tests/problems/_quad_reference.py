"""Independent 1-D references by adaptive scipy quadrature (no dualdiff integration code).

The integrand's mass is located by brute force on a very wide, dense grid (independent of any
box the library would choose), then integrated with ``scipy.integrate.quad`` on each run of
points within 60 nats of the maximum (expanded by a margin).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.integrate import quad

L = 4000.0
N_LOCATE = 800_001


def mass_intervals(
    log_f: Callable[[np.ndarray], np.ndarray],
) -> tuple[list[tuple[float, float]], float]:
    x = np.linspace(-L, L, N_LOCATE)
    v = log_f(x)
    top = float(np.max(v))
    keep = v > top - 60.0
    idx = np.flatnonzero(keep)
    runs, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if i > prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    h = x[1] - x[0]
    out = [(x[a] - 20 * h - 5.0, x[b] + 20 * h + 5.0) for a, b in runs]
    return out, top


def integrate(
    log_f: Callable[[np.ndarray], np.ndarray], fs: list[Callable[[np.ndarray], np.ndarray]]
) -> tuple[float, list[float]]:
    """``log int e^{log_f}`` and ``E[f]`` for each ``f`` under the normalised density."""
    iv, top = mass_intervals(log_f)
    z, moments = 0.0, [0.0] * len(fs)
    for a, b in iv:
        z += quad(
            lambda t: math.exp(float(log_f(np.array([t]))[0]) - top),
            a,
            b,
            limit=400,
            epsabs=0,
            epsrel=1e-12,
        )[0]
        for j, f in enumerate(fs):
            moments[j] += quad(
                lambda t, f=f: (
                    math.exp(float(log_f(np.array([t]))[0]) - top) * float(f(np.array([t]))[0])
                ),
                a,
                b,
                limit=400,
                epsabs=0,
                epsrel=1e-12,
            )[0]
    return top + math.log(z), [mm / z for mm in moments]


def gauss_mix_logpdf(
    w: np.ndarray, mu: np.ndarray, var: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    w = np.asarray(w, float) / np.sum(w)

    def f(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)[..., None]
        lc = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mu) ** 2 / var
        m = lc.max(-1, keepdims=True)
        return (m + np.log(np.exp(lc - m).sum(-1, keepdims=True)))[..., 0]

    return f
