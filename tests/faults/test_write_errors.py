"""Write errors: a full disk during one describe block's region write, and a client that dies
while it writes a class's references. The store stays readable, nothing finished is lost, the
failed block is not marked done, and a rerun completes to the undisturbed result."""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
import time

import pytest
from distributed import LocalCluster

from oamlm_dist import training
from oamlm_dist.cli import main
from oamlm_dist.describe import describe
from oamlm_dist.store import Store
from oamlm_dist.training import FitSettings, fit

from .common import SOAP, alkane_store, arrays_under, assert_same_arrays

FAILING = "s000000-b000001"


def error_lines(stderr: str) -> list[str]:
    """stderr without the informational dashboard line."""
    return [line for line in stderr.strip().splitlines()
            if not line.startswith("dask dashboard:")]


@pytest.fixture
def full_disk(monkeypatch):
    """Writes of block ``FAILING``'s class rows fail half-way with ENOSPC."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if "classes" in self.parts and FAILING in self.parts:
            real(self, bytes(memoryview(data).cast("B"))[: len(memoryview(data)) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    return monkeypatch


# The failed block's directory has no group document (it was never completed): Zarr says so
# when the set is listed, and skips it.
@pytest.mark.filterwarnings("ignore:Object at .* is not recognized")
def test_disk_full_in_a_describe_block(tmp_path, capsys, full_disk, dask_client):
    reference = tmp_path / "reference.zarr"
    alkane_store(reference, 1, 15)
    path = tmp_path / "s.zarr"
    shutil.copytree(reference, path)
    args = ["describe", str(path), "--scheme", "element", "--soap", SOAP, "--block-frames", "5"]
    # In-process workers, so that they write through the patched file system.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        scheduler = ["--scheduler", cluster.scheduler_address]
        assert main([*args, *scheduler]) == 2
        captured = capsys.readouterr()
        lines = error_lines(captured.err)
        assert len(lines) == 1 and "Traceback" not in captured.err
        assert lines[0].startswith("oamlm-dist describe: error: ")
        assert FAILING in lines[0] and "No space left on device" in lines[0]

        # The store stays readable; the failed block is not done, finished blocks are intact.
        store = Store.open(path)
        (set_name,) = store.group("classes").group_keys()
        done = store.done_keys(f"describe/{set_name}")
        assert FAILING not in done and "s000000-b000000" in done
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["frames"] == 15
        assert info["descriptor_sets"][0]["blocks_done"] == len(done) < 3
        describe(reference, "element", SOAP, dask_client, block_frames=5)
        expected = arrays_under(reference / "classes" / set_name)
        kept = arrays_under(path / "classes" / set_name)
        assert_same_arrays({k: v for k, v in kept.items() if k.split("/")[1] in done},
                           {k: v for k, v in expected.items() if k.split("/")[1] in done})

        # Space again: the rerun computes only the missing blocks and completes.
        full_disk.undo()
        start = time.perf_counter()
        assert main([*args, *scheduler]) == 0
        rerun_s = time.perf_counter() - start
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        print(f"describe rerun after the disk-full error: {rerun_s:.1f} s")
    assert summary["blocks_computed"] == 3 - len(done)
    assert summary["blocks_done_before"] == len(done)
    assert_same_arrays(arrays_under(path / "classes" / set_name), expected)


def test_client_killed_while_writing_references(tmp_path, monkeypatch, dask_client):
    reference = tmp_path / "reference.zarr"
    alkane_store(reference, 1, 12)
    describe(reference, "element", SOAP, dask_client, block_frames=4)
    path = tmp_path / "s.zarr"
    shutil.copytree(reference, path)
    settings = FitSettings(references=30)
    fit(reference, "m", dask_client, settings)

    real = training.write_arrays

    def dies_after_first_array(group, arrays):
        if "ref_Q" in arrays:  # the class model with its references, written by the client
            real(group, dict(list(arrays.items())[:1]))
            raise KeyboardInterrupt  # the client stops here (Ctrl-C, or killed)
        real(group, arrays)

    monkeypatch.setattr(training, "write_arrays", dies_after_first_array)
    with pytest.raises(KeyboardInterrupt):
        fit(path, "m", dask_client, settings)
    monkeypatch.undo()
    store = Store.open(path)
    partial = store.group("models/m")
    assert not store.done_keys("fit/m/C") and "blocks" not in partial[
        partial.group_keys().__next__()].attrs

    # The rerun chooses the interrupted class's references again and finishes the model.
    start = time.perf_counter()
    summary = fit(path, "m", dask_client, settings)
    print(f"fit rerun after the interrupted references: {time.perf_counter() - start:.1f} s")
    assert set(summary["classes"]) == {"C", "H"}
    assert_same_arrays(arrays_under(path / "models" / "m"),
                       arrays_under(reference / "models" / "m"))
