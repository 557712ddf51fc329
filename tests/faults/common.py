"""Helpers shared by the fault tests: small EMT alkane data, store snapshots, worker kills."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from oamlm_dist.store import FrameBatch, Store
from tests.conftest import md_frames

SOAP = "r_cut=3,n_max=3,l_max=2"


def alkane_store(path: str | os.PathLike, segments: int, frames: int) -> Store:
    """A store with ``segments`` complete MD segments of ``frames`` propane frames each."""
    store = Store.create(path)
    for run in range(segments):
        segment = store.new_segment("md", {"name": f"run{run}"})
        segment.append(FrameBatch.from_atoms(md_frames(frames, seed=run + 1)))
        segment.mark_complete()
    return store


def arrays_under(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array below the Zarr group at ``path``, by its path relative to it."""
    out: dict[str, np.ndarray] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, array in group.arrays():
            out[prefix + name] = array[...]
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def assert_same_arrays(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and bits (NaN padding included)."""
    assert sorted(actual) == sorted(expected)
    for name, values in expected.items():
        other = actual[name]
        assert other.dtype == values.dtype and other.shape == values.shape, name
        assert other.tobytes() == values.tobytes(), name


def markers(store_path: str | os.PathLike, pattern: str) -> dict[str, tuple[bytes, int]]:
    """Done-markers matching ``pattern`` under ``done/`` (e.g. ``"fit/m/*/*"``): marker path ->
    (its document, its file's mtime in ns)."""
    root = Path(store_path) / "done"
    return {str(p.parent.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in root.glob(f"{pattern}/zarr.json")}


def executing(dask_worker) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


def _pid_and_executing(dask_worker) -> tuple[int, list[str]]:
    return os.getpid(), executing(dask_worker)


def running_tasks(client) -> dict[str, tuple[int, list[str]]]:
    """Worker address -> (its pid, keys it is executing), in one round trip."""
    return client.run(_pid_and_executing)


def worker_running(client, prefix: str) -> tuple[int, str] | None:
    """(pid, task key) of a worker executing a task whose key starts with ``prefix``."""
    for address, keys in client.run(executing).items():
        for key in keys:
            if key.startswith(prefix):
                return client.run(os.getpid, workers=[address])[address], key
    return None


def run_and_kill_a_worker(client, stage: Callable[[], dict], prefix: str,
                          progress: Callable[[], int], total: int, timeout: float = 90.0
                          ) -> tuple[dict, dict]:
    """Run ``stage()`` in a thread and SIGKILL the worker process executing one of its tasks
    (key ``prefix``...) once ``progress()`` shows some but not all blocks done.

    Returns the stage's result and what was killed: pid, key, blocks done at the kill, and
    the seconds from the kill to the end of the stage.
    """

    def pick() -> dict | None:
        done = progress()
        if 1 <= done < total:
            found = worker_running(client, prefix)
            if found:
                return {"pid": found[0], "key": found[1], "done_at_kill": done}
        return None

    return run_and_kill_when(client, stage, pick, timeout)


def run_and_kill_when(client, stage: Callable[[], object],
                      pick: Callable[[], dict | None], timeout: float = 90.0
                      ) -> tuple[object, dict]:
    """Run ``stage()`` in a thread and SIGKILL the worker process named by ``pick()``: polled
    until it returns ``{"pid": ..., "key": ..., ...}`` (the worker and the task it is in the
    middle of) or the stage ends. For kills that need more than :func:`run_and_kill_a_worker`'s
    "some blocks done" condition, e.g. "this task has committed part of its output".

    Returns the stage's result and ``pick()``'s dict plus ``killed_at`` (``time.time()`` just
    after the kill) and ``recovered_s``, the seconds from the kill to the end of the stage (an
    empty dict if nothing was killed).
    """
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = stage()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    killed: dict = {}
    deadline = time.monotonic() + timeout
    while thread.is_alive() and not killed and time.monotonic() < deadline:
        time.sleep(0.02)
        chosen = pick()
        if chosen:
            os.kill(chosen["pid"], signal.SIGKILL)
            killed = {**chosen, "at": time.perf_counter(), "killed_at": time.time()}
    thread.join(timeout)
    if killed:
        killed["recovered_s"] = time.perf_counter() - killed.pop("at")
    assert not thread.is_alive(), "the stage did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], killed


# Stimulus ids of the scheduler's ``remove_worker`` calls for a worker that went away.
WORKER_LOST = ("handle-worker-cleanup-", "nanny-close-", "worker-send-comm-fail-",
               "send-all-comm-fail-", "check-worker-ttl-")


def task_story(client, key: str) -> dict:
    """What the scheduler's transition log says about task ``key``: how often it started
    (went to ``processing``), and how often it was taken back because its worker was lost
    (``Scheduler.remove_worker``: called when the connection breaks, when the nanny that saw
    the process die unregisters it, or when a send or heartbeat fails, whichever comes
    first); ``transitions`` has the whole story."""

    def story(dask_scheduler) -> list[tuple[str, str, str]]:
        return [(t.start, t.finish, t.stimulus_id) for t in dask_scheduler.story(key)]

    transitions = client.run_on_scheduler(story)
    return {
        "started": sum(finish == "processing" for _, finish, _ in transitions),
        "lost_with_worker": sum(start == "processing" and finish == "released"
                                and stimulus.startswith(WORKER_LOST)
                                for start, finish, stimulus in transitions),
        "transitions": transitions,
    }
