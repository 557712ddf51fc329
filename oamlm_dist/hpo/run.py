"""Running a swarm: evaluations as Dask futures, every evaluation and state in the store.

Store layout of a run (``path`` is ``hpo/<run>`` or, for strategy 2, ``hpo/<run>/stage<k>``)::

    <path>/                 attrs: settings (swarm, objective), created
        evals/<i>-<p>/      attrs of the evaluation of particle p in iteration i: params,
                            objective, status (ok | failed | error | timeout), error,
                            wall_s, worker, time
        state/              attrs: iteration, the swarm state as JSON (written last)

An iteration's evaluations are recorded before its state, so a killed run restarts from the
last stored state: the iteration it was in is evaluated again (same positions, same keys)
and the run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from oamlm_dist.errors import InputError
from oamlm_dist.hpo.swarm import Swarm
from oamlm_dist.store import Store, now_iso

Objective = Callable[[dict[str, Any]], float]


# ---- one evaluation ------------------------------------------------------------------------
def evaluate_params(objective: Objective, params: dict[str, Any]) -> dict[str, Any]:
    """Score one parameter set; never raises (an exception is a failed evaluation).

    Runs inside a Dask task (or in-process). Returns ``objective`` (``inf`` unless finite),
    ``status``, ``error``, ``wall_s`` and ``worker`` (the Dask worker's address, or
    ``"local"``).
    """
    start = time.perf_counter()
    error = ""
    try:
        value = float(objective(params))
        status = "ok" if math.isfinite(value) else "failed"
    except Exception as exc:  # any failure of a trial is a result, not a crash of the run
        value, status, error = math.inf, "error", f"{type(exc).__name__}: {exc}"[:500]
    return {"objective": value if math.isfinite(value) else math.inf, "status": status,
            "error": error, "wall_s": time.perf_counter() - start, "worker": _worker_address()}


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def evaluate_batch(objective: Objective, candidates: list[dict[str, Any]], client=None,
                   timeout: float | None = None, key_prefix: str = "hpo") -> list[dict]:
    """Evaluate parameter sets, as Dask futures when ``client`` is given.

    ``timeout`` (seconds, Dask only) bounds the whole batch: evaluations not finished by then
    are cancelled and scored ``timeout`` (``inf``). A running Python task cannot be
    interrupted, so its worker stays busy until the task returns; the swarm does not wait.
    """
    if client is None:
        return [evaluate_params(objective, params) for params in candidates]
    from distributed import wait

    start = time.perf_counter()
    futures = [client.submit(evaluate_params, objective, params, pure=False,
                             key=f"{key_prefix}-{i}") for i, params in enumerate(candidates)]
    try:
        wait(futures, timeout=timeout)
    except TimeoutError:
        pass
    unfinished = [f for f in futures if f.status not in ("finished", "error")]
    where: dict = {}
    if unfinished:
        try:  # which worker holds a stalled evaluation (recorded with it)
            where = {key: worker for worker, keys in client.processing().items()
                     for key in keys}
        except Exception:  # diagnostics only
            where = {}
    elapsed = time.perf_counter() - start
    results = []
    for future in futures:
        if future.status == "finished":
            results.append(future.result())
        elif future.status == "error":  # the task itself died (worker lost, unpicklable, ...)
            results.append({"objective": math.inf, "status": "error",
                            "error": f"{type(future.exception()).__name__}: "
                                     f"{future.exception()}"[:500],
                            "wall_s": elapsed, "worker": ""})
        else:  # still running at the deadline, or cancelled by the cluster (worker lost)
            status = "timeout" if future.status == "pending" else future.status
            results.append({"objective": math.inf, "status": status,
                            "error": f"not finished after {elapsed:.1f} s ({future.status})",
                            "wall_s": elapsed, "worker": where.get(future.key, "")})
    client.cancel(unfinished)
    return results


# ---- the record in the store ---------------------------------------------------------------
class RunRecord:
    """Evaluations and swarm states of one run under ``path`` in a store."""

    def __init__(self, store: Store, path: str):
        self.store = store
        self.path = path

    @property
    def exists(self) -> bool:
        return self.path in self.store.root

    def start(self, settings: dict[str, Any]) -> str | None:
        """Create the run (or check an existing one's settings); returns its stored state.

        Raises
        ------
        InputError
            If the run exists with other settings.
        """
        group = self.store.group(self.path, create=True)
        stored = group.attrs.get("settings")
        canonical = json.loads(json.dumps(settings))
        if stored is None:
            group.update_attributes({"settings": canonical, "created": now_iso()})
            return None
        if stored != canonical:
            changed = sorted(k for k in set(stored) | set(canonical)
                             if stored.get(k) != canonical.get(k))
            raise InputError(f"{self.path} exists with other settings ({', '.join(changed)}); "
                             "rerun with the same settings to resume, or choose another --run")
        if f"{self.path}/state" in self.store.root:
            return self.store.group(f"{self.path}/state").attrs.get("swarm")
        return None

    def record(self, iteration: int, particle: int, params: dict, result: dict) -> None:
        """Store one evaluation (overwrites a record left by a killed run)."""
        attrs = {"iteration": iteration, "particle": particle, "params": params,
                 "time": now_iso(), **result}
        attrs["objective"] = _json_float(attrs["objective"])
        evals = self.store.group(f"{self.path}/evals", create=True)
        evals.create_group(f"{iteration:05d}-{particle:04d}", overwrite=True, attributes=attrs)

    def save_state(self, swarm: Swarm) -> None:
        """Store the swarm state after an iteration (one atomic metadata write)."""
        group = self.store.group(f"{self.path}/state", create=True)
        group.attrs.put({"iteration": swarm.iteration, "time": now_iso(),
                         "best": swarm.best, "best_objective": _json_float(swarm.global_f),
                         "swarm": swarm.state_json()})

    def evaluations(self) -> list[dict[str, Any]]:
        """Recorded evaluations in (iteration, particle) order, up to the stored state."""
        if f"{self.path}/evals" not in self.store.root:
            return []
        done = self.completed_iterations()
        group = self.store.group(f"{self.path}/evals")
        out = []
        for key in sorted(group.group_keys()):
            attrs = dict(group[key].attrs)
            if attrs["iteration"] < done:  # a killed iteration's partial records are skipped
                attrs["objective"] = float(attrs["objective"])
                out.append(attrs)
        return out

    def completed_iterations(self) -> int:
        """Iterations whose state is stored."""
        if f"{self.path}/state" not in self.store.root:
            return 0
        return int(self.store.group(f"{self.path}/state").attrs.get("iteration", 0))


def _json_float(value: float) -> float | str:
    return float(value) if math.isfinite(value) else "inf"


# ---- the loop ------------------------------------------------------------------------------
@dataclass
class SwarmResult:
    """Outcome of :func:`run_swarm`."""

    best: dict[str, Any]
    objective: float
    iterations: int
    evaluations: int
    failed: int
    swarm: Swarm

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "objective": _json_float(self.objective),
                "iterations": self.iterations, "evaluations": self.evaluations,
                "failed": self.failed}


def run_swarm(objective: Objective, swarm: Swarm, iterations: int, client=None,
              timeout: float | None = None, record: RunRecord | None = None,
              objective_settings: dict | None = None,
              progress: Callable[[str], None] | None = None) -> SwarmResult:
    """Run ``swarm`` until it has completed ``iterations`` iterations.

    Parameters
    ----------
    objective : callable
        ``objective(params) -> float`` to minimise; picklable when ``client`` is given.
    swarm : Swarm
        A fresh swarm; replaced by the stored state when ``record`` holds one.
    iterations : int
        Total iterations of the run (a resumed run counts those already done).
    client : distributed.Client, optional
        Evaluate the P particles of an iteration as P futures; in-process without.
    timeout : float, optional
        Per-iteration limit in seconds (Dask only), see :func:`evaluate_batch`.
    record : RunRecord, optional
        Where evaluations and states are stored; a stored state is resumed.
    objective_settings : dict, optional
        Stored with the swarm settings; a resumed run must have equal settings.
    progress : callable, optional
        Called with one line per iteration.

    Returns
    -------
    SwarmResult
    """
    if iterations < 1:
        raise InputError(f"hpo: iterations must be >= 1, got {iterations}")
    failed = 0
    if record is not None:
        settings = {"swarm": swarm.settings(), "objective": objective_settings or {}}
        state = record.start(settings)
        if state is not None:
            swarm.load_state_json(state)
            failed = sum(e["status"] != "ok" for e in record.evaluations())
            if progress:
                progress(f"resuming {record.path} after iteration {swarm.iteration}")
    while swarm.iteration < iterations:
        iteration = swarm.iteration
        candidates = swarm.candidates()
        start = time.perf_counter()
        prefix = f"hpo-{record.path if record else 'run'}-{iteration}".replace("/", ".")
        results = evaluate_batch(objective, candidates, client, timeout, key_prefix=prefix)
        if record is not None:
            for particle, (params, result) in enumerate(zip(candidates, results, strict=True)):
                record.record(iteration, particle, params, result)
        scores = [r["objective"] for r in results]
        failed += sum(r["status"] != "ok" for r in results)
        swarm.tell(scores)
        if record is not None:
            record.save_state(swarm)
        if progress:
            n_failed = sum(r["status"] != "ok" for r in results)
            progress(f"iteration {swarm.iteration}/{iterations}: best {swarm.global_f:.6g}, "
                     f"iteration best {np.min(scores):.6g}, failed {n_failed}, "
                     f"{time.perf_counter() - start:.1f} s")
    return SwarmResult(best=swarm.best, objective=float(swarm.global_f),
                       iterations=swarm.iteration, evaluations=swarm.evaluations,
                       failed=failed, swarm=swarm)
