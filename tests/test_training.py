"""The fit stage, the force field and evaluation on small EMT alkane MD (real forces)."""

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import write
from ase.optimize import BFGS
from scipy.spatial.transform import Rotation

from oamlm_dist.describe import describe
from oamlm_dist.evaluate import evaluate
from oamlm_dist.forcefield import ForceField, ForceModel, ForcesOnly
from oamlm_dist.models.regression import input_distances
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.training import FitSettings, fit, load_class_model, update
from tests.conftest import md_frames

SOAP = "r_cut=3,n_max=3,l_max=2"


def add_segment(store, frames, name):
    segment = store.new_segment("md", {"name": name})
    segment.append(FrameBatch.from_atoms(frames))
    segment.mark_complete()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dask_client):
    path = tmp_path_factory.mktemp("train") / "s.zarr"
    store = Store.create(path)
    add_segment(store, md_frames(30, 1), "run0")
    add_segment(store, md_frames(30, 2), "run1")
    describe(path, "element", SOAP, dask_client, block_frames=10)
    fit(path, "m", dask_client, FitSettings(references=60, frames="name:run0"))
    return path


def test_forces_rotate_with_the_structure(trained):
    model = ForceModel.load(trained, "m")
    atoms = md_frames(3, 7)[-1]
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T + [1.0, -2.0, 0.5]
    prediction = model.predict(atoms)
    forces = prediction["forces"]
    assert np.abs(forces).max() > 0.1
    assert np.allclose(model.predict(rotated)["forces"], forces @ rotation.T, atol=1e-6)
    # the forces are the predicted norms times unit directions
    np.testing.assert_allclose(np.linalg.norm(prediction["direction"], axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(prediction["norm"][:, None] * prediction["direction"], forces)


def test_k_equal_n_reproduces_training_outputs(tmp_path, dask_client):
    path = tmp_path / "s.zarr"
    store = Store.create(path)
    add_segment(store, md_frames(8, 3), "run0")
    describe(path, "element", SOAP, dask_client, block_frames=10)
    fit(path, "all", dask_client, FitSettings(references=10_000))
    for cls, n_atoms in (("C", 3), ("H", 8)):
        model = load_class_model(store, "all", cls)
        assert model.refs.Q.shape[0] == 8 * n_atoms
        train = store.group(f"models/all/{cls}/train/s000000-b000000")
        D_in = train["D_in"][:]
        assert np.allclose(D_in @ model.emlm.W[:, 0], train["norm"][:], atol=1e-5)
        assert np.allclose(D_in @ model.oamlm.B_c, train["D_c"][:], atol=1e-5)


def test_training_on_references_only(trained, dask_client):
    summary = fit(trained, "refs", dask_client,
                  FitSettings(references=40, frames="name:run0", train_rows="references"))
    assert summary["classes"]["H"] == {"references": 40, "rows": 40}
    model = load_class_model(Store.open(trained), "refs", "H")
    rows = Store.open(trained).group("models/refs/H/train")
    D_in = np.concatenate([rows[k]["D_in"][:] for k in sorted(rows.group_keys())])
    # The training rows are the references themselves: zero distance on the diagonal.
    assert np.allclose(np.sort(D_in.min(axis=1)), 0.0, atol=1e-6)
    assert model.refs.Q.shape[0] == 40


def test_reload_is_bit_identical(trained):
    frames = md_frames(2, 9)
    first = ForceModel.load(trained, "m")
    second = ForceModel.load(trained, "m")
    for atoms in frames:
        a, b = first.predict(atoms), second.predict(atoms)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    arrays, attrs = first.classes["C"].to_arrays()
    group = Store.open(trained).group("models/m/C")
    stored = group[f"v{group.attrs['version']}"]
    for name, values in arrays.items():
        assert np.array_equal(stored[name][...], values), name


def test_incremental_update_equals_refit_on_union(tmp_path, dask_client):
    path = tmp_path / "s.zarr"
    store = Store.create(path)
    add_segment(store, md_frames(10, 4), "run0")
    describe(path, "element", SOAP, dask_client, block_frames=5)
    fit(path, "inc", dask_client, FitSettings(references=20))
    add_segment(store, md_frames(10, 5), "run1")
    describe(path, "element", SOAP, dask_client, block_frames=5)
    summary = update(path, "inc", dask_client)
    assert summary["updated"] and summary["classes"]["H"]["rows"] == 20 * 8
    model = load_class_model(store, "inc", "H")
    # Independent expectation: one least-squares solve over all rows of both runs.
    train = store.group("models/inc/H/train")
    keys = sorted(train.group_keys())
    assert len(keys) == 4
    D_in = np.concatenate([train[k]["D_in"][:] for k in keys])
    D_c = np.concatenate([train[k]["D_c"][:] for k in keys])
    norm = np.concatenate([train[k]["norm"][:] for k in keys])
    K = D_in.shape[1]
    ridge = np.sqrt(np.finfo(float).eps) / K
    lhs = D_in.T @ D_in + ridge * np.eye(K)
    assert np.allclose(model.emlm.W[:, 0], np.linalg.solve(lhs, D_in.T @ norm), rtol=1e-6,
                       atol=1e-8)
    assert np.allclose(model.oamlm.B_c, np.linalg.solve(lhs, D_in.T @ D_c), rtol=1e-6,
                       atol=1e-8)
    # The stored distances are those of the fixed references.
    assert np.allclose(D_in[:3], input_distances(
        model.scaler.transform(np.concatenate(
            [store.group(f"classes/{Store.open(path).root['models/inc'].attrs['descriptor_set']}"
                         f"/H/{keys[0]}")["X"][:3]]).astype(float)), model.refs.Q))


def test_forcefield_drives_ase_bfgs_and_has_no_energy(trained):
    atoms = md_frames(1, 11)[0]
    atoms.calc = ForceField.load(trained, "m")
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energy()
    atoms.get_forces()
    assert set(atoms.calc.results) >= {"forces", "uncertainty", "min_g"}
    start = np.abs(atoms.get_forces()).max()
    BFGS(ForcesOnly(atoms), maxstep=0.05, logfile=None).run(fmax=0.01, steps=15)
    assert np.abs(atoms.get_forces()).max() < start


def test_evaluate_reports_every_class_and_beats_chance(trained, dask_client, tmp_path):
    test_file = tmp_path / "test.extxyz"
    frames = Store.open(trained).segment(1).read()
    write(str(test_file), frames)
    report = evaluate(trained, "m", [str(test_file)], dask_client, plots=tmp_path / "plots")
    assert set(report["classes"]) == {"C", "H"}
    assert report["classes"]["H"]["n"] == 30 * 8
    # Random directions give a weighted-average angle near 90°.
    assert report["classes"]["H"]["weighted_angle_deg"] < 45
    assert len(report["plots"]) == 2


def _references_for(rows, scheme, max_permutations):
    from oamlm_dist.describe import DescriptorSpec
    from oamlm_dist.descriptors import SoapSettings
    from oamlm_dist.environments import class_permutations
    from oamlm_dist.training import references_from_rows

    spec = DescriptorSpec(scheme, SoapSettings(species=("C", "H")), neighbours=4,
                          max_permutations=max_permutations)
    perms = class_permutations(scheme, "H", 4)
    return references_from_rows(rows, perms, spec, FitSettings(references=1))[1]


def test_element_scheme_aligns_point_sets_unless_permutations_are_capped():
    """Seed 001 aligns bare neighbour positions over all M! permutations: a reference whose
    neighbours are the query's points rotated, but with other element labels, is a perfect
    match (g = 0, the rotation recovered); with capped element-respecting permutations the
    two cannot be paired at all."""
    from oamlm_dist.models.class_model import UNMATCHED_G, align_to_references

    rng = np.random.default_rng(4)
    query = rng.normal(size=(1, 4, 3))
    rotation = Rotation.random(random_state=5).as_matrix()
    reference = query @ rotation.T  # reference points = R · query points
    rows = {"X": np.zeros((1, 3)), "P": reference, "Z": np.array([[6, 6, 1, 1]]),
            "Y": np.array([[0.0, 0.0, 1.0]])}
    query_Z = np.array([[6, 1, 1, 1]])

    refs = _references_for(rows, "element", None)
    R, g, matched = align_to_references("H", query, query_Z, refs)
    assert matched.all() and g[0, 0] < 1e-9
    # R maps the reference onto the query: the inverse of the rotation applied.
    assert np.allclose(R[0, 0], rotation.T, atol=1e-9)

    capped = _references_for(rows, "element", 24)
    _, g, matched = align_to_references("H", query, query_Z, capped)
    assert not matched.any() and g[0, 0] == UNMATCHED_G
