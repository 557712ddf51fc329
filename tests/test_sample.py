"""MD sampling on Dask: frame counts, determinism, and a worker killed mid-run."""

import os
import signal
import threading
import time

import numpy as np
from distributed import Client

from oamlm_dist.cluster import local_cluster
from oamlm_dist.errors import InputError
from oamlm_dist.sample import MDSettings, sample
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
