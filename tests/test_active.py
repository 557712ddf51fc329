"""Active learning: nearsighted chunks, bootstrap ensembles and the learn loop's stop rules."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.geometry import find_mic

from oamlm_dist.active.chunks import central_rows, cut_chunk
from oamlm_dist.active.ensemble import ForceEnsemble, atomic_uncertainty, train_model
from oamlm_dist.active.loop import ActiveLearner, LearnSettings, default_spec, learn
from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle
from oamlm_dist.training import FitSettings

SPEC = DescriptorSpec("element", SoapSettings(r_cut=5.0, n_max=3, l_max=2, species=("Au",)))


def au13(stdev: float, seed: int, forces: bool = True):
    atoms = Icosahedron("Au", 2)
    atoms.positions += np.random.default_rng(seed).normal(scale=stdev, size=(13, 3))
    if forces:
        atoms.calc = EMT()
        atoms.get_forces()
    return atoms


def neighbour_vectors(atoms, centre: int, cutoff: float) -> np.ndarray:
    vectors = atoms.positions - atoms.positions[centre]
    if atoms.pbc.any():
        vectors, _ = find_mic(vectors, atoms.cell, atoms.pbc)
    near = vectors[np.linalg.norm(vectors, axis=1) <= cutoff]
    return near[np.lexsort(np.round(near, 6).T)]


# ---- chunks -----------------------------------------------------------------------------
def test_chunk_keeps_the_central_environment_and_pads_vacuum():
    full = bulk("Au", "fcc", a=4.08, cubic=True).repeat(3)  # periodic, 108 atoms
    full.positions += np.random.default_rng(1).normal(scale=0.05, size=full.positions.shape)
    cutoff, vacuum = 4.5, 5.0
    chunk = cut_chunk(full, 7, cutoff=cutoff, vacuum=vacuum)
    atoms = chunk.atoms
    assert chunk.indices[chunk.centre] == 7
    assert 1 < len(atoms) < len(full)
    assert not atoms.pbc.any()
    np.testing.assert_allclose(neighbour_vectors(atoms, chunk.centre, cutoff),
                               neighbour_vectors(full, 7, cutoff), atol=1e-9)
    extent = np.ptp(atoms.positions, axis=0)
    np.testing.assert_allclose(atoms.cell.lengths(), extent + 2 * vacuum)
    np.testing.assert_allclose(atoms.positions.min(axis=0), vacuum)


def test_thiolate_chunks_keep_whole_groups_and_can_be_described():
    ring = gold_thiolate_ring(5)
    spec = default_spec([("ring", ring)])
    assert spec.scheme == "thiolate"
    for element, cutoff in [("Au", 2.6), ("S", 2.0), ("H", 1.2)]:
        centre = int(np.flatnonzero(ring.get_chemical_symbols() == np.array(element))[0])
        chunk = cut_chunk(ring, centre, cutoff=cutoff, vacuum=4.0)
        symbols = chunk.atoms.get_chemical_symbols()
        # Every S brings its CH3 and the two Au it is aligned with.
        assert symbols.count("S") >= 1 and symbols.count("Au") >= 2
        assert symbols.count("C") == symbols.count("S")
        assert symbols.count("H") == 3 * symbols.count("C")
        rows = central_rows(describe_frames([chunk.atoms], spec), [chunk.centre])
        assert sum(len(f["X"]) for f in rows.values()) == 1


def test_only_the_central_force_is_used_in_training():
    chunks = [cut_chunk(au13(0.05, seed), centre, cutoff=3.2, vacuum=4.0)
              for seed, centre in [(0, 0), (1, 3), (2, 5), (3, 8)]]
    frames, noisy = [], []
    for chunk in chunks:
        atoms = chunk.atoms
        atoms.calc = EMT()
        forces = atoms.get_forces()
        frames.append(_with_forces(atoms, forces))
        garbage = forces + 50.0 * (np.arange(len(atoms)) != chunk.centre)[:, None]
        noisy.append(_with_forces(atoms, garbage))
    centres = [chunk.centre for chunk in chunks]
    rows = central_rows(describe_frames(frames, SPEC), centres)
    assert len(rows["Au"]["X"]) == len(chunks)
    np.testing.assert_array_equal(rows["Au"]["atom"], centres)
    settings = FitSettings(references=4)
    clean_model = train_model(rows, SPEC, settings)
    noisy_model = train_model(central_rows(describe_frames(noisy, SPEC), centres), SPEC,
                              settings)
    probe = au13(0.05, 9, forces=False)
    np.testing.assert_allclose(noisy_model.predict(probe)["forces"],
                               clean_model.predict(probe)["forces"])


def _with_forces(atoms, forces):
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=0.0, forces=forces)
    return out


# ---- ensembles --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training_rows():
    return describe_frames([au13(0.05, seed) for seed in range(6)], SPEC)


def test_uncertainty_formula_and_identical_members(training_rows):
    f = np.random.default_rng(0).normal(size=(4, 5, 3))
    expected = 2.58 * np.sqrt(((f - f.mean(0)) ** 2).sum(axis=(0, 2)) / 3)
    np.testing.assert_allclose(atomic_uncertainty(f), expected)
    model = train_model(training_rows, SPEC, FitSettings(references=20))
    ensemble = ForceEnsemble(SPEC, [model] * 3)
    prediction = ensemble.predict(au13(0.05, 10, forces=False))
    np.testing.assert_allclose(prediction["uncertainty"], 0.0, atol=1e-12)
    np.testing.assert_allclose(prediction["forces"], model.predict(au13(0.05, 10))["forces"])


def test_uncertainty_grows_away_from_the_training_data(training_rows):
    ensemble = ForceEnsemble.train(training_rows, SPEC, FitSettings(references=20), members=4)
    near = [ensemble.predict(au13(0.05, s, forces=False))["uncertainty"].mean()
            for s in (20, 21)]
    far = [ensemble.predict(au13(0.3, s, forces=False))["uncertainty"].mean() for s in (20, 21)]
    assert min(far) > max(near) > 0


# ---- the loop ---------------------------------------------------------------------------
def _settings(**changes) -> LearnSettings:
    base = {"members": 3, "references": 20, "candidates": 3, "rattle": 0.05,
            "per_iteration": 2, "budget": 20, "max_iterations": 6}
    return LearnSettings(**{**base, **changes})


def _learn(tmp_path, client, **changes):
    lines = []
    summary = learn(tmp_path / "s.zarr", "al", [("au13", au13(0.02, 0, forces=False))], client,
                    "emt", settings=_settings(**changes), spec=SPEC, on_iteration=lines.append)
    return summary, lines


def test_loop_stops_below_the_uncertainty_threshold(tmp_path, dask_client):
    summary, lines = _learn(tmp_path, dask_client, threshold=1e3)
    assert summary["stopped"].startswith("structure uncertainty")
    assert summary["fine_calls"] == 1  # the cold start only
    assert [line["checked"] for line in lines] == [1, 0]


def test_loop_stops_when_the_budget_is_spent(tmp_path, dask_client):
    # Nearsighted chunks, every check added (tolerance 0): 1 cold + 2 + 2 = budget 5.
    summary, lines = _learn(tmp_path, dask_client, threshold=0.0, tolerance=0.0, budget=5,
                            chunk_cutoff=3.2, patience_improvement=99)
    assert summary["stopped"].startswith("fine-call budget")
    assert summary["fine_calls"] == 5
    store = Store.open(tmp_path / "s.zarr")
    fine = [s for s in store.segments(kind="fine") if s.attrs["active"] == "al"]
    assert len(fine) == 5 and all(s.attrs["centre"] >= 0 for s in fine)
    state = store.root["active/al"].attrs["state"]
    assert len(state["training"]) == summary["training_frames"]
    # A rerun resumes from the recorded state: nothing is left to compute.
    again = ActiveLearner(Store.open(tmp_path / "s.zarr", mode="a"), "al",
                          [("au13", au13(0.02, 0, forces=False))], "emt", spec=SPEC,
                          settings=_settings(threshold=0.0, tolerance=0.0, budget=5,
                                             chunk_cutoff=3.2, patience_improvement=99))
    assert again.stop_reason().startswith("fine-call budget")


def test_loop_stops_after_iterations_without_additions(tmp_path, dask_client):
    summary, lines = _learn(tmp_path, dask_client, threshold=0.0, tolerance=1e3,
                            patience_additions=2, patience_improvement=99)
    assert summary["stopped"] == "no additions for 2 iterations"
    assert [line["additions"] for line in lines[1:]] == [0, 0]
    assert summary["fine_calls"] == 1 + 2 + 2


def test_loop_stops_at_the_iteration_cap_with_ml_md(tmp_path, dask_client):
    summary, lines = _learn(tmp_path, dask_client, sampler="md", md_steps=6, threshold=0.0,
                            max_iterations=1, patience_improvement=99)
    assert summary["stopped"] == "iteration cap of 1 reached"
    assert 1 <= lines[1]["candidates"] <= 3 and summary["models"] == ["al-m0", "al-m1", "al-m2"]
    ensemble = ForceEnsemble.load(tmp_path / "s.zarr", "al")
    assert len(ensemble.members) == 3


def test_loop_stops_when_uncertainty_does_not_improve(tmp_path, dask_client):
    summary, lines = _learn(tmp_path, dask_client, threshold=0.0, tolerance=1e3,
                            patience_additions=99, patience_improvement=1, max_iterations=8)
    assert summary["stopped"] == "structure uncertainty not improved for 1 iterations"
    last, best = lines[-1]["max_uncertainty"], min(x["max_uncertainty"] for x in lines[1:-1])
    assert last >= best and lines[-1]["checked"] == 0


def test_killed_iteration_reuses_stored_fine_results(tmp_path, dask_client):
    store = Store.create(tmp_path / "s.zarr")
    structures = [("au13", au13(0.02, 0, forces=False))]
    settings = _settings(threshold=0.0, tolerance=0.0, patience_improvement=99)
    first = ActiveLearner(store, "al", structures, "emt", settings=settings, spec=SPEC)
    first.cold_start(dask_client)
    # Iteration 0 is killed after its fine results were stored, before its state was written.
    first.train()
    candidates = first.sample()
    jobs = first.select(candidates, [first.ensemble.predict(c)["uncertainty"]
                                     for c in candidates], 2)
    first.check(dask_client, jobs, 0)
    n_segments = len(store.segments())
    resumed = ActiveLearner(Store.open(tmp_path / "s.zarr", mode="a"), "al", structures, "emt",
                            settings=settings, spec=SPEC)
    entry = resumed.step(dask_client)
    assert entry["checked"] == 2 and len(store.segments()) == n_segments


def test_warm_start_from_stored_frames(tmp_path, dask_client):
    from oamlm_dist.store import FrameBatch

    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("ingest", {"name": "au13-train"})
    segment.append(FrameBatch.from_atoms([au13(0.05, seed) for seed in range(3)]))
    segment.mark_complete()
    summary, lines = _learn(tmp_path, dask_client, threshold=1e3)
    assert summary["fine_calls"] == 0 and summary["training_frames"] == 3
    assert [line["iteration"] for line in lines] == [0]


def test_learn_command_prints_iterations_and_a_json_summary(tmp_path, dask_client, capsys):
    import json

    from ase.io import write

    from oamlm_dist.cli import main

    write(tmp_path / "au13.extxyz", au13(0.02, 0, forces=False))
    code = main(["learn", str(tmp_path / "s.zarr"), "--model", "al", "--structures",
                 str(tmp_path / "au13.extxyz"), "--calculator", "emt", "--budget", "3",
                 "--members", "2", "--references", "10", "--per-iteration", "2",
                 "--candidates", "2", "--threshold", "0", "--scheduler",
                 dask_client.scheduler.address])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[0].startswith("iteration cold: additions 1,") and "fine calls 1" in out[0]
    assert out[1].startswith("iteration 0: additions") and "fine calls 3" in out[1]
    summary = json.loads(out[-1])
    assert summary["fine_calls"] == 3 and summary["stopped"] == "fine-call budget of 3 spent"

    # The ensemble the loop saved gates the ML rounds of a hybrid optimisation.
    write(tmp_path / "start.extxyz", au13(0.1, 4, forces=False))
    code = main(["optimize", str(tmp_path / "start.extxyz"), "--store", str(tmp_path / "s.zarr"),
                 "--calculator", "emt", "--scheme", "element", "--ensemble", "al",
                 "--max-uncertainty", "0.5", "--agree-deg", "35",  # this tiny model needs it
                 "--out", str(tmp_path / "relax"), "--json",
                 str(tmp_path / "relax.json"), "--scheduler", dask_client.scheduler.address])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["converged"]
    rounds = json.loads((tmp_path / "relax.json").read_text())[0]["rounds"]
    gated = [r for r in rounds if "halted" in r]
    assert gated and all(r["uncertainty"] is not None for r in gated)
    assert all(r["halted"] == (r["uncertainty"] > 0.5) for r in gated)


def _ring_learner(tmp_path, client, **changes) -> ActiveLearner:
    """A thiolate ring learner after its xTB cold start (one fine call, ~0.1 s)."""
    structures = [("ring4", gold_thiolate_ring(4))]
    learner = ActiveLearner(Store.create(tmp_path / "r.zarr"), "al", structures, "xtb",
                            settings=_settings(**changes))
    learner.cold_start(client)
    return learner


def test_rattled_copies_the_scheme_cannot_describe_are_dropped(tmp_path, dask_client):
    from oamlm_dist.environments import describe_environments
    from oamlm_dist.errors import SchemeError

    learner = _ring_learner(tmp_path, dask_client, rattle=0.18, candidates=8, max_iterations=1,
                            threshold=0.0)
    learner.train()
    undescribable = 0
    for candidate in learner.sample():  # the same copies step() will draw
        try:
            describe_environments(candidate, "thiolate")
        except SchemeError:
            undescribable += 1
    assert 0 < undescribable < 8  # 0.18 Å stretches some C-H past the 1.5 Å cut-off
    entry = learner.step(dask_client)
    assert entry["undescribed"] == undescribable
    assert entry["candidates"] == 8 - undescribable and entry["checked"] == 2


def test_md_that_leaves_the_model_at_once_keeps_the_start_as_candidate(tmp_path, dask_client):
    # 100 fs steps at 5000 K tear the ring apart in the first MD block.
    learner = _ring_learner(tmp_path, dask_client, sampler="md", md_timestep=100.0,
                            md_temperature=5000.0, md_steps=3, candidates=3)
    learner.train()
    candidates = learner.sample()
    assert len(candidates) == 1
    assert np.array_equal(candidates[0].positions, learner.structures[0][1].positions)
    entry = learner.step(dask_client)
    assert entry["candidates"] == 1 and entry["max_uncertainty"] > 0


def test_atoms_of_classes_the_ensemble_never_saw_count_as_uncertain():
    from oamlm_dist.errors import InputError
    from oamlm_dist.optimize.uncertainty import UncertaintyGate

    ring = gold_thiolate_ring(4)
    rng = np.random.default_rng(0)
    frames = [_with_forces(rattle(ring, 0.05, seed=s), rng.normal(size=(len(ring), 3)))
              for s in range(3)]
    spec = DescriptorSpec("thiolate", SoapSettings(r_cut=4.0, n_max=3, l_max=2,
                                                   species=("H", "C", "S", "Au")))
    rows = describe_frames(frames, spec)
    del rows["H"]  # an ensemble that never saw a hydrogen
    ensemble = ForceEnsemble.train(rows, spec, FitSettings(references=10), members=2)
    probe = rattle(ring, 0.05, seed=9)
    with pytest.raises(InputError, match="no ensemble member has a model for atom"):
        ensemble.predict(probe)
    prediction = ensemble.predict(probe, unknown_classes=True)
    hydrogen = probe.symbols == "H"
    assert (prediction["support"][hydrogen] == 0).all()
    assert (prediction["support"][~hydrogen] > 0).all()
    # At the reference itself δ is 0 for known atoms; unknown ones are uncertain.
    everything = UncertaintyGate(ensemble, probe, probe.positions, np.ones(len(probe), bool),
                                 limit=1e9)
    assert everything(probe) and everything.largest is None
    known = UncertaintyGate(ensemble, probe, probe.positions, ~hydrogen, limit=1e9)
    assert not known(probe) and known.largest == 0.0
