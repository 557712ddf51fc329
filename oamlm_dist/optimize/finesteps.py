"""Steps on the fine results alone, where the ML surrogate cannot be trusted.

Two rules over the free coordinates, both fed every fine point of the run (those reached by
ML rounds too):

* the default, a Gaussian process over inverse interatomic distances
  (:class:`~oamlm_dist.optimize.distance_gp.InverseDistanceGP`), fitted to the fine energies
  and forces, stepping from the best point to the minimum of its posterior mean as ASE's
  GPMin does. On 18 rattled Au4-6(SCH3)n rings on GFN2-xTB it needed 247 fine calls where
  GPMin's Cartesian kernel needed 417 and BFGS 630 (see that module).
* :class:`FineBFGS`: ASE's BFGS update and step rules, from the latest point. Its memory is
  one Hessian, where the process's grows with the square of points × coordinates.

:class:`FineSteps` takes the process's steps while it fits in ``GP_MAX_ROWS`` and BFGS's
after that (its Hessian has learnt from every point all along). Dropping old points from the
process instead would change its prior and lose the curvature it has learnt: on the rings
that turned 21 fine calls into 100.

It also takes BFGS's steps once ``GP_UPHILL_LIMIT`` of the process's steps have gone uphill
from the best point: a guard against a process that keeps overshooting. GPMin's Cartesian
kernel did, on the stretched staple of Au38(SCH3)24 (``benchmarks/au38_staple.py``): a step of
about one kernel scale (0.4 Å) whatever the forces overshot the stiff bonds, and on GPAW all
13 steps went uphill. Over inverse distances a stiff bond is a long way in the kernel's
metric, so the steps along it are short: on GFN1-xTB only the first of them went uphill
(1.5 eV), and the fine steps alone converged in 25 fine calls, 3.62 eV down, where ASE BFGS
(maxstep 0.05 Å) had descended 3.12 eV after 100 calls without converging.
"""

from __future__ import annotations

import numpy as np

from oamlm_dist.optimize.distance_gp import InverseDistanceGP

# rows of the process's kernel matrix (points × (coordinates + 1)): 290 MB; 55 points of a
# 36-atom ring, 12 of Au38(SCH3)24 with every atom free
GP_MAX_ROWS = 6000
# process steps that went uphill from the best point before the steps are BFGS's
GP_UPHILL_LIMIT = 2


class FineBFGS:
    """BFGS on fine forces (ASE's update and step rules)."""

    def __init__(self, n_coords: int, maxstep: float, alpha: float = 70.0):
        self.H = np.eye(n_coords) * alpha
        self.maxstep = maxstep
        self.previous: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, x: np.ndarray, energy: float, f: np.ndarray) -> None:
        if self.previous is not None:
            dx, df = x - self.previous[0], f - self.previous[1]
            a, dg = dx @ df, self.H @ dx
            b = dx @ dg
            if abs(a) > 1e-12 and abs(b) > 1e-12:
                self.H -= np.outer(df, df) / a + np.outer(dg, dg) / b
        self.previous = (x.copy(), f.copy())

    def step(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        omega, V = np.linalg.eigh(self.H)
        dx = V @ (f @ V / np.abs(omega))
        largest = np.linalg.norm(dx.reshape(-1, 3), axis=1).max(initial=0.0)
        return dx * (self.maxstep / largest) if largest > self.maxstep else dx


class FineSteps:
    """The process's steps (``gp``) while it fits in ``GP_MAX_ROWS`` and fewer than
    ``GP_UPHILL_LIMIT`` of them went uphill, BFGS's otherwise."""

    def __init__(self, positions: np.ndarray, free: np.ndarray, maxstep: float,
                 gp: bool = True):
        n_coords = 3 * int(free.sum())
        self.bfgs = FineBFGS(n_coords, maxstep)
        self.gp = InverseDistanceGP(positions, free) if gp else None
        self.gp_capacity = max(1, GP_MAX_ROWS // (n_coords + 1))  # points
        self.gp_uphill = 0

    @property
    def from_best(self) -> bool:
        """The process's steps start from the best point, BFGS's from the latest one."""
        return self.gp is not None

    def update(self, x: np.ndarray, energy: float, f: np.ndarray) -> None:
        self.bfgs.update(x, energy, f)
        if self.gp is None:
            return
        if len(self.gp) < self.gp_capacity:
            self.gp.update(x, energy, f)
        else:
            self.gp = None  # full: BFGS steps from here on, and its memory is freed

    def went_uphill(self) -> None:
        """The latest step (taken by :meth:`step`) ended above the best point."""
        if self.gp is None:
            return
        self.gp_uphill += 1
        if self.gp_uphill >= GP_UPHILL_LIMIT:
            self.gp = None  # overshooting: BFGS steps from here on

    def step(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        return (self.gp or self.bfgs).step(x, f)
