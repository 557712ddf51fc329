"""Hybrid ML/fine optimisation with EMT as the fine calculator on a rattled Au13 cluster."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.optimize import BFGS
from distributed import Client, LocalCluster

from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.errors import InputError, SCFConvergenceError
from oamlm_dist.optimize import hybrid
from oamlm_dist.optimize.finesteps import FineBFGS
from oamlm_dist.optimize.hybrid import (
    CorrectedForceField,
    HybridOptimizer,
    HybridSettings,
    optimize_many,
)
from oamlm_dist.optimize.hybrid import fine_single_point as real_single_point
from oamlm_dist.optimize.mlbfgs import ml_bfgs
from oamlm_dist.optimize.online import FineOnly, OnlineModel
from oamlm_dist.optimize.uncertainty import UncertaintyGate
from oamlm_dist.store import Store
from oamlm_dist.structures import rattle

SOAP = "r_cut=5,n_max=4,l_max=4"


def start_structure():
    atoms = Icosahedron("Au", 2)
    atoms.center()
    return rattle(atoms, 0.15, seed=3)


def cold_model():
    return OnlineModel.cold_start(["Au"], scheme="element", soap=SoapSettings.parse(SOAP))


@pytest.fixture(scope="module")
def bfgs_reference():
    atoms = start_structure()
    atoms.calc = EMT()
    optimizer = BFGS(atoms, logfile=None)
    optimizer.run(fmax=0.05)
    return optimizer.nsteps + 1, atoms.get_potential_energy()


def test_hybrid_reaches_the_bfgs_minimum_with_fewer_fine_calls(tmp_path, dask_client,
                                                               bfgs_reference):
    bfgs_calls, bfgs_energy = bfgs_reference
    store = Store.create(tmp_path / "s.zarr")
    optimizer = HybridOptimizer(start_structure(), cold_model(), "emt", name="au13",
                                store=store, trajectory=str(tmp_path / "au13.traj"))
    result = optimize_many([optimizer], dask_client)[0]
    assert result["converged"] and result["fmax"] <= 0.05
    assert abs(result["energy"] - bfgs_energy) < 1e-3
    assert result["fine_calls"] < bfgs_calls
    # Every fine call is in the store, with the energy it reported.
    fine = Store.open(tmp_path / "s.zarr").segments("fine")
    assert len(fine) == result["fine_calls"]
    assert fine[-1].read()[0].get_potential_energy() == result["energy"]


class WrongForces(Calculator):
    """A deliberately wrong 'model': forces rotated by 90° about z and tiny."""

    implemented_properties = ["forces"]

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        helper = atoms.copy()
        helper.calc = EMT()
        forces = helper.get_forces()
        self.results = {"forces": 1e-3 * forces[:, [1, 0, 2]] * [-1, 1, 1]}


class WrongModel:
    """An online model whose predictions are wrong and which never learns."""

    ready = True

    def __init__(self):
        self.model = self  # what the ML rounds' force field calls

    def add(self, frames, weight=1.0):
        pass

    def predict(self, atoms, method=None):
        probe = atoms.copy()
        probe.calc = WrongForces()
        return {"forces": probe.get_forces()}


@pytest.mark.parametrize("linear_residual", [False, True])
def test_convergence_is_declared_only_by_a_fine_calculation(dask_client, bfgs_reference,
                                                            linear_residual):
    # The wrong model's forces are already below fmax everywhere: an optimiser that trusted
    # them would stop at once.
    start = start_structure()
    probe = start.copy()
    probe.calc = WrongForces()
    assert np.linalg.norm(probe.get_forces(), axis=1).max() < 0.05
    settings = HybridSettings(linear_residual=linear_residual)
    optimizer = HybridOptimizer(start, WrongModel(), "emt", settings=settings, name="wrong")
    result = optimize_many([optimizer], dask_client)[0]
    assert result["converged"]
    fine = start.copy()
    fine.positions = optimizer.final_atoms().positions
    fine.calc = EMT()
    assert np.linalg.norm(fine.get_forces(), axis=1).max() <= 0.05
    assert abs(result["energy"] - bfgs_reference[1]) < 2e-3
    kinds = [r["kind"] for r in optimizer.state.rounds]
    if not linear_residual:
        # Disagreeing predictions send it down the fine-step path.
        assert set(kinds) <= {"start", "fine-step"}
    else:
        # The residual fitted to the fine points can make the surrogate agree, but not
        # before it has learnt from a step between two fine points.
        assert kinds[:2] == ["start", "fine-step"]


def test_the_surrogate_reproduces_the_fine_forces_at_the_previous_fine_point(dask_client):
    """With the linear residual the surrogate anchored at a fine point also meets the fine
    forces at the fine point before it (the secant condition), whatever the model."""
    optimizer = HybridOptimizer(start_structure(), WrongModel(), "emt", name="secant")
    optimize_many([optimizer], dask_client)
    # The converged point is not learnt: the residual was last fitted to the two before it.
    before, anchor = optimizer.points[-3], optimizer.points[-2]
    probe = optimizer.atoms.copy()
    probe.calc = CorrectedForceField(optimizer.model.model, optimizer._correction(anchor),
                                     anchor.positions, optimizer.residual)
    probe.set_positions(before.positions)
    np.testing.assert_allclose(probe.get_forces(), before.forces, atol=1e-8)
    probe.set_positions(anchor.positions)
    np.testing.assert_allclose(probe.get_forces(), anchor.forces, atol=1e-8)


def test_the_linear_residual_is_used_only_while_it_predicts_the_fine_points(dask_client):
    """A model that knows nothing leaves a residual that changes like the fine forces, which
    the linear residual learns to predict; a perfect model leaves none to predict, so its
    surrogate stays the model plus a constant (zero) residual."""
    used = {}
    for name, model in (("wrong", WrongModel()), ("perfect", EMTModel())):
        optimizer = HybridOptimizer(start_structure(), model, "emt", name=name)
        assert optimize_many([optimizer], dask_client)[0]["converged"]
        used[name] = [r["linear_residual"] for r in optimizer.state.rounds
                      if "linear_residual" in r]
    assert any(used["wrong"]) and used["perfect"] and not any(used["perfect"])


def failing_on_third_call(atoms, calculator, params, **options):
    """A fine single point whose SCF fails on its third use (counted in a file)."""
    assert options == {"series": "au13"}, options  # warm starts: the optimisation's name
    counter = Path(os.environ["OAMLM_TEST_COUNTER"])
    with counter.open("a") as handle:
        handle.write("x")
    if counter.stat().st_size == 3:
        raise SCFConvergenceError("xtb SCF did not converge on Au13 (test)", atoms=atoms,
                                  attempts=[{"outcome": "scf_not_converged"}] * 2)
    return real_single_point(atoms, calculator, params, **options)


def test_failed_fine_calculation_stops_with_reason_and_keeps_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("OAMLM_TEST_COUNTER", str(tmp_path / "counter"))
    monkeypatch.setattr(hybrid, "fine_single_point", failing_on_third_call)
    # In-process workers, so they run the patched task.
    with LocalCluster(n_workers=1, processes=False, resources={"dft": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        store = Store.create(tmp_path / "s.zarr")
        optimizer = HybridOptimizer(start_structure(), cold_model(), "emt", name="au13",
                                    store=store)
        result = optimize_many([optimizer], client)[0]
    assert not result["converged"]
    assert "fine calculation 3 failed" in result["stopped"]
    assert "SCF did not converge" in result["stopped"]
    store = Store.open(tmp_path / "s.zarr")
    assert len(store.segments("fine")) == 2
    record = store.root["failures/au13-fine3"].attrs
    assert "SCF" in record["reason"] and len(record["attempts"]) == 2


class Recording(EMT):
    def __init__(self):
        super().__init__()
        self.seen = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.seen.append(atoms.positions.copy())


def test_ml_bfgs_alternates_groups_and_respects_the_trust_radius():
    atoms = start_structure()
    atoms.calc = Recording()
    outer, core = list(range(1, 13)), [0]
    result = ml_bfgs(atoms, fmax=0.01, steps=8, maxstep=0.05, groups=[(outer, 4), (core, 4)])
    assert result["steps"] == 8
    seen = np.array(atoms.calc.seen)
    first, second = seen[:5], seen[5:]
    assert np.ptp(first[:, 0], axis=0).max() == 0 and np.ptp(first[:, 1:], axis=0).max() > 0
    assert np.ptp(second[:, 1:], axis=0).max() == 0 and np.ptp(second[:, 0], axis=0).max() > 0
    assert not atoms.constraints

    atoms = start_structure()
    atoms.calc = EMT()
    start = atoms.get_positions()
    limited = ml_bfgs(atoms, fmax=1e-4, steps=200, maxstep=0.1, max_displacement=0.1)
    assert limited["trust_limited"]
    assert np.linalg.norm(atoms.positions - start, axis=1).max() <= 0.1 + 1e-9


def test_ml_bfgs_halts_at_the_first_step_the_test_rejects():
    atoms = start_structure()
    atoms.calc = EMT()
    seen = []

    def halt(probe):
        seen.append(probe.get_positions().copy())
        return len(seen) == 3

    result = ml_bfgs(atoms, fmax=1e-4, steps=50, maxstep=0.05, halt=halt)
    assert result["halted"] and result["steps"] == 3 and len(seen) == 3
    np.testing.assert_array_equal(atoms.positions, seen[-1])


class EMTModel:
    """A fixed 'model' (it never learns): EMT forces times ``scale`` plus a per-atom
    ``offset`` (scale 1, no offset: the fine calculator itself)."""

    ready = True

    def __init__(self, scale: float = 1.0, offset: np.ndarray | float = 0.0):
        self.model = self
        self.scale = scale
        self.offset = offset

    def add(self, frames, weight=1.0):
        pass

    def predict(self, atoms, method=None):
        probe = atoms.copy()
        probe.calc = EMT()
        return {"forces": self.scale * probe.get_forces() + self.offset}


def shifted_emt_model(n_atoms: int) -> EMTModel:
    """EMT plus a constant per-atom offset. Its correction at every fine point is minus that
    offset, so the surrogate a speculative round relaxes on equals the one of the round
    after the fine result."""
    return EMTModel(offset=np.random.default_rng(7).normal(0.0, 0.3, (n_atoms, 3)))


def test_speculation_relaxes_while_the_fine_calculation_runs(dask_client):
    """With identical surrogates before and after a fine result, the speculative round does
    all the ML work: the round after the result, started from its geometry, has (almost)
    nothing left to do. Without speculation the same rounds take their steps after the
    result; both end in the same minimum."""
    start = start_structure()
    speculating = HybridOptimizer(start, shifted_emt_model(len(start)), "emt", name="ahead")
    with_speculation = optimize_many([speculating], dask_client)[0]
    waiting = HybridOptimizer(start, shifted_emt_model(len(start)), "emt", name="waiting",
                              settings=HybridSettings(speculate=False))
    without = optimize_many([waiting], dask_client)[0]

    assert with_speculation["converged"] and without["converged"]
    assert abs(with_speculation["energy"] - without["energy"]) < 1e-3
    ahead = [r for r in speculating.state.rounds if r.get("speculative_steps")]
    assert ahead, "no ML round started from a speculative geometry"
    assert all(r["ml_steps"] <= 1 for r in ahead), speculating.state.rounds
    after = [r["ml_steps"] for r in waiting.state.rounds[1:] if "ml_steps" in r]
    assert after and max(after) > 1, waiting.state.rounds


def test_a_perfect_model_predicts_the_fine_energy_change(dask_client, bfgs_reference):
    """With the fine calculator as the model, the surrogate's predicted energy change (the
    work of its forces) matches the fine one: every round keeps or grows the radius."""
    optimizer = HybridOptimizer(start_structure(), EMTModel(), "emt", name="perfect")
    result = optimize_many([optimizer], dask_client)[0]
    assert result["converged"]
    ratios = [r["rho"] for r in optimizer.state.rounds if "rho" in r]
    assert ratios and min(ratios) > 0.75, optimizer.state.rounds
    radii = [r["trust"] for r in optimizer.state.rounds]
    assert radii == sorted(radii)
    assert result["fine_calls"] * 3 < bfgs_reference[0]


def test_an_uphill_round_is_retried_from_the_best_point_on_half_the_radius(dask_client):
    """A model with a third of the true forces overshoots on a wide radius: the round goes
    uphill, and the next geometry is a new ML round from the best point so far, within half
    the radius, with no fine call in between."""
    settings = HybridSettings(trust=0.8)
    optimizer = HybridOptimizer(start_structure(), EMTModel(scale=0.3), "emt",
                                settings=settings, name="overshoot")
    optimize_many([optimizer], dask_client)
    points, rounds = optimizer.points, optimizer.state.rounds
    uphill = next(i for i, p in enumerate(points) if p.kind == "ml" and p.energy >
                  min(q.energy for q in points[:i]) + settings.energy_tolerance)
    assert rounds[uphill]["trust"] > settings.trust_min and rounds[uphill]["rho"] < 0
    best = min(points[:uphill], key=lambda p: p.energy)
    retry = points[uphill + 1]
    assert retry.kind == "ml"
    assert rounds[uphill + 1]["trust"] == rounds[uphill]["trust"] / 2
    displacement = np.linalg.norm(retry.positions - best.positions, axis=1).max()
    assert displacement <= rounds[uphill]["trust"] / 2 + 1e-9


def emt_result(atoms, positions) -> dict:
    probe = atoms.copy()
    probe.positions = positions
    probe.calc = EMT()
    return {"energy": probe.get_potential_energy(), "forces": probe.get_forces()}


def test_after_an_uphill_fine_step_the_ml_round_starts_from_the_best_point():
    """A fine step that went uphill is learnt from, not continued from: with a model that
    agrees there, the next ML round stays within the trust radius of the best point."""
    optimizer = HybridOptimizer(start_structure(), EMTModel(), "emt", name="from-best")
    best = optimizer.start()
    optimizer.tell(emt_result(optimizer.atoms, best))
    uphill = best.copy()
    uphill[0] += [0.6, 0.0, 0.0]
    optimizer.pending_kind = "fine-step"
    optimizer.atoms.set_positions(uphill)
    target = optimizer.tell(emt_result(optimizer.atoms, uphill))
    assert optimizer.points[1].energy > optimizer.points[0].energy + 0.1
    assert optimizer.state.rounds[1]["agree"] and optimizer.pending_kind == "ml"
    trust = optimizer.trust.radius
    assert np.linalg.norm(target - best, axis=1).max() <= trust + 1e-9
    assert np.linalg.norm(target - uphill, axis=1).max() > trust


def test_process_steps_that_go_uphill_twice_give_way_to_bfgs_steps():
    """Fine energies made to rise at every call: the second process step that ends above the
    best point switches the fine steps to BFGS's, from the latest point, exactly the step of
    a BFGS fed the same fine points."""
    optimizer = HybridOptimizer(start_structure(), FineOnly(), "emt", name="switch")
    shadow = FineBFGS(3 * len(optimizer.atoms), optimizer.settings.fine_maxstep)
    x = optimizer.start()
    for call in range(3):
        result = emt_result(optimizer.atoms, x)
        result["energy"] += 100.0 * call  # above every earlier point
        shadow.update(x.ravel(), result["energy"], result["forces"].ravel())
        following = optimizer.tell(result)
        assert optimizer.state.rounds[-1]["kind"] == ("start" if call == 0 else "fine-step")
        assert (optimizer.fine_steps.gp is None) is (call == 2), call
        if call < 2:  # the process's steps start from the best point, the start
            assert optimizer.fine_steps.from_best
        x = following
    latest = optimizer.points[-1]
    expected = latest.positions.ravel() + shadow.step(latest.positions.ravel(),
                                                      latest.forces.ravel())
    np.testing.assert_allclose(x.ravel(), expected, atol=1e-12)


def test_after_repeated_uphill_rounds_at_the_smallest_radius_fine_steps_finish(dask_client):
    """A model with a third of the true forces, held at the smallest radius, goes uphill
    near the minimum: after the second such round no more ML rounds are tried (without the
    limit they are)."""
    kinds = {}
    for limit in (2, None):
        # agree_deg: a gate loose enough to let this model's rounds through near the minimum
        settings = HybridSettings(fmax=0.003, trust=0.05, trust_min=0.05, trust_max=0.05,
                                  floor_failures=limit, agree_deg=35.0)
        optimizer = HybridOptimizer(start_structure(), EMTModel(scale=0.3), "emt",
                                    settings=settings, name=f"floor-{limit}")
        assert optimize_many([optimizer], dask_client)[0]["converged"]
        kinds[limit] = [p.kind for p in optimizer.points]
    for limit, sequence in kinds.items():
        second = [i for i, kind in enumerate(sequence) if kind == "backtrack"][1]
        assert ("ml" in sequence[second:]) is (limit is None)


class ScaledEMTEnsemble:
    """An analytic 'ensemble': member j predicts (1 + a_j) x EMT forces. The spread of its
    force changes from a reference x0 is then 2.58 * std(a) * |F_EMT(x) - F_EMT(x0)| per
    atom (std with M - 1), which the gate must reproduce."""

    scales = np.array([0.0, 0.2, -0.1, 0.3])

    def predict(self, atoms, unknown_classes=False):
        probe = atoms.copy()
        probe.calc = EMT()
        forces = probe.get_forces()
        return {"member_forces": (1 + self.scales)[:, None, None] * forces[None],
                "support": np.full(len(atoms), -1)}


def test_uncertainty_gate_measures_the_spread_of_force_changes():
    atoms = start_structure()
    reference = atoms.get_positions()
    free = np.ones(len(atoms), dtype=bool)
    gate = UncertaintyGate(ScaledEMTEnsemble(), atoms, reference, free, limit=0.05)
    assert not gate(atoms) and gate.largest == 0.0  # no uncertainty at the fine point itself
    moved = rattle(atoms, 0.05, seed=5)
    change = np.linalg.norm(emt_result(atoms, moved.positions)["forces"]
                            - emt_result(atoms, reference)["forces"],
                            axis=1)
    expected = 2.58 * np.std(ScaledEMTEnsemble.scales, ddof=1) * change
    np.testing.assert_allclose(gate.uncertainty(moved), expected, rtol=1e-10)
    assert UncertaintyGate(ScaledEMTEnsemble(), atoms, reference, free, 0.9 * expected.max())(
        moved)
    assert not UncertaintyGate(ScaledEMTEnsemble(), atoms, reference, free,
                               1.1 * expected.max())(moved)
    # Atoms fixed by the caller do not count.
    top = int(np.argmax(expected))
    only = free.copy()
    only[top] = False
    rest = np.delete(expected, top).max()
    assert not UncertaintyGate(ScaledEMTEnsemble(), atoms, reference, only, 1.01 * rest)(moved)


@pytest.mark.parametrize("speculate", [False, True])
def test_ensemble_uncertainty_decides_when_the_fine_calculator_is_called(dask_client,
                                                                          bfgs_reference,
                                                                          speculate):
    """ML rounds on the shifted-EMT model end at the trust radius or the ML minimum; with a
    gate they end where the analytic ensemble's uncertainty first passes the limit, so a
    tight limit calls the fine calculator after shorter rounds, and more often. Both reach
    BFGS's minimum."""
    start = start_structure()
    limit = 0.05
    runs = {}
    for label, ensemble in (("plain", None), ("gated", ScaledEMTEnsemble())):
        optimizer = HybridOptimizer(start, shifted_emt_model(len(start)), "emt", name=label,
                                    settings=HybridSettings(speculate=speculate,
                                                            max_uncertainty=limit),
                                    ensemble=ensemble)
        runs[label] = (optimizer, optimize_many([optimizer], dask_client)[0])
    for _, result in runs.values():
        assert result["converged"] and abs(result["energy"] - bfgs_reference[1]) < 1e-3
    gated, plain = runs["gated"][0].state.rounds, runs["plain"][0].state.rounds
    halted = [r for r in gated if r.get("halted")]
    assert halted and all(r["uncertainty"] > limit for r in halted)
    # A round that did not halt ended below the limit.
    assert all(r["uncertainty"] <= limit for r in gated if r.get("halted") is False)
    assert runs["gated"][1]["ensemble_calls"] > 0 == runs["plain"][1]["ensemble_calls"]
    assert not any("halted" in r for r in plain)
    assert runs["gated"][1]["fine_calls"] > runs["plain"][1]["fine_calls"]


def test_a_trained_bootstrap_ensemble_gates_the_rounds(dask_client, bfgs_reference):
    """The real ensemble (bootstrap members on EMT frames of rattled Au13) drives the gate."""
    from oamlm_dist.active.ensemble import ForceEnsemble
    from oamlm_dist.describe import describe_frames
    from oamlm_dist.training import FitSettings

    frames = []
    for seed in range(6):
        frame = rattle(start_structure(), 0.05, seed=20 + seed)
        frame.calc = EMT()
        frame.get_forces()
        frames.append(frame)
    model = cold_model()
    ensemble = ForceEnsemble.train(describe_frames(frames, model.spec), model.spec,
                                   FitSettings(references=30), members=3)
    # agree_deg: a gate loose enough to let this cold model's rounds through
    optimizer = HybridOptimizer(start_structure(), model, "emt", name="bootstrap",
                                settings=HybridSettings(max_uncertainty=0.1, agree_deg=35.0),
                                ensemble=ensemble)
    result = optimize_many([optimizer], dask_client)[0]
    # The flat Au13 landscape: minima of different paths lie within about 2 meV.
    assert result["converged"] and abs(result["energy"] - bfgs_reference[1]) < 2e-3
    gated = [r for r in optimizer.state.rounds if "halted" in r]
    assert gated and all(r["uncertainty"] is not None for r in gated)

    # An ensemble that cannot describe the structure is refused up front.
    copper = start_structure()
    copper.symbols[0] = "Cu"
    with pytest.raises(InputError, match="ensemble cannot describe"):
        HybridOptimizer(copper, model, "emt", name="copper", ensemble=ensemble)


def test_max_uncertainty_without_an_ensemble_is_refused(tmp_path, capsys):
    from ase.io import write

    from oamlm_dist.cli import main

    write(tmp_path / "start.extxyz", start_structure())
    code = main(["optimize", str(tmp_path / "start.extxyz"), "--store", str(tmp_path / "s.zarr"),
                 "--calculator", "emt", "--max-uncertainty", "0.3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs --ensemble" in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("flags", [[], ["--fine-bfgs"]])
def test_a_cold_start_steps_first_on_the_process_or_with_fine_bfgs_like_bfgs(
        tmp_path, flags):
    """A cold model cannot predict the first fine point, so the second geometry is a step on
    fine results alone: the minimum of the distance process fitted to the start (default), or
    the first step ASE's BFGS takes from it."""
    from ase.io import read, write

    from oamlm_dist.cli import main
    from oamlm_dist.optimize.distance_gp import InverseDistanceGP

    start = start_structure()
    write(tmp_path / "start.extxyz", start)
    code = main(["optimize", str(tmp_path / "start.extxyz"), "--store", str(tmp_path / "s.zarr"),
                 "--calculator", "emt", "--max-fine", "2", "--out", str(tmp_path),
                 "--workers", "1", *flags])
    assert code == 0
    fine = [a for a in read(tmp_path / "start-hybrid.traj", ":") if a.info["kind"] == "fine"]
    reference = start.copy()
    reference.calc = EMT()
    if flags:
        BFGS(reference, logfile=None).run(fmax=0.05, steps=1)
    else:
        gp = InverseDistanceGP(start.positions, np.ones(len(start), bool))
        x = start.positions.ravel()
        gp.update(x, reference.get_potential_energy(), reference.get_forces().ravel())
        reference.positions = (x + gp.step(x)).reshape(-1, 3)
    np.testing.assert_allclose(fine[1].positions, reference.positions, atol=1e-6)


def test_fine_only_with_fine_bfgs_visits_the_geometries_of_ase_bfgs(tmp_path, capsys):
    """Without a model every step is a step on fine results: with --fine-bfgs exactly ASE
    BFGS's on the same calculator, call for call, to the same minimum."""
    from ase.io import read, write

    from oamlm_dist.cli import main

    start = start_structure()
    write(tmp_path / "start.extxyz", start)
    code = main(["optimize", str(tmp_path / "start.extxyz"), "--store", str(tmp_path / "s.zarr"),
                 "--calculator", "emt", "--fine-only", "--fine-bfgs", "--out", str(tmp_path),
                 "--workers", "1"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["converged"] and summary["ml_calls"] == 0
    fine = [a for a in read(tmp_path / "start-hybrid.traj", ":") if a.info["kind"] == "fine"]
    reference = start.copy()
    reference.calc = EMT()
    visited = []
    optimizer = BFGS(reference, logfile=None)
    optimizer.attach(lambda: visited.append(reference.get_positions()))
    optimizer.run(fmax=0.05)
    assert summary["fine_calls"] == len(fine) == len(visited)
    np.testing.assert_allclose([a.positions for a in fine], visited, atol=1e-6)
    assert abs(summary["energy"] - reference.get_potential_energy()) < 1e-6


def test_fine_only_refuses_a_model_in_one_line(tmp_path, capsys):
    from ase.io import write

    from oamlm_dist.cli import main

    write(tmp_path / "start.extxyz", start_structure())
    code = main(["optimize", str(tmp_path / "start.extxyz"), "--store", str(tmp_path / "s.zarr"),
                 "--calculator", "emt", "--fine-only", "--model", "ring"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--fine-only uses no model" in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("bad", [{"trust_min": 0.0}, {"trust": 0.04}, {"trust": 1.0},
                                 {"floor_failures": 0}])
def test_inconsistent_trust_settings_are_refused_in_one_line(bad):
    with pytest.raises(InputError) as error:
        HybridSettings(**bad)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and next(iter(bad)) in message


def test_optimize_command_defaults_are_the_hybrid_settings(capsys):
    """The command line states its defaults without importing the optimiser; they must be
    HybridSettings' own."""
    from oamlm_dist.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["optimize", "a.xyz", "--store", "s.zarr"])
    defaults = HybridSettings()
    assert (args.fmax, args.max_fine, args.maxstep) == (defaults.fmax, defaults.max_fine,
                                                        defaults.ml_maxstep)
    with pytest.raises(SystemExit):
        parser.parse_args(["optimize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"fine ones to this angle (default {defaults.agree_deg:g})" in text
