import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from dscribe.descriptors import SOAP

from oamlm_dist import describe as describe_module
from oamlm_dist.describe import (
    ROW_FIELDS,
    STAGE,
    DescriptorSpec,
    describe,
    describe_block,
    describe_frames,
    load_class_rows,
    plan_blocks,
    prepare_set,
)
from oamlm_dist.descriptors import SoapSettings, make_soap, soap_rows
from oamlm_dist.errors import SchemeError
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold_thiolate_ring, rattle


def ring_frames(n_frames, size=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_frames):
        atoms = rattle(gold_thiolate_ring(size), 0.03, seed=seed + i)
        atoms.calc = SinglePointCalculator(atoms, forces=rng.normal(size=(len(atoms), 3)),
                                           energy=float(i))
        frames.append(atoms)
    return frames


@pytest.fixture
def ring_store(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("ingest", {})
    segment.append(FrameBatch.from_atoms(ring_frames(7)))
    segment.mark_complete()
    return store


def test_rows_equal_direct_dscribe_and_forces(ring_store, dask_client):
    summary = describe(ring_store.path, "thiolate", "r_cut=3.5,n_max=3,l_max=2,sigma=0.3",
                       dask_client, block_frames=3)
    assert summary["blocks_computed"] == 3
    frames = ring_store.segment(0).read()
    soap = SOAP(species=["H", "C", "S", "Au"], r_cut=3.5, n_max=3, l_max=2, sigma=0.3)
    for cls in ("Au_unit", "S", "C", "H"):
        rows = load_class_rows(ring_store, summary["set"], cls)
        assert set(rows) == set(ROW_FIELDS)
        assert summary["rows"][cls] == len(rows["atom"]) > 0
        for i in range(len(rows["atom"])):
            atoms = frames[rows["frame"][i]]
            direct = soap.create(atoms, centers=[int(rows["atom"][i])])[0]
            assert np.array_equal(rows["X"][i], direct.astype(np.float32))
            force = atoms.get_forces()[rows["atom"][i]]
            assert np.isclose(rows["norm"][i], np.linalg.norm(force))
            assert np.allclose(rows["Y"][i] * rows["norm"][i], force)
    assert summary["rows"]["Au_unit"] == 7 * 4 and summary["rows"]["H"] == 7 * 12


def test_resume_recomputes_only_missing_blocks(ring_store, dask_client):
    first = describe(ring_store.path, "thiolate", "n_max=2,l_max=1", dask_client,
                     block_frames=3)
    before = load_class_rows(ring_store, first["set"], "S")
    stage = f"{STAGE}/{first['set']}"
    kept = dict(ring_store.root[f"done/{stage}/s000000-b000000"].attrs)
    ring_store.clear_done(stage)  # as if killed before any marker was written...
    ring_store.mark_done(stage, "s000000-b000000", kept)
    # ...except the first block's: only the other two are recomputed.
    again = describe(ring_store.path, "thiolate", "n_max=2,l_max=1", dask_client,
                     block_frames=3)
    assert again["blocks_computed"] == 2 and again["blocks_done_before"] == 1
    after = load_class_rows(ring_store, first["set"], "S")
    assert all(np.array_equal(before[f], after[f], equal_nan=True) for f in ROW_FIELDS)


def test_other_settings_make_another_set(ring_store, dask_client):
    a = describe(ring_store.path, "thiolate", "n_max=2,l_max=1", dask_client, block_frames=4)
    b = describe(ring_store.path, "thiolate", "n_max=3,l_max=1", dask_client, block_frames=4)
    assert a["set"] != b["set"]
    xa = load_class_rows(ring_store, a["set"], "C")["X"]
    xb = load_class_rows(ring_store, b["set"], "C")["X"]
    assert xa.shape[1] != xb.shape[1] and len(xa) == len(xb)


def test_growing_segment_tail_waits(tmp_path, dask_client):
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("md", {})
    segment.append(FrameBatch.from_atoms(ring_frames(5)))
    result = describe(store.path, "element", "n_max=2,l_max=1", dask_client, block_frames=3)
    assert result["blocks_computed"] == 1  # frames 3-4 are not final yet
    segment.mark_complete()
    result = describe(store.path, "element", "n_max=2,l_max=1", dask_client, block_frames=3)
    assert result["blocks_computed"] == 1 and result["rows"]["Au"] == 5 * 4


def test_scheme_error_names_segment_frame_and_atom(tmp_path, dask_client):
    store = Store.create(tmp_path / "s.zarr")
    frames = ring_frames(2)
    del frames[1][[a.index for a in frames[1] if a.symbol == "H"][:1]]
    frames[1].calc = SinglePointCalculator(frames[1], forces=np.zeros((len(frames[1]), 3)))
    segment = store.new_segment("ingest", {})
    segment.append(FrameBatch.from_atoms(frames))
    segment.mark_complete()
    with pytest.raises(SchemeError, match="segment 0 frame 1, atom"):
        describe(store.path, "thiolate", "n_max=2,l_max=1", dask_client)


def test_rows_in_memory_and_stored_in_batches_equal_direct_soap_rows(tmp_path, monkeypatch):
    # Periodic SOAP: a frame with a cell takes DScribe's plain path, one without a cell the
    # placeholder-cell path of soap_rows. Stored blocks of 4 frames are written in batches
    # of 2 frames.
    frames = ring_frames(7, size=5)
    for atoms in frames[::2]:
        atoms.cell = [30.0, 30.0, 30.0]
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("ingest", {})
    segment.append(FrameBatch.from_atoms(frames))
    segment.mark_complete()
    settings = SoapSettings(r_cut=3.5, n_max=3, l_max=2, sigma=0.3,
                            species=("H", "C", "S", "Au"), periodic=True)
    spec = DescriptorSpec("thiolate", settings, block_frames=4)
    soap = make_soap(settings)
    monkeypatch.setattr(describe_module._BlockWriter, "batch_bytes",
                        2 * len(frames[0]) * 4 * soap.get_number_of_features())
    name = prepare_set(store, spec)
    for segment_id, block in plan_blocks(store, spec.block_frames):
        describe_block(str(store.path), name, segment_id, block)
    rows = describe_frames(frames, spec)
    assert list(rows) == ["Au_unit", "S", "C", "H"]
    for cls, fields in rows.items():
        assert len(fields["atom"]) == 7 * (15 if cls == "H" else 5)
        stored = load_class_rows(store, name, cls)
        for field in ROW_FIELDS:
            if field != "segment":  # -1 in memory without frame ids
                assert np.array_equal(stored[field], fields[field], equal_nan=True)
        for frame in range(7):
            mine = fields["frame"] == frame
            direct = soap_rows(soap, frames[frame], fields["atom"][mine].astype(np.int64))
            assert np.array_equal(fields["X"][mine], direct.astype(np.float32))
