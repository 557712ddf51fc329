"""Training wall time for K = 2500 references per class on the alkane data, 1 and 2 workers.

Reuses the store of ``benchmarks/alkanes.py`` (run it first: it samples and describes the
data). For every worker count a fresh ``LocalCluster`` is started and a model with a fresh
name is fitted on runs 0 and 1 with the sources' protocol (``train_rows = "references"``,
N = K, regular least squares unless ``--robust`` is given). Reported per worker count:

* cluster start-up and shut-down (wall);
* ``fit`` wall time, split into the client-side part (reading rows, min-max scaling,
  RS-maximin) and the Dask part, with the summed task durations per task kind from the
  scheduler's task stream (training blocks = alignments + D matrices, normal equations,
  Huber columns, solves).

The benchmark's models are deleted from the store afterwards unless ``--keep`` is given
(each holds its D matrices, about 0.4 GB for K = 2500 and two classes).
Progress bars go to stderr; stdout gets human-readable lines, then one JSON object.

Usage: ``python benchmarks/training.py [--store PATH] [--workers 1,2] [--robust 1.1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

from distributed import Client

from oamlm_dist.cluster import local_cluster
from oamlm_dist.store import Store
from oamlm_dist.training import FitSettings, fit

TRAIN_FRAMES = "name:*run0,name:*run1"
# Task-key prefixes of the fit stage (see oamlm_dist.training) and what they compute.
TASK_KINDS = {
    "fit": "training blocks (alignment, D_in, D_c, D_g)",
    "block_equations": "normal equations per block",
    "merge_equations": "summing the equations",
    "huber": "Huber columns (robust)",
    "solve": "EMLM/OAMLM solves",
}


def task_kind(key: str) -> str:
    for prefix in TASK_KINDS:
        if key.startswith(prefix):
            return prefix
    return "other"


def run(store_path: Path, workers: int, settings: FitSettings, keep: bool) -> dict:
    name = f"bench-training-w{workers}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    cluster = local_cluster(workers)
    client = Client(cluster)
    # One task each, so workers have imported the package before the timing starts (as they
    # would have in a long-lived cluster).
    client.run(lambda: __import__("oamlm_dist.training"))
    start_s = time.perf_counter() - t0
    try:
        client.get_task_stream()  # start recording
        t0 = time.perf_counter()
        with redirect_stdout(sys.stderr):
            summary = fit(store_path, name, client, settings)
        fit_s = time.perf_counter() - t0
        stream = client.get_task_stream()
    finally:
        t0 = time.perf_counter()
        client.close()
        cluster.close()
        close_s = time.perf_counter() - t0
    busy: dict[str, float] = defaultdict(float)
    first = last = None
    for task in stream:
        for span in task.get("startstops", ()):
            if span["action"] == "compute":
                busy[task_kind(task["key"] if isinstance(task["key"], str)
                               else str(task["key"][0]))] += span["stop"] - span["start"]
                first = span["start"] if first is None else min(first, span["start"])
                last = span["stop"] if last is None else max(last, span["stop"])
    dask_span = (last - first) if first is not None else 0.0
    if not keep:
        store = Store.open(store_path, mode="a")
        for path in (f"models/{name}", f"done/fit/{name}"):
            if path in store.root:
                del store.root[path]
    return {"workers": workers, "model": name, "cluster_start_s": start_s,
            "cluster_close_s": close_s, "fit_wall_s": fit_s,
            "dask_span_s": dask_span, "client_side_s": max(fit_s - dask_span, 0.0),
            "task_compute_s": dict(busy), "task_compute_total_s": sum(busy.values()),
            "classes": summary["classes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/oamlm-bench/alkanes.zarr",
                        help="the store of benchmarks/alkanes.py")
    parser.add_argument("--references", type=int, default=2500)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--robust", type=float, default=None, help="Huber ε (default: none)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's models")
    args = parser.parse_args()
    store_path = Path(os.path.abspath(args.store))
    if not (store_path / "zarr.json").exists():
        sys.exit(f"{store_path}: no store; run benchmarks/alkanes.py first")
    settings = FitSettings(references=args.references, frames=TRAIN_FRAMES,
                           train_rows="references", robust_epsilon=args.robust)
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        r = run(store_path, workers, settings, args.keep)
        results.append(r)
        tasks = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["task_compute_s"].items()))
        print(f"{workers} worker(s): cluster start {r['cluster_start_s']:.1f} s, fit "
              f"{r['fit_wall_s']:.1f} s (client side {r['client_side_s']:.1f} s, Dask span "
              f"{r['dask_span_s']:.1f} s; task compute s: {tasks}), close "
              f"{r['cluster_close_s']:.1f} s, rows {r['classes']}")
    by_workers = {r["workers"]: r for r in results}
    speedup = (by_workers[1]["fit_wall_s"] / by_workers[2]["fit_wall_s"]
               if 1 in by_workers and 2 in by_workers else None)
    if speedup is not None:
        print(f"fit speed-up 2 vs 1 worker: {speedup:.2f}x")
    print(json.dumps({
        "benchmark": "training",
        "settings": {"references": args.references, "train_rows": "references",
                     "robust_epsilon": args.robust, "frames": TRAIN_FRAMES},
        "runs": results,
        "speedup_2_vs_1": speedup,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1min_end": os.getloadavg()[0]},
    }))


if __name__ == "__main__":
    main()
