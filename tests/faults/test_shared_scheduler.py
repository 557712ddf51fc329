"""Two clients staging two stores at the same time on one shared scheduler
(``--scheduler tcp://...``): task keys are global there, so a stage's keys must name its store,
or one store silently misses blocks (and the clients wait on each other's tasks)."""

from __future__ import annotations

import shutil
import threading

from distributed import Client

from oamlm_dist.describe import describe
from oamlm_dist.store import Store
from oamlm_dist.training import FitSettings, fit

from .common import SOAP, alkane_store, arrays_under, assert_same_arrays


def test_two_stores_staged_at_once_on_one_scheduler(tmp_path, dask_client):
    first, second = tmp_path / "a.zarr", tmp_path / "b.zarr"
    alkane_store(first, 2, 12)
    shutil.copytree(first, second)
    outcome: dict = {}

    def stage(path):
        try:
            with Client(dask_client.scheduler.address) as client:
                described = describe(path, "element", SOAP, client, block_frames=4)
                fit(path, "m", client, FitSettings(references=30))
            outcome[path] = described
        except BaseException as exc:
            outcome[path] = exc

    threads = [threading.Thread(target=stage, args=(p,), daemon=True) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "the two stages wait on each other"
    for path in (first, second):
        assert not isinstance(outcome[path], BaseException), outcome[path]
        store = Store.open(path)
        set_name = outcome[path]["set"]
        assert len(store.done_keys(f"describe/{set_name}")) == 6
        assert sum(len(store.done_keys(f"fit/m/{c}")) for c in ("C", "H")) == 12
    # Same frames in both stores: the same rows and the same model, bit for bit.
    assert_same_arrays(arrays_under(first / "classes"), arrays_under(second / "classes"))
    assert_same_arrays(arrays_under(first / "models"), arrays_under(second / "models"))
