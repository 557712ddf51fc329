import json

import numpy as np
import pytest
import zarr

from oamlm_dist.errors import StoreError
from oamlm_dist.store import LAYOUT_VERSION, FrameBatch, Store, settings_key
from tests.conftest import emt_frames


def test_segments_round_trip_and_commit_extent(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    frames = emt_frames(5)
    segment = store.new_segment("md", {"name": "x"})
    segment.append(FrameBatch.from_atoms(frames[:3]))
    segment.append(FrameBatch.from_atoms(frames[3:]))
    back = Store.open(tmp_path / "s.zarr").segment(segment.id).read()
    assert len(back) == 5
    for a, b in zip(frames, back, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.get_forces(), b.get_forces())
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.numbers, b.numbers)


def test_rows_beyond_committed_extent_are_invisible_and_overwritten(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    segment = store.new_segment("md", {})
    frames = emt_frames(3)
    segment.append(FrameBatch.from_atoms(frames[:1]))
    # A writer killed after its array writes but before the commit leaves extra rows.
    batch = FrameBatch.from_atoms(frames[1:2])
    segment.group["natoms"].resize((2,))
    segment.group["natoms"][1] = 999
    assert segment.n_frames == 1 and len(segment.read()) == 1
    segment.append(batch)
    assert segment.n_frames == 2
    assert segment.group["natoms"][1] == len(frames[1])


def test_segment_ids_are_unique_under_concurrent_reservation(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    other = Store.open(tmp_path / "s.zarr", mode="a")
    ids = [store.new_segment("x", {}).id, other.new_segment("x", {}).id,
           store.new_segment("x", {}).id]
    assert sorted(ids) == [0, 1, 2]


def test_newer_layout_version_is_refused(tmp_path):
    Store.create(tmp_path / "s.zarr")
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs["layout_version"] = LAYOUT_VERSION + 1
    with pytest.raises(StoreError, match="newer oamlm-dist"):
        Store.open(tmp_path / "s.zarr")


def test_open_missing_and_foreign_directories(tmp_path):
    with pytest.raises(StoreError, match="no oamlm-dist store"):
        Store.open(tmp_path / "missing.zarr")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.txt").write_text("x")
    with pytest.raises(StoreError, match="not an oamlm-dist store"):
        Store.create(tmp_path / "foreign")


def test_done_markers(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    assert not store.is_done("describe", "b0")
    store.mark_done("describe", "b0", {"rows": 3})
    store.mark_done("describe", "b1")
    assert store.done_keys("describe") == {"b0", "b1"}
    assert Store.open(tmp_path / "s.zarr").is_done("describe", "b0")
    store.clear_done("describe")
    assert store.done_keys("describe") == set()
    with pytest.raises(StoreError):
        store.mark_done("describe", "../escape")


def test_read_only_store_refuses_writes(tmp_path):
    Store.create(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="read-only"):
        Store.open(tmp_path / "s.zarr").new_segment("x", {})


def test_provenance_attrs(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    attrs = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["layout_version"] == LAYOUT_VERSION
    assert "created" in attrs and "package_version" in attrs
    assert store.summary()["frames"] == 0


def test_settings_key_is_order_independent():
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def _mark_from_another_process(args):
    path, i = args
    store = Store.open(path, mode="a")
    store.mark_done("fit/model/Au_unit", f"b{i}")
    return store.group("models/m/Au_unit/train", create=True).path


def test_concurrent_group_creation_and_markers(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    # Processes, as Dask workers are: each races to create the same parent groups.
    for trial in range(3):
        path = tmp_path / f"s{trial}.zarr"
        Store.create(path)
        with ProcessPoolExecutor(8) as pool:
            paths = list(pool.map(_mark_from_another_process, [(path, i) for i in range(16)]))
        assert set(paths) == {"models/m/Au_unit/train"}
        assert len(Store.open(path).done_keys("fit/model/Au_unit")) == 16
