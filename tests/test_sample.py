"""MD sampling on Dask: frame counts, determinism, and a worker killed mid-run."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from distributed import Client

from oamlm_dist import sample as sample_module
from oamlm_dist import warm
from oamlm_dist.calculators import GPAWCalculator, fine_single_point
from oamlm_dist.cluster import local_cluster
from oamlm_dist.errors import InputError
from oamlm_dist.sample import MDSettings, plan_runs, run_md, sample
from oamlm_dist.store import Store


def test_sample_writes_expected_frames(tmp_path, dask_client):
    settings = MDSettings(temperature=400, steps=30, timestep=1.0, interval=3, seed=2)
    summary = sample(tmp_path / "s.zarr", "rings:3,alkanes:2", "xtb", {}, settings, runs=2,
                     client=dask_client)
    assert summary["runs"] == 4 and summary["frames"] == 4 * 10
    store = Store.open(tmp_path / "s.zarr")
    segments = store.segments("md")
    assert all(s.n_frames == 10 and s.attrs["complete"] for s in segments)
    frames = segments[0].read()
    assert all("energy" in f.calc.results for f in frames)
    # Rerunning the same request is a no-op.
    again = sample(tmp_path / "s.zarr", "rings:3,alkanes:2", "xtb", {}, settings, runs=2,
                   client=dask_client)
    assert again["ran"] == 0 and len(Store.open(tmp_path / "s.zarr").segments()) == 4


def test_bad_settings_are_rejected_before_anything_is_written(tmp_path, dask_client):
    for bad in (MDSettings(steps=10, interval=3), MDSettings(timestep=0)):
        try:
            sample(tmp_path / "s.zarr", "rings:3", "xtb", {}, bad, runs=1, client=dask_client)
        except InputError:
            pass
        else:
            raise AssertionError("bad MD settings accepted")
    assert not (tmp_path / "s.zarr").exists()


def _executing_worker_pid(client, prefix):
    def executing(dask_worker):
        return [str(ts.key) for ts in dask_worker.state.executing]

    for address, keys in client.run(executing).items():
        if any(k.startswith(prefix) for k in keys):
            return client.run(os.getpid, workers=[address])[address]
    return None


def test_killed_worker_loses_only_uncommitted_frames_and_resumes(tmp_path):
    settings = MDSettings(temperature=500, steps=200, timestep=1.0, seed=4, flush_every=20)
    with Client(local_cluster(n_workers=2)) as client:
        result = {}
        thread = threading.Thread(target=lambda: result.update(sample(
            tmp_path / "killed.zarr", "rings:4", "xtb", {}, settings, runs=1, client=client)))
        thread.start()
        deadline = time.time() + 120
        killed = False
        while time.time() < deadline and not killed:
            time.sleep(0.2)
            try:
                segments = Store.open(tmp_path / "killed.zarr").segments("md")
            except Exception:
                continue
            if segments and 20 <= segments[0].n_frames < 200:
                pid = _executing_worker_pid(client, "md-")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed = segments[0].n_frames
        thread.join(300)
        assert killed, "the run finished before a worker could be killed"
        assert result["frames"] == 200
        sample(tmp_path / "clean.zarr", "rings:4", "xtb", {}, settings, runs=1, client=client)
    resumed = Store.open(tmp_path / "killed.zarr").segments("md")[0]
    clean = Store.open(tmp_path / "clean.zarr").segments("md")[0]
    assert resumed.n_frames == clean.n_frames == 200
    # The resumed run continued from its last committed frame: the same trajectory.
    assert np.allclose(resumed.group["positions"][:], clean.group["positions"][:], atol=1e-8)


def test_md_of_a_molecule_is_one_warm_series_in_one_box(tmp_path, monkeypatch):
    """GPAW's path with EMT inside (as in test_calculators): the molecule is boxed once, so
    the cell stays put, and every MD step after the first starts from the previous step's
    calculator; the energies are EMT's at the stored positions."""
    monkeypatch.setattr(GPAWCalculator, "build", lambda self: EMT())
    calls = []

    def recording(atoms, name, params, series=None):
        result = fine_single_point(atoms, name, params, series=series)
        calls.append((result.attempts[-1]["warm_start"], atoms.cell.array.copy()))
        return result

    monkeypatch.setattr(sample_module, "fine_single_point", recording)
    warm.clear()
    store = Store.create(tmp_path / "s.zarr")
    settings = MDSettings(temperature=300, steps=6, timestep=1.0, interval=2, seed=1)
    cu3 = Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.0, 0]])
    [plan] = plan_runs(store, [("cu3", cu3)], "gpaw", {}, settings, runs=1)
    run_md(str(store.path), plan["segment"].id, cu3, "gpaw", {}, settings, 0)
    warm.clear()
    assert len(calls) >= settings.steps
    assert [w for w, _ in calls] == [False] + [True] * (len(calls) - 1)
    cells = np.array([c for _, c in calls])
    assert np.linalg.matrix_rank(cells[0]) == 3 and (cells == cells[0]).all()
    frames = store.segment(plan["segment"].id).read()
    assert len(frames) == settings.n_frames
    for frame in frames:
        plain = Atoms(frame.numbers, frame.positions, cell=frame.cell, calculator=EMT())
        assert frame.calc.results["energy"] == pytest.approx(plain.get_potential_energy(),
                                                             abs=1e-9)


class _EMTFailingFrom(EMT):
    """EMT whose SCF "fails" (GPAW's error) from the ``fail_from``-th call of all instances."""

    calls = 0
    fail_from = 10**9

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls >= self.fail_from:
            from gpaw import KohnShamConvergenceError

            raise KohnShamConvergenceError("Did not converge!")
        super().calculate(*args, **kwargs)


def test_md_run_ends_at_an_scf_failure_with_the_frames_before_it(tmp_path, monkeypatch):
    """A run whose SCF fails on both attempts keeps its frames and is finished, not retried:
    a rerun would follow the same trajectory into the same failure."""
    from distributed import LocalCluster

    from oamlm_dist.cluster import FINE_RESOURCE

    monkeypatch.setattr(GPAWCalculator, "build", lambda self: _EMTFailingFrom())
    monkeypatch.setattr(_EMTFailingFrom, "calls", 0)
    monkeypatch.setattr(_EMTFailingFrom, "fail_from", 8)  # the initial forces, 6 steps, fail
    warm.clear()
    settings = MDSettings(temperature=300, steps=12, timestep=1.0, interval=1, seed=1,
                          flush_every=3)
    cu3 = [("cu3", Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.0, 0]]))]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      resources={FINE_RESOURCE: 1}, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = sample(tmp_path / "s.zarr", cu3, "gpaw", {}, settings, runs=1, client=client)
        again = sample(tmp_path / "s.zarr", cu3, "gpaw", {}, settings, runs=1, client=client)
    warm.clear()
    [(name, reason)] = summary["stopped"].items()
    assert name == "cu3/run0" and "SCF" in reason and "frame 6" in reason
    [segment] = Store.open(tmp_path / "s.zarr").segments("md")
    assert segment.attrs["complete"] and segment.n_frames == summary["frames"] == 6
    frames = segment.read()
    for frame in frames:  # the kept frames are whole: EMT's energies at their positions
        plain = Atoms(frame.numbers, frame.positions, cell=frame.cell, calculator=EMT())
        assert frame.calc.results["energy"] == pytest.approx(plain.get_potential_energy(),
                                                             abs=1e-9)
    assert again["ran"] == 0 and again["stopped"] == summary["stopped"]
