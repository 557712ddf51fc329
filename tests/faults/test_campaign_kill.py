"""The client of a campaign SIGKILLed (with its whole local cluster) while ``fit`` runs, then
``campaign resume``: it finishes, recomputes only the blocks not marked done, and the model is
bit-identical to an undisturbed campaign in another directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from oamlm_dist.campaign import load_campaign, run_campaign
from oamlm_dist.store import Store

from .common import arrays_under, assert_same_arrays, markers

CAMPAIGN = """
name: alk
store: alk.zarr
cluster: {workers: 2}
sample: {structures: "alkanes:3", calculator: emt, temperature: 300, steps: 24, runs: 2}
describe: {scheme: element, soap: "r_cut=3,n_max=3,l_max=2", block_frames: 4}
fit: {model: m, references: 40}
"""
FIT_BLOCKS = 2 * (2 * 24 // 4)  # classes C and H, 12 describe blocks each


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "oamlm_dist.cli", *args]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the client and everything it started (scheduler, nannies, workers)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if (os.getpgid(proc.info["pid"]) == process.pid
                        and proc.info["status"] != psutil.STATUS_ZOMBIE):
                    alive.append(proc.info["pid"])
            except (ProcessLookupError, psutil.Error):
                continue
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of the killed campaign still run: {alive}")


def test_killed_campaign_resumes_and_matches_an_undisturbed_one(tmp_path, dask_client):
    undisturbed, killed = tmp_path / "undisturbed", tmp_path / "killed"
    for directory in (undisturbed, killed):
        directory.mkdir()
        (directory / "c.yaml").write_text(CAMPAIGN)
    run_campaign(load_campaign(undisturbed / "c.yaml"), dask_client, log=lambda _: None)

    store = killed / "alk.zarr"
    fit_markers = store / "done" / "fit" / "m"
    with open(killed / "run.log", "w") as log:
        process = subprocess.Popen(cli("campaign", "run", "c.yaml"), cwd=killed, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                # The fit stage has written its first block.
                if fit_markers.is_dir() and any(fit_markers.glob("*/*/zarr.json")):
                    break
                time.sleep(0.005)
        finally:
            kill_group(process)
    at_kill = markers(store, "fit/m/*/*")
    # Killed inside the fit stage (normally with a few of its blocks done; on a very busy
    # machine the poll may see more of them).
    done = Store.open(store).done_keys("campaign/alk")
    assert done == {"sample", "describe"}, (killed / "run.log").read_text()
    assert at_kill

    # Resumed on the running test cluster (starting another local one only costs time).
    (killed / "c.yaml").write_text(CAMPAIGN.replace(
        "cluster: {workers: 2}", f"cluster: {{scheduler: '{dask_client.scheduler.address}'}}"))
    start = time.perf_counter()
    resumed = subprocess.run(cli("campaign", "resume", "c.yaml"), cwd=killed,
                             capture_output=True, text=True, timeout=300)
    recovery_s = time.perf_counter() - start
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["stages_run"] == ["fit"]
    print(f"campaign resume: {recovery_s:.1f} s, {FIT_BLOCKS - len(at_kill)} of "
          f"{FIT_BLOCKS} fit blocks recomputed")

    # Blocks marked done before the kill were not recomputed (their markers are untouched);
    # every other block was computed once by the resumed run.
    after = markers(store, "fit/m/*/*")
    assert len(after) == FIT_BLOCKS
    assert all(after[key] == value for key, value in at_kill.items())
    assert Store.open(store).done_keys("campaign/alk") == {"sample", "describe", "fit"}
    # Every array of the model (references, weights, equations, training blocks) and of
    # the frames: bit-identical to the undisturbed campaign.
    assert_same_arrays(arrays_under(store / "models" / "m"),
                       arrays_under(undisturbed / "alk.zarr" / "models" / "m"))
    assert_same_arrays(arrays_under(store / "frames"),
                       arrays_under(undisturbed / "alk.zarr" / "frames"))
