"""A worker process SIGKILLed in the middle of ``describe`` and of ``fit`` (its alignment
blocks): the scheduler reruns the lost tasks on the remaining and restarted workers, and the
stored rows and model are bit-identical to an undisturbed run."""

from __future__ import annotations

import os
import shutil

import pytest

from oamlm_dist.describe import describe
from oamlm_dist.store import Store
from oamlm_dist.training import FitSettings, fit

from .common import (
    SOAP,
    alkane_store,
    arrays_under,
    assert_same_arrays,
    markers,
    run_and_kill_a_worker,
)

BLOCK_FRAMES = 4
SEGMENTS, FRAMES = 2, 40  # 20 describe blocks, 40 fit blocks (two classes)
SETTINGS = FitSettings(references=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client):
    """Undisturbed runs: ``fresh`` (frames only), ``described`` and ``fitted`` stores."""
    root = tmp_path_factory.mktemp("reference")
    alkane_store(root / "fresh.zarr", SEGMENTS, FRAMES)
    shutil.copytree(root / "fresh.zarr", root / "described.zarr")
    summary = describe(root / "described.zarr", "element", SOAP, client,
                       block_frames=BLOCK_FRAMES)
    shutil.copytree(root / "described.zarr", root / "fitted.zarr")
    fit(root / "fitted.zarr", "m", client, SETTINGS)
    return root, summary["set"]


def test_describe_survives_a_killed_worker(tmp_path, client, reference):
    root, set_name = reference
    path = tmp_path / "s.zarr"
    shutil.copytree(root / "fresh.zarr", path)
    total = SEGMENTS * FRAMES // BLOCK_FRAMES
    result, killed = run_and_kill_a_worker(
        client, lambda: describe(path, "element", SOAP, client, block_frames=BLOCK_FRAMES),
        f"describe-{set_name}-", lambda: len(markers(path, f"describe/{set_name}/*")), total)
    assert killed, "the stage finished before a worker could be killed"
    print(f"describe: worker killed with {killed['done_at_kill']}/{total} blocks done, "
          f"finished {killed['recovered_s']:.1f} s later")
    # The killed process is gone; its restarted replacement and the other worker remain.
    assert killed["pid"] not in client.run(os.getpid).values()
    assert result["blocks_computed"] == total
    # The store: every block marked done, the killed block included, and every array of
    # the class groups bit-identical to the undisturbed run.
    store = Store.open(path)
    assert len(store.done_keys(f"describe/{set_name}")) == total
    killed_block = "-".join(killed["key"].split("-")[-2:])  # ...-s000000-b000002
    assert killed_block in store.done_keys(f"describe/{set_name}")
    assert_same_arrays(arrays_under(path / "classes" / set_name),
                       arrays_under(root / "described.zarr" / "classes" / set_name))
    assert result["rows"] == {"H": SEGMENTS * FRAMES * 8, "C": SEGMENTS * FRAMES * 3}


def test_fit_survives_a_killed_worker_in_its_alignment_blocks(tmp_path, client, reference):
    root, _ = reference
    path = tmp_path / "s.zarr"
    shutil.copytree(root / "described.zarr", path)
    total = 2 * SEGMENTS * FRAMES // BLOCK_FRAMES
    result, killed = run_and_kill_a_worker(
        client, lambda: fit(path, "m", client, SETTINGS), "fit-m-",
        lambda: len(markers(path, "fit/m/*/*")), total)
    assert killed, "the stage finished before a worker could be killed"
    print(f"fit: worker killed with {killed['done_at_kill']}/{total} blocks done, "
          f"finished {killed['recovered_s']:.1f} s later")
    assert killed["pid"] not in client.run(os.getpid).values()
    assert result["classes"]["H"] == {"references": 60, "rows": SEGMENTS * FRAMES * 8}
    store = Store.open(path)
    assert sum(len(store.done_keys(f"fit/m/{c}")) for c in ("C", "H")) == total
    # Model, equations and every training block: bit-identical to the undisturbed fit.
    assert_same_arrays(arrays_under(path / "models" / "m"),
                       arrays_under(root / "fitted.zarr" / "models" / "m"))
