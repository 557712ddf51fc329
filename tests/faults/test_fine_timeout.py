"""A fine calculation that hangs: with ``HybridSettings.fine_timeout_s`` its future is cancelled
and the optimisation stops as after a failed calculation, recorded in ``failures/``."""

from __future__ import annotations

import itertools
import threading
import time

from ase.cluster import Icosahedron
from distributed import Client, LocalCluster

from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.optimize import hybrid
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.hybrid import fine_single_point as real_single_point
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.store import Store
from oamlm_dist.structures import rattle

RELEASE = threading.Event()
CALLS = itertools.count(1)


def hangs_on_second_call(atoms, calculator, params, **options):
    """A fine single point that never returns on its second use (until the test ends)."""
    if next(CALLS) == 2:
        RELEASE.wait(60)
    return real_single_point(atoms, calculator, params, **options)


def test_hanging_fine_calculation_times_out_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(hybrid, "fine_single_point", hangs_on_second_call)
    atoms = Icosahedron("Au", 2)
    atoms.center()
    model = OnlineModel.cold_start(["Au"], scheme="element",
                                   soap=SoapSettings.parse("r_cut=5,n_max=4,l_max=4"))
    store = Store.create(tmp_path / "s.zarr")
    settings = HybridSettings(fine_timeout_s=2.0)
    # In-process workers, so that they run the patched calculation.
    with LocalCluster(n_workers=1, processes=False, resources={"dft": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        try:
            optimizer = HybridOptimizer(rattle(atoms, 0.15, seed=3), model, "emt", name="au13",
                                        settings=settings, store=store)
            start = time.perf_counter()
            result = optimize_many([optimizer], client)[0]
            waited = time.perf_counter() - start
        finally:
            RELEASE.set()  # let the hung worker thread finish before the cluster closes
    assert not result["converged"]
    assert result["stopped"] == "fine calculation 2 failed: timed out after 2 s"
    assert waited < 30
    print(f"hybrid optimisation stopped {waited:.1f} s after it started (timeout 2 s)")
    # The store: the first fine point is kept, the timed-out one is recorded as a failure.
    store = Store.open(tmp_path / "s.zarr")
    assert len(store.segments("fine")) == 1
    record = store.root["failures/au13-fine2"].attrs
    assert record["reason"] == "timed out after 2 s"
    assert record["attempts"] == [{"outcome": "timed_out", "timeout_s": 2.0}]
