"""A Gaussian process of the fine energy over inverse interatomic distances.

GPMin (del Río et al., Phys. Rev. B 100, 104103 (2019)) fits a Gaussian process to the
energies and forces seen so far and steps to the minimum of its posterior mean. Its
squared-exponential kernel over Cartesian coordinates treats every direction alike, so a
stretched bond and a turned methyl group of the same length are equally far apart. Here the
kernel is over the inverse distances φ_p = 1 / r_ij of every pair with a free atom, as
Koistinen et al. (J. Chem. Theory Comput. 15, 6738 (2019)) do for elastic bands:

    k(x, x') = σ² exp(−|φ(x) − φ(x')|² / 2ℓ²).

A bond stretch changes φ a lot, a torsion of a soft ring or ligand little, so the process
extrapolates far along the flat valleys where Cartesian steps creep, and the energy is
invariant to rigid moves. On the 18 rattled Au4-6(SCH3)n starts on GFN2-xTB
(``benchmarks/hybrid_starts.py``) the hybrid's fine steps alone need 247 fine calls in all,
where they needed 417 with ASE GPMin's kernel and BFGS needs 630; every final energy is below
BFGS's. The scale ℓ = 0.2 Å⁻¹ and weight σ = 1 eV were the best of those tried: on the six
Au4 starts ℓ = 0.05 / 0.1 / 0.2 / 0.3 / 0.5 Å⁻¹ took 221 / 135 / 78 / 96 / 244 calls, and on
all 18 σ = 0.5 / 1 / 2 eV took 254 / 248 / 386.

The prior is a constant: as in GPMin the highest energy seen, but at most ``PRIOR_CAP`` above
the lowest. Away from the data the posterior mean rises to the prior, so a prior far above
the data (a start with compressed or stretched bonds, tens of eV up) keeps every step close
to the points: on the 18 starts 285 fine calls without the cap, 248 with it (these sweeps
in a loop of the process's steps alone, without the hybrid's switch to BFGS).

The observations are energies and gradients in the free Cartesian coordinates, through the
Jacobian J = ∂φ/∂x: the covariance of two gradients is J_a^T (∂²k/∂φ_a∂φ_b) J_b. Each row of
J has at most two non-zero 3-blocks (a pair's two atoms), so J is kept as one 3-vector per
pair and never built dense: a structure of N atoms needs memory linear in its pairs.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

# weight σ (eV), scale ℓ (Å⁻¹), noise of energies (eV) and of gradients (eV/Å)
HYPERPARAMETERS = (1.0, 0.2, 1e-3, 1e-3)
# eV; the prior constant is the highest energy seen, but at most this above the lowest
PRIOR_CAP = 10.0


class InverseDistanceGP:
    """The process over the free atoms' coordinates; the others stay where they are in
    ``positions``."""

    def __init__(self, positions: np.ndarray, free: np.ndarray):
        n = len(positions)
        i, j = np.triu_indices(n, 1)
        moving = free[i] | free[j]  # a pair of fixed atoms has a constant distance
        self.i, self.j = i[moving], j[moving]
        self.positions = positions.copy()
        self.free = free
        self.n_free = int(free.sum())
        # Each pair atom's row of free atoms; fixed atoms share a last, discarded one.
        row = np.full(n, self.n_free)
        row[free] = np.arange(self.n_free)
        self.row_i, self.row_j = row[self.i], row[self.j]
        self.weight2, self.scale2 = HYPERPARAMETERS[0] ** 2, HYPERPARAMETERS[1] ** 2
        self.phi: list[np.ndarray] = []  # per point: φ (pairs)
        self.dphi: list[np.ndarray] = []  # per point: ∂φ/∂x_i (pairs, 3); ∂φ/∂x_j is −that
        self.energy: list[float] = []
        self.gradient: list[np.ndarray] = []
        self.K = np.empty((0, 0))  # kernel matrix of every point's energy and gradient

    def __len__(self) -> int:
        return len(self.energy)

    def _features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = self.positions.copy()
        positions[self.free] = x.reshape(-1, 3)
        r = positions[self.i] - positions[self.j]
        d = np.linalg.norm(r, axis=1)
        return 1.0 / d, -r / d[:, None] ** 3

    def _push_forward(self, dphi: np.ndarray, v: np.ndarray) -> np.ndarray:
        """J v: a vector over the free coordinates to one over the pairs."""
        moved = np.vstack([v.reshape(-1, 3), np.zeros((1, 3))])  # fixed atoms do not move
        return (dphi * (moved[self.row_i] - moved[self.row_j])).sum(1)

    def _pull_back(self, dphi: np.ndarray, v: np.ndarray) -> np.ndarray:
        """J^T v: a vector over the pairs to one over the free coordinates."""
        out = np.zeros((self.n_free + 1, 3))
        pair = v[:, None] * dphi
        np.add.at(out, self.row_i, pair)
        np.add.at(out, self.row_j, -pair)
        return out[:-1].ravel()

    def _jacobian_product(self, dphi_a: np.ndarray, dphi_b: np.ndarray) -> np.ndarray:
        """J_a^T J_b over the free coordinates."""
        n = self.n_free + 1
        out = np.zeros((n, n, 3, 3))
        block = dphi_a[:, :, None] * dphi_b[:, None, :]
        np.add.at(out, (self.row_i, self.row_i), block)
        np.add.at(out, (self.row_j, self.row_j), block)
        np.add.at(out, (self.row_i, self.row_j), -block)
        np.add.at(out, (self.row_j, self.row_i), -block)
        return out[:-1, :-1].transpose(0, 2, 1, 3).reshape(3 * (n - 1), 3 * (n - 1))

    def update(self, x: np.ndarray, energy: float, forces: np.ndarray) -> None:
        """Add a fine point (free coordinates, energy, forces on them) and refit."""
        phi, dphi = self._features(x)
        self.phi.append(phi)
        self.dphi.append(dphi)
        self.energy.append(float(energy))
        self.gradient.append(-np.asarray(forces, dtype=float))
        self._grow_kernel()
        self._solve()

    def _block(self, a: int, b: int) -> np.ndarray:
        """Covariance of point a's (energy, gradient) with point b's."""
        d = self.phi[a] - self.phi[b]
        k = self.weight2 * np.exp(-0.5 * (d**2).sum() / self.scale2)
        pulled_ab = self._pull_back(self.dphi[a], d)  # J_a^T (φ_a − φ_b)
        pulled_ba = self._pull_back(self.dphi[b], -d)  # J_b^T (φ_b − φ_a)
        size = 3 * self.n_free + 1
        block = np.empty((size, size))
        block[0, 0] = k
        # cov(E_a, ∇E_b) = k J_b^T (φ_a − φ_b) / ℓ²; cov(∇E_a, E_b) = −k J_a^T (φ_a − φ_b) / ℓ²
        block[0, 1:] = -k * pulled_ba / self.scale2
        block[1:, 0] = -k * pulled_ab / self.scale2
        block[1:, 1:] = k * (self._jacobian_product(self.dphi[a], self.dphi[b]) / self.scale2
                             + np.outer(pulled_ab, pulled_ba) / self.scale2**2)
        return block

    def _grow_kernel(self) -> None:
        """Border the kernel matrix with the newest point's blocks; the older ones stay."""
        n, size = len(self), 3 * self.n_free + 1
        column = np.vstack([self._block(a, n - 1) for a in range(n)])
        column[-size:][np.diag_indices(size)] += np.r_[HYPERPARAMETERS[2] ** 2,
                                                       np.full(size - 1, HYPERPARAMETERS[3] ** 2)]
        K = np.empty((n * size, n * size))
        K[:-size, :-size] = self.K
        K[:, -size:] = column
        K[-size:, :-size] = column[:-size].T
        self.K = K

    def _solve(self) -> None:
        """The weights of the posterior mean, for the prior at the current energies."""
        n, size = len(self), 3 * self.n_free + 1
        energies = np.array(self.energy)
        self.prior = min(energies.max(), energies.min() + PRIOR_CAP)
        y = np.concatenate([np.r_[e - self.prior, g]
                            for e, g in zip(energies, self.gradient, strict=True)])
        alpha = cho_solve(cho_factor(self.K), y).reshape(n, size)
        self.alpha_energy = alpha[:, 0]
        # J_b α_b of the gradient weights, over the pairs: the mean needs only these
        self.alpha_pairs = np.array([self._push_forward(self.dphi[b], alpha[b, 1:])
                                     for b in range(n)])
        self.phi_data = np.array(self.phi)

    def mean(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Posterior mean energy at ``x`` and its gradient over the free coordinates."""
        phi, dphi = self._features(x)
        d = phi[None, :] - self.phi_data  # φ(x) − φ_b
        k = self.weight2 * np.exp(-0.5 * (d**2).sum(-1) / self.scale2)
        along = (d * self.alpha_pairs).sum(-1) / self.scale2
        energy = self.prior + float((k * (self.alpha_energy + along)).sum())
        dphi_mean = (k[:, None] * (self.alpha_pairs - d * (self.alpha_energy + along)[:, None])
                     ).sum(0) / self.scale2
        return energy, self._pull_back(dphi, dphi_mean)

    def step(self, x: np.ndarray, forces: np.ndarray | None = None) -> np.ndarray:
        """From ``x`` to the minimum of the posterior mean energy."""
        return minimize(self.mean, x, method="L-BFGS-B", jac=True).x - x
