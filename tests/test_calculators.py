"""Fine calculators: forces against finite differences, the SCF retry, storage round trip."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from oamlm_dist.calculators import fine_single_point, make_calculator
from oamlm_dist.errors import InputError, SCFConvergenceError
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold_thiolate_ring, rattle


def central_difference(atoms, name, params, atom, axis, h):
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * h
        energies.append(fine_single_point(moved, name, params).energy)
    return -(energies[0] - energies[1]) / (2 * h)


@pytest.mark.gpaw
def test_gpaw_lcao_forces_match_finite_differences_and_round_trip(tmp_path):
    atoms = molecule("SH2")
    atoms.positions[1] *= 1.1  # stretched S–H bond: a force worth checking
    result = fine_single_point(atoms, "gpaw", {"mode": "lcao"})
    assert result.settings["mode"] == "lcao" and result.settings["xc"] == "PBE"
    atom, axis = np.unravel_index(np.abs(result.forces).argmax(), result.forces.shape)
    fd = central_difference(atoms, "gpaw", {"mode": "lcao"}, atom, axis, h=0.005)
    assert abs(result.forces[atom, axis]) > 0.1
    assert abs(result.forces[atom, axis] - fd) < 0.05
    stored = atoms.copy()
    stored.calc = SinglePointCalculator(stored, energy=result.energy, forces=result.forces)
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("fine", {"settings": result.settings})
    segment.append(FrameBatch.from_atoms([stored]))
    back = Store.open(tmp_path / "s.zarr").segment(segment.id).read()[0]
    assert back.get_potential_energy() == result.energy
    assert np.array_equal(back.get_forces(), result.forces)
    assert Store.open(tmp_path / "s.zarr").segment(segment.id).attrs["settings"]["mode"] == "lcao"


def test_xtb_ring_forces_match_finite_differences():
    atoms = rattle(gold_thiolate_ring(4), 0.05, seed=1)
    result = fine_single_point(atoms, "xtb", {})
    for atom, axis in ((0, 0), (4, 2), (len(atoms) - 1, 1)):
        fd = central_difference(atoms, "xtb", {}, atom, axis, h=1e-3)
        assert abs(result.forces[atom, axis] - fd) < 0.01, (atom, axis)


def test_scf_failure_is_retried_with_safer_settings_and_recorded():
    atoms = gold_thiolate_ring(4)
    result = fine_single_point(atoms, "xtb", {"max_iterations": 1})
    outcomes = [a["outcome"] for a in result.attempts]
    assert outcomes == ["scf_not_converged", "ok"]
    assert result.settings != result.attempts[0]["settings"]
    reference = fine_single_point(atoms, "xtb", {})
    assert abs(result.energy - reference.energy) < 1e-4


def test_scf_failure_after_the_retry_raises_one_line_with_the_structure():
    atoms = gold_thiolate_ring(4)
    with pytest.raises(SCFConvergenceError) as caught:
        fine_single_point(atoms, "xtb", {"max_iterations": 1}, retry={"max_iterations": 1})
    error = caught.value
    assert len(str(error).splitlines()) == 1 and "Au4" in str(error)
    assert len(error.attempts) == 2 and error.atoms is not None
    assert np.array_equal(error.atoms.positions, atoms.positions)


def test_factory_kinds_and_unknown_names():
    atoms = molecule("CH4")
    atoms.calc = make_calculator("emt")
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(InputError, match="xtb"):
        make_calculator("vasp")
