"""Ensemble uncertainty as the signal that ends an ML round and calls the fine calculator.

An ML round relaxes on the surrogate "model + (fine − model) at the last fine point", which
reproduces the fine forces there and relies on the model only for how forces *change*
nearby. So the uncertainty that matters is the ensemble's spread of those changes,

    δ_i(x) = 2.58 · sqrt( Σ_j ‖Δf_i^(j) − mean_j Δf_i^(j)‖² / (M − 1) ),
    Δf^(j) = f^(j)(x) − f^(j)(x_fine),

zero at the fine point and growing as the round moves where the members disagree. The round
halts at the first geometry where max δ_i over the free atoms exceeds the limit, and the
fine calculation goes there: to the point the model is least sure of, not a fixed distance.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from oamlm_dist.active.ensemble import ForceEnsemble, atomic_uncertainty
from oamlm_dist.errors import OamlmError


class UncertaintyGate:
    """``gate(atoms)`` is True where the ensemble's δ of force changes from ``reference``
    (a fine point's positions) exceeds ``limit`` eV/Å on a free atom, or where the ensemble
    cannot describe the structure at all."""

    def __init__(self, ensemble: ForceEnsemble, atoms: Atoms, reference: np.ndarray,
                 free: np.ndarray, limit: float):
        self.ensemble = ensemble
        self.free = free
        self.limit = limit
        self.calls = 0
        self.largest: float | None = 0.0  # max δ at the latest geometry tested (None: unknown)
        self.reference_forces = self._member_forces(atoms, reference)

    def _member_forces(self, atoms: Atoms, positions: np.ndarray) -> np.ndarray | None:
        probe = atoms.copy()
        probe.set_constraint()
        probe.set_positions(positions, apply_constraint=False)
        probe.calc = None
        self.calls += 1
        try:
            return self.ensemble.predict(probe)["member_forces"]
        except OamlmError:
            return None

    def uncertainty(self, atoms: Atoms) -> np.ndarray | None:
        """δ_i of the force changes at ``atoms`` (None: the ensemble cannot describe it)."""
        forces = self._member_forces(atoms, atoms.get_positions())
        if forces is None or self.reference_forces is None:
            return None
        return atomic_uncertainty(forces - self.reference_forces)

    def __call__(self, atoms: Atoms) -> bool:
        delta = self.uncertainty(atoms)
        self.largest = None if delta is None else float(delta[self.free].max(initial=0.0))
        return self.largest is None or self.largest > self.limit
