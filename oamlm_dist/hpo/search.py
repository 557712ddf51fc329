"""Strategies 1 and 2 of seed 004 over a store, and the report of a recorded run.

* Strategy 1: one swarm over all parameters, scored by :class:`ForceObjective`.
* Strategy 2: stage 1 searches the SOAP parameters (and ζ) with :class:`KernelObjective`
  (no model is trained); stage 2 searches the model parameters with the stage-1 SOAP fixed,
  scored by :class:`ForceObjective`. ζ only shapes the stage-1 kernel and is not passed on.

Runs live under ``hpo/<run>`` (strategy 2: ``hpo/<run>/stage1`` and ``hpo/<run>/stage2``);
rerunning the same command resumes a killed run from its last completed iteration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oamlm_dist.errors import InputError, StoreError
from oamlm_dist.hpo.objective import (
    KERNEL_PARAMETERS,
    MODEL_PARAMETERS,
    ForceObjective,
    KernelObjective,
    Split,
)
from oamlm_dist.hpo.run import RunRecord, run_swarm
from oamlm_dist.hpo.space import SearchSpace
from oamlm_dist.hpo.swarm import Swarm
from oamlm_dist.locks import writer_lock
from oamlm_dist.store import Store, now_iso, settings_key


def run_hpo(store_path: str | os.PathLike, space: SearchSpace, particles: int = 16,
            iterations: int = 30, strategy: int = 1, run: str | None = None,
            split: Split | None = None, client=None, timeout: float | None = None,
            seed: int = 0, scheme: str | None = None, norm_weight: float = 90.0,
            skew_weight: float = 0.05, zeta: float = 2.0, inertia: float = 0.0,
            restart: float = 0.0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search hyper-parameters of the force models on a store's frames.

    Parameters
    ----------
    store_path : path
        The store (frames are read from it; the run is recorded in it).
    space : SearchSpace
        Searched parameters (names in ``KERNEL_PARAMETERS`` and ``MODEL_PARAMETERS``).
    particles, iterations : int
        Swarm size and iterations (per stage for strategy 2).
    strategy : {1, 2}
        All parameters at once, or SOAP from the kernel distribution first.
    run : str, optional
        Run name; default a hash of the settings, so an identical command resumes.
    split : Split, optional
        Training and validation frames (default: 20 % of the frames validate).
    client : distributed.Client, optional
        Evaluate particles as Dask futures (in-process without).
    timeout : float, optional
        Per-iteration time limit (s); unfinished evaluations are failed and re-drawn.
    seed : int
        Seed of the swarm(s), the random split and the reference selection.
    scheme, norm_weight, skew_weight, zeta
        Objective settings (see :mod:`oamlm_dist.hpo.objective`).
    inertia : float
        Swarm inertia (0: the seed's update).
    restart : float
        Re-draw a swarm collapsed within this fraction of every range (0: never).
    progress : callable, optional
        Receives one line per iteration.

    Returns
    -------
    dict
        ``run``, ``strategy``, ``best`` (all parameters), ``objective``, ``evaluations``,
        ``failed`` and, for strategy 2, ``stage1`` (best SOAP and its kernel score).
    """
    if strategy not in (1, 2):
        raise InputError(f"hpo: strategy must be 1 or 2, got {strategy}")
    unknown = sorted((set(space.names) | set(space.fixed))
                     - set(KERNEL_PARAMETERS) - set(MODEL_PARAMETERS))
    if unknown:
        raise InputError(f"hpo: unknown parameter(s) {unknown} in the search space; known: "
                         f"{[*KERNEL_PARAMETERS, *MODEL_PARAMETERS]}")
    store = Store.open(store_path, mode="a")
    path = str(store.path)
    split = split or Split(seed=seed)
    common = {"store_path": path, "split": split, "scheme": scheme}
    settings = {"space": space.to_dict(), "particles": particles, "strategy": strategy,
                "split": split.to_dict(), "seed": seed, "scheme": scheme,
                "norm_weight": norm_weight, "inertia": inertia, "restart": restart}
    if strategy == 2:
        settings.update({"skew_weight": skew_weight, "zeta": zeta})
    run = run or f"run-{settings_key(settings)}"
    _check_name(run)
    # One swarm per run name at a time: two would interleave their iteration records.
    with writer_lock(store.path, f"hpo-{run}"):
        say = progress or (lambda line: None)
        force = ForceObjective(**common, norm_weight=norm_weight, seed=seed)

        def stage(objective, sub: SearchSpace, where: str, label: str):
            if sub.dim == 0:  # nothing to search: score the fixed values once
                value = objective(dict(sub.fixed))
                return {"best": dict(sub.fixed), "objective": value, "evaluations": 1, "failed": 0}
            swarm = Swarm(sub, particles, seed=seed, inertia=inertia, restart=restart)
            result = run_swarm(objective, swarm, iterations, client=client, timeout=timeout,
                               record=RunRecord(store, where),
                               objective_settings={"kind": type(objective).__name__,
                                                   **objective.settings()},
                               progress=lambda line: say(f"{label}{line}"))
            return result.to_dict()

        if strategy == 1:
            result = stage(force, space, f"hpo/{run}", "")
            store.group(f"hpo/{run}").update_attributes({"strategy": 1, "settings_all": settings})
            return {"run": run, "strategy": 1, **result}
        soap_names = set(KERNEL_PARAMETERS)
        kernel = KernelObjective(**common, zeta=zeta, skew_weight=skew_weight, seed=seed)
        group = store.group(f"hpo/{run}", create=True)
        group.update_attributes({"strategy": 2, "settings_all": settings,
                            "created": group.attrs.get("created", now_iso())})
        first = stage(kernel, space.subspace(soap_names), f"hpo/{run}/stage1", "stage 1: ")
        if not math.isfinite(float(first["objective"])):
            raise InputError(f"hpo/{run}: every stage-1 evaluation failed; see `hpo --report`")
        soap = {k: v for k, v in first["best"].items() if k != "zeta"}
        model_names = (set(space.names) | set(space.fixed)) - soap_names
        second = stage(force, space.subspace(model_names, fixed=soap), f"hpo/{run}/stage2",
                       "stage 2: ")
        return {"run": run, "strategy": 2, "best": second["best"],
                "objective": second["objective"],
                "evaluations": first["evaluations"] + second["evaluations"],
                "failed": first["failed"] + second["failed"],
                "stage1": {"best": first["best"], "objective": first["objective"]}}


def _check_name(run: str) -> None:
    if not run or "/" in run or run.startswith("."):
        raise InputError(f"hpo: invalid run name {run!r} (no '/', not empty)")


# ---- report ------------------------------------------------------------------------------
def list_runs(store: Store) -> list[str]:
    """Run names, oldest first."""
    if "hpo" not in store.root:
        return []
    group = store.group("hpo")
    names = list(group.group_keys())
    return sorted(names, key=lambda n: (str(group[n].attrs.get("created", "")), n))


def _records(store: Store, run: str) -> list[tuple[str, RunRecord]]:
    if f"hpo/{run}" not in store.root:
        raise StoreError(f"{store.path}: no hpo run {run!r} (have {list_runs(store)})")
    stages = [f"hpo/{run}/stage{k}" for k in (1, 2) if f"hpo/{run}/stage{k}" in store.root]
    paths = stages or [f"hpo/{run}"]
    return [(p.rsplit("/", 1)[-1] if stages else "swarm", RunRecord(store, p)) for p in paths]


def hpo_report(store_path: str | os.PathLike, run: str | None = None,
               plot: str | os.PathLike | None = None) -> dict[str, Any]:
    """Summary of a recorded run and a convergence plot (best objective vs evaluations).

    Parameters
    ----------
    store_path : path
        The store.
    run : str, optional
        The run (default: the newest).
    plot : path, optional
        PNG to write (default ``hpo-<run>.png`` in the current directory).

    Returns
    -------
    dict
        ``run``, ``plot`` and per stage: ``evaluations``, ``failed`` (by status),
        ``iterations``, ``best``, ``objective``, ``mean_wall_s``, ``workers``.
    """
    store = Store.open(store_path)
    if run is None:
        runs = list_runs(store)
        if not runs:
            raise StoreError(f"{store.path}: no hpo runs recorded")
        run = runs[-1]
    out: dict[str, Any] = {"run": run, "stages": {}}
    curves = {}
    for label, record in _records(store, run):
        evals = record.evaluations()
        values = np.array([e["objective"] for e in evals], dtype=float)
        statuses: dict[str, int] = {}
        for e in evals:
            if e["status"] != "ok":
                statuses[e["status"]] = statuses.get(e["status"], 0) + 1
        finite = np.isfinite(values)
        best = int(np.argmin(np.where(finite, values, np.inf))) if finite.any() else None
        out["stages"][label] = {
            "evaluations": len(evals), "failed": statuses,
            "iterations": record.completed_iterations(),
            "best": evals[best]["params"] if best is not None else None,
            "objective": float(values[best]) if best is not None else None,
            "mean_wall_s": float(np.mean([e["wall_s"] for e in evals])) if evals else 0.0,
            "workers": sorted({e["worker"] for e in evals if e["worker"]}),
        }
        curves[label] = np.minimum.accumulate(np.where(finite, values, np.inf))
    out["plot"] = str(Path(plot or f"hpo-{run}.png").resolve())
    _plot(curves, out["plot"], run)
    return out


def _plot(curves: dict[str, np.ndarray], path: str, run: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (label, curve) in zip(axes[0], curves.items(), strict=True):
        shown = np.isfinite(curve)
        ax.plot(np.arange(1, len(curve) + 1)[shown], curve[shown], drawstyle="steps-post")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best objective")
        ax.set_title(f"{run} ({label})" if len(curves) > 1 else run)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
