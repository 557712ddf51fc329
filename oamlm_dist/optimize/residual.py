"""A linear model of the fine-minus-ML force residual, learnt from the fine points.

The hybrid's surrogate is the ML force field plus the residual r = f_fine − f_ML. Taking r
constant (its value at the latest fine point) trusts the model's force *changes* entirely;
near a minimum, where forces are small, the model's errors in those changes dominate and the
surrogate's minimum misses the fine one. Here r is linear around the latest fine point x_k,

    r(x) ≈ r_k + B (x − x_k),

with B (over the free coordinates, symmetric like the Hessian difference it estimates)
updated after every fine point by the Powell-symmetric-Broyden formula so that the secant
condition B (x_k − x_{k−1}) = r_k − r_{k−1} holds: the surrogate then reproduces the fine
forces at the previous fine point too, not only at the latest one. B starts at zero (the
model's own Hessian), so a model that predicts force changes well keeps B near zero, and a
model that knows nothing (a constant) leaves a quasi-Newton method on the fine forces.

B is only used while it earns its place: each new fine point tests the B fitted before it,
and B counts as ``predictive`` when r_{k−1} + B (x_k − x_{k−1}) was closer to r_k than the
constant r_{k−1}. Secants from far-off, anharmonic stretches (a distorted start) or from a
model whose force changes are already right leave a B that predicts worse than nothing; the
surrogate then takes the residual as constant.
"""

from __future__ import annotations

import numpy as np

# Steps shorter than this (Å, over all free coordinates) carry no usable secant information.
MIN_STEP = 1e-6


class ResidualJacobian:
    """B of the module docstring, over the coordinates of the ``free`` atoms."""

    def __init__(self, free: np.ndarray):
        self.free = free
        n = 3 * int(free.sum())
        self.matrix = np.zeros((n, n))
        self.updates = 0
        self.predictive = False  # did the latest B predict the residual change better than 0?

    def update(self, step: np.ndarray, residual_change: np.ndarray) -> None:
        """PSB update from a step between two fine points (positions, all atoms) and the
        change of the residual forces between them (all atoms)."""
        s = step[self.free].ravel()
        ss = s @ s
        if np.sqrt(ss) < MIN_STEP:
            return
        change = residual_change[self.free].ravel()
        miss = change - self.matrix @ s
        self.predictive = bool(np.linalg.norm(miss) < np.linalg.norm(change))
        self.matrix += (np.outer(miss, s) + np.outer(s, miss)) / ss \
            - (s @ miss) * np.outer(s, s) / ss**2
        self.updates += 1

    def forces(self, displacement: np.ndarray) -> np.ndarray:
        """B·(x − x_k) as forces on all atoms (zero on fixed ones)."""
        out = np.zeros_like(displacement)
        out[self.free] = (self.matrix @ displacement[self.free].ravel()).reshape(-1, 3)
        return out
