"""Fine calculators: factory, settings, forces against finite differences, SCF retry."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from oamlm_dist import warm
from oamlm_dist.calculators import (
    CALCULATORS,
    FineResult,
    GPAWCalculator,
    XTBCalculator,
    calculator_settings,
    ensure_cell,
    fine_single_point,
    make_calculator,
)
from oamlm_dist.errors import FineCalculationError, InputError, SCFConvergenceError
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold_thiolate_ring, perturb


def _fd_force(atoms, name, params, index, axis, step):
    """Central finite difference -dE/dx of one coordinate with the fine calculator."""
    energies = []
    for sign in (1.0, -1.0):
        moved = atoms.copy()
        moved.positions[index, axis] += sign * step
        energies.append(fine_single_point(moved, name, params).energy)
    return -(energies[0] - energies[1]) / (2.0 * step)


# ---------------------------------------------------------------- factory, settings
def test_emt_factory_and_single_point_leave_input_untouched():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    before = atoms.positions.copy()
    calc = make_calculator("emt")
    assert type(calc).__name__ == "EMT"
    res = fine_single_point(atoms, "emt")
    assert isinstance(res, FineResult) and res.calculator == "emt"
    assert atoms.calc is None
    np.testing.assert_array_equal(atoms.positions, before)
    ref = atoms.copy()
    ref.calc = make_calculator("emt")
    assert res.energy == pytest.approx(ref.get_potential_energy())
    np.testing.assert_allclose(res.forces, ref.get_forces())
    assert res.forces.shape == (len(atoms), 3)
    assert [a["outcome"] for a in res.attempts] == ["ok"]
    assert res.settings == res.attempts[0]["settings"] == {"threads": 1}
    assert res.wall_s > 0
    # results and calculator kinds travel to Dask workers
    back = pickle.loads(pickle.dumps(res))
    np.testing.assert_array_equal(back.forces, res.forces)
    kind = pickle.loads(pickle.dumps(XTBCalculator(method="GFN1-xTB")))
    assert kind.settings["method"] == "GFN1-xTB"


def test_unknown_calculator_and_setting_are_input_errors():
    with pytest.raises(InputError, match="unknown fine calculator 'vasp'; known: emt, gpaw, xtb"):
        make_calculator("vasp")
    with pytest.raises(InputError, match="unknown fine calculator"):
        fine_single_point(molecule("H2"), "orca")
    with pytest.raises(InputError, match="unknown xtb setting.*temperature"):
        calculator_settings("xtb", temperature=1000)
    with pytest.raises(InputError, match="unknown xtb method"):
        calculator_settings("xtb", method="GFN3")
    with pytest.raises(InputError, match="JSON"):
        calculator_settings("gpaw", mixer=object())
    with pytest.raises(InputError, match="threads"):
        calculator_settings("emt", threads=0)
    assert set(CALCULATORS) == {"xtb", "gpaw", "emt"}


def test_settings_are_resolved_and_jsonable():
    xtb = calculator_settings("xtb")
    assert xtb["method"] == "GFN2-xTB" and xtb["verbosity"] == 0
    assert xtb["electronic_temperature"] == 300.0 and xtb["hot_start"] is None
    assert calculator_settings("xtb", method="gfn1")["method"] == "GFN1-xTB"
    gpaw = calculator_settings("gpaw")
    assert {k: gpaw[k] for k in ("mode", "basis", "xc", "spinpol", "txt", "vacuum")} == {
        "mode": "lcao", "basis": "dzp", "xc": "PBE", "spinpol": False, "txt": None, "vacuum": 4.0,
    }
    fd = calculator_settings("gpaw", mode="fd")
    assert fd["mode"] == "fd" and fd["h"] == 0.2 and fd["basis"] is None
    for s in (xtb, gpaw, fd, calculator_settings("emt")):
        assert json.loads(json.dumps(s)) == s
    calc = make_calculator("xtb", method="GFN1-xTB")
    assert calc.parameters["method"] == "GFN1-xTB" and calc.parameters["verbosity"] == 0
    assert "hot_start" not in calc.parameters and "threads" not in calc.parameters


def test_ensure_cell_boxes_a_copy_only_when_needed():
    mol = molecule("SH2")
    boxed = ensure_cell(mol, vacuum=4.0)
    assert mol.cell.rank == 0 and boxed.cell.rank == 3
    pos = boxed.positions
    np.testing.assert_allclose(pos.min(axis=0), 4.0)
    np.testing.assert_allclose(boxed.cell.lengths() - pos.max(axis=0), 4.0)
    crystal = bulk("Cu")
    np.testing.assert_array_equal(ensure_cell(crystal).cell, crystal.cell)
    slab = molecule("H2")
    slab.pbc = True
    with pytest.raises(InputError, match="periodic"):
        ensure_cell(slab)


def test_other_crashes_and_non_finite_results_are_fine_calculation_errors(monkeypatch):
    odd = molecule("H2")
    odd.symbols[0] = "U"  # EMT has no uranium parameters
    with pytest.raises(FineCalculationError) as info:
        fine_single_point(odd, "emt")
    err = info.value
    assert not isinstance(err, SCFConvergenceError)
    assert str(err).startswith("emt single point on HU failed:") and "\n" not in str(err)
    assert [a["outcome"] for a in err.attempts] == ["error"]
    assert err.atoms.get_chemical_formula() == "HU"

    def nan_energy(self, atoms):
        return float("nan"), np.zeros((len(atoms), 3))

    monkeypatch.setattr(CALCULATORS["emt"], "compute", nan_energy)
    with pytest.raises(FineCalculationError, match="non-finite") as info:
        fine_single_point(bulk("Cu"), "emt")
    assert [a["outcome"] for a in info.value.attempts] == ["non_finite"]


class _FlakyEMT(EMT):
    """EMT that raises while ``failing`` is set: a crash of a warm calculator."""

    failing = False

    def calculate(self, *args, **kwargs):
        if self.failing:
            raise RuntimeError("worker ran out of memory")
        super().calculate(*args, **kwargs)


def test_series_reuses_its_calculator_and_a_failure_drops_it(monkeypatch):
    # GPAW's warm-start path with EMT inside: the mechanism without GPAW's cost
    monkeypatch.setattr(GPAWCalculator, "build", lambda self: _FlakyEMT())
    monkeypatch.setattr(_FlakyEMT, "failing", False)
    warm.clear()
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    moved = cu.copy()
    moved.rattle(0.05, seed=2)

    def warm_start(atoms, series, **params):
        result = fine_single_point(atoms, "gpaw", params, series=series)
        assert result.energy == pytest.approx(fine_single_point(atoms, "emt").energy)
        return [a["warm_start"] for a in result.attempts]

    assert warm_start(cu, "a") == [False]
    assert warm_start(moved, "a") == [True]  # the same calculator, at a new geometry
    assert warm_start(cu, "a", basis="sz") == [False]  # other settings: another calculator
    assert warm_start(cu, "b", basis="sz") == [False]  # one series kept per process
    assert warm_start(moved, "a", basis="sz") == [False]
    assert warm_start(cu, None) == [False]  # no series: nothing kept or taken
    assert warm_start(moved, "a", basis="sz") == [True]
    monkeypatch.setattr(_FlakyEMT, "failing", True)
    with pytest.raises(FineCalculationError) as info:
        fine_single_point(cu, "gpaw", {"basis": "sz"}, series="a")
    assert [a["warm_start"] for a in info.value.attempts] == [True]
    monkeypatch.setattr(_FlakyEMT, "failing", False)
    assert warm_start(cu, "a", basis="sz") == [False]  # the failed calculator was dropped
    warm.clear()


# ----------------------------------------------------------------------------- xTB
def test_xtb_gfn2_forces_match_finite_differences():
    # a slightly distorted Au4(SCH3)4 ring: forces of ~0.1-1 eV/Å on every element
    ring = perturb(gold_thiolate_ring(4), 0.08, seed=3)
    res = fine_single_point(ring, "xtb")
    assert res.settings["method"] == "GFN2-xTB" and len(res.attempts) == 1
    for index, axis in [(0, 0), (4, 2), (5, 1), (7, 0)]:  # Au, S, C, H
        fd = _fd_force(ring, "xtb", None, index, axis, step=1e-3)
        assert abs(res.forces[index, axis] - fd) < 5e-3, (index, axis, res.forces[index, axis], fd)
    assert np.abs(res.forces).max() > 0.3


def test_xtb_retry_after_forced_scf_failure_records_both_attempts():
    ring = gold_thiolate_ring(4)
    res = fine_single_point(ring, "xtb", {"max_iterations": 2})
    first, second = res.attempts
    assert first["outcome"] == "scf_not_converged" and "SCF" in first["message"]
    assert first["settings"]["max_iterations"] == 2
    assert second["outcome"] == "ok" and second["settings"] == res.settings
    assert res.settings["max_iterations"] == 500 and res.settings["mixer_damping"] == 0.2
    assert res.settings["method"] == "GFN2-xTB"  # same Hamiltonian on retry
    reference = fine_single_point(ring, "xtb")
    assert res.energy == pytest.approx(reference.energy, abs=1e-5)
    np.testing.assert_allclose(res.forces, reference.forces, atol=1e-3)


def test_xtb_hot_start_returns_the_normal_temperature_result():
    ring = perturb(gold_thiolate_ring(5), 0.05, seed=1)
    direct = fine_single_point(ring, "xtb")
    hot = fine_single_point(ring, "xtb", {"hot_start": 3000.0})
    hot_only = fine_single_point(ring, "xtb", {"electronic_temperature": 3000.0})
    assert hot.settings["hot_start"] == 3000.0
    assert hot.energy == pytest.approx(direct.energy, abs=1e-6)
    np.testing.assert_allclose(hot.forces, direct.forces, atol=1e-4)
    assert abs(hot_only.energy - direct.energy) > 1e-5  # the temperature does matter
    with pytest.raises(InputError, match="hot_start"):
        calculator_settings("xtb", hot_start=100.0)


def test_xtb_scf_failure_after_retry_raises_one_line_error():
    ring = gold_thiolate_ring(4)
    with pytest.raises(SCFConvergenceError) as info:
        fine_single_point(ring, "xtb", {"max_iterations": 2}, retry={"max_iterations": 2})
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith("xtb SCF did not converge on C4H12Au4S4 after 2 attempt(s)")
    assert "SCF not converged" in msg
    assert [a["outcome"] for a in err.attempts] == ["scf_not_converged"] * 2
    assert err.atoms.get_chemical_formula() == ring.get_chemical_formula()
    with pytest.raises(SCFConvergenceError, match="after 1 attempt"):
        fine_single_point(ring, "xtb", {"max_iterations": 2}, retry=False)


# ---------------------------------------------------------------------------- GPAW
@pytest.mark.gpaw
def test_gpaw_lcao_forces_match_finite_difference():
    h2s = molecule("SH2")
    h2s.positions[1] += [0.0, 0.08, 0.05]  # stretch one S-H bond: clear forces
    params = {"vacuum": 3.0}  # a smaller box than production keeps the test quick
    res = fine_single_point(h2s, "gpaw", params)
    assert h2s.cell.rank == 0 and h2s.calc is None  # boxed copy, input untouched
    assert res.settings["mode"] == "lcao" and res.settings["basis"] == "dzp"
    assert res.settings["txt"] is None
    index, axis = 0, 2  # S along the molecule's axis
    # displaced copies share the first point's box: re-centring each one would move the
    # grid under the atoms and add egg-box noise (0.05 eV/Å here) to the difference
    boxed = ensure_cell(h2s, params["vacuum"])
    fd = _fd_force(boxed, "gpaw", params, index, axis, step=0.01)
    assert abs(res.forces[index, axis]) > 0.5
    assert abs(res.forces[index, axis] - fd) < 0.05, (res.forces[index, axis], fd)


@pytest.mark.gpaw
def test_gpaw_warm_start_gives_the_cold_result_faster():
    h2s = ensure_cell(molecule("SH2"), 3.0)
    h2s.positions[1] += [0.0, 0.08, 0.05]
    moved = h2s.copy()
    moved.positions[0, 2] += 0.03
    warm.clear()
    fine_single_point(h2s, "gpaw", series="h2s")
    warmed = fine_single_point(moved, "gpaw", series="h2s")
    cold = fine_single_point(moved, "gpaw")
    warm.clear()
    assert [a["warm_start"] for a in warmed.attempts + cold.attempts] == [True, False]
    # the SCF converges to the same state from either start (measured: 2e-8 eV, 3e-4 eV/Å)
    assert warmed.energy == pytest.approx(cold.energy, abs=1e-4)
    assert np.abs(warmed.forces - cold.forces).max() < 0.01
    # the head start: fewer SCF iterations (measured: 6 against 8, and 9 s against 27 s
    # wall with the set-up of basis and grids skipped)
    iterations = [a["scf_iterations"] for a in warmed.attempts + cold.attempts]
    assert iterations[0] < iterations[1], iterations


@pytest.mark.gpaw
def test_gpaw_result_is_stored_and_read_back(tmp_path):
    h2s = molecule("SH2")
    h2s.positions[1] += [0.0, 0.08, 0.05]
    res = fine_single_point(h2s, "gpaw", {"vacuum": 3.0})
    frame = h2s.copy()
    frame.calc = SinglePointCalculator(frame, energy=res.energy, forces=res.forces)
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("fine", {"settings": res.settings, "attempts": res.attempts})
    segment.append(FrameBatch.from_atoms([frame]))
    back = Store.open(tmp_path / "s.zarr").segment(segment.id)
    atoms = back.read()[0]
    assert atoms.get_potential_energy() == res.energy
    assert np.array_equal(atoms.get_forces(), res.forces)
    assert back.attrs["settings"] == res.settings
