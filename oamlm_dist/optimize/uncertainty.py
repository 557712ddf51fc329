"""Ensemble uncertainty as the signal that ends an ML round and calls the fine calculator.

An ML round relaxes on the surrogate "model + (fine − model) at the last fine point", which
reproduces the fine forces there and relies on the model only for how forces *change*
nearby. So the uncertainty that matters is the ensemble's spread of those changes,

    δ_i(x) = 2.58 · sqrt( Σ_j ‖Δf_i^(j) − mean_j Δf_i^(j)‖² / (M − 1) ),
    Δf^(j) = f^(j)(x) − f^(j)(x_fine),

zero at the fine point and growing as the round moves where the members disagree. The round
halts at the first geometry where max δ_i over the free atoms exceeds the limit, and the
fine calculation goes there: to the point the model is least sure of, not a fixed distance.
An atom whose class had fewer than ``MIN_SUPPORT`` distinct training rows (none: a class the
ensemble never saw) counts as uncertain whatever its δ: all members then agree, however wrong
they are.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from oamlm_dist.active.ensemble import MIN_SUPPORT, ForceEnsemble, atomic_uncertainty
from oamlm_dist.errors import OamlmError


class UncertaintyGate:
    """``gate(atoms)`` is True where the ensemble's δ of force changes from ``reference``
    (a fine point's positions) exceeds ``limit`` eV/Å on a free atom, or where the ensemble
    cannot describe the structure or an atom's class (then ``largest`` is None)."""

    def __init__(self, ensemble: ForceEnsemble, atoms: Atoms, reference: np.ndarray,
                 free: np.ndarray, limit: float):
        self.ensemble = ensemble
        self.free = free
        self.limit = limit
        self.calls = 0
        self.largest: float | None = None  # max δ at the latest geometry tested
        reference_prediction = self._predict(atoms, reference)
        self.reference_forces = (None if reference_prediction is None
                                 else reference_prediction["member_forces"])

    def _predict(self, atoms: Atoms, positions: np.ndarray) -> dict | None:
        probe = atoms.copy()
        probe.set_constraint()
        probe.set_positions(positions, apply_constraint=False)
        probe.calc = None
        self.calls += 1
        try:
            return self.ensemble.predict(probe, unknown_classes=True)
        except OamlmError:
            return None

    def uncertainty(self, atoms: Atoms) -> np.ndarray | None:
        """δ_i of the force changes at ``atoms`` (None: the ensemble cannot describe it)."""
        prediction = self._predict(atoms, atoms.get_positions())
        if prediction is None or self.reference_forces is None:
            return None
        delta = atomic_uncertainty(prediction["member_forces"] - self.reference_forces)
        support = prediction["support"]
        return np.where((support >= 0) & (support < MIN_SUPPORT), np.inf, delta)

    def __call__(self, atoms: Atoms) -> bool:
        delta = self.uncertainty(atoms)
        largest = np.inf if delta is None else float(delta[self.free].max(initial=0.0))
        self.largest = largest if np.isfinite(largest) else None  # None: not measurable
        return largest > self.limit
