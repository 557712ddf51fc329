"""The wrong-units check of ingest on real GFN2-xTB MD: never flagged at 300 or 750 K, with or
without energies; the same forces written in Hartree/Bohr are flagged."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from oamlm_dist.ingest import HARTREE_PER_BOHR, units_problem
from oamlm_dist.sample import RetryingCalculator
from oamlm_dist.structures import alkane
from tests.conftest import record_md


def xtb_md(temperature: float, n: int = 12) -> list:
    """``n`` consecutive frames of GFN2-xTB MD of ethane (1.5 fs steps), energies and forces."""
    atoms = alkane(2)
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(1))
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.calc = RetryingCalculator("xtb", {})
    return record_md(atoms, VelocityVerlet(atoms, timestep=1.5 * units.fs), n)


def rewritten(frames: list, force_scale: float, energies: bool) -> list:
    out = []
    for atoms in frames:
        copy = atoms.copy()
        results = {"forces": atoms.get_forces() * force_scale}
        if energies:
            results["energy"] = atoms.get_potential_energy()
        copy.calc = SinglePointCalculator(copy, **results)
        out.append(copy)
    return out


@pytest.mark.parametrize("temperature", [300.0, 750.0])
def test_real_xtb_md_passes_and_hartree_per_bohr_forces_are_flagged(temperature):
    trajectory = xtb_md(temperature, 24)
    frames = trajectory[:12]
    assert units_problem(frames) is None
    assert units_problem(rewritten(frames, 1.0, energies=False)) is None
    # Every other frame (3 fs apart) still passes.
    assert units_problem(trajectory[::2]) is None
    wrong = units_problem(rewritten(frames, 1 / HARTREE_PER_BOHR, energies=True))
    assert wrong is not None and "Hartree/Bohr" in wrong
