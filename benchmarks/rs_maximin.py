"""RS-maximin on 200 000 x 2000 random float32 rows -> 5000 references, on one core.

Measures wall time and memory of :func:`oamlm_dist.sampling.rs_maximin` on the full case,
and, in the same run on a subset (default 20 000 rows, 200 picks, same start), two peers:

* ``naive``: scipy ``cdist`` from each new pick to every row (the textbook traversal);
* ``gemv``: one BLAS matrix-vector product per pick with precomputed row norms, updating
  every row for every pick (no lazy blocks).

The naive time on the full case is extrapolated linearly in rows x picks from the subset
and labelled as such. The last printed line is one JSON object.

Usage: ``python benchmarks/rs_maximin.py [--rows N --features D --k K ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import tracemalloc

# One core: pin the BLAS thread pools before numpy loads them.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np
from machine import cpu_model  # benchmarks/machine.py, next to this script
from scipy.spatial.distance import cdist

from oamlm_dist.sampling import rs_maximin

MIB = 2**20


def naive_cdist(X: np.ndarray, start: int, k: int) -> np.ndarray:
    """Farthest-first traversal with one scipy cdist call per pick."""
    picks = [start]
    min_dist = cdist(X, X[[start]])[:, 0]
    for _ in range(k - 1):
        picks.append(int(np.argmax(min_dist)))
        np.minimum(min_dist, cdist(X, X[[picks[-1]]])[:, 0], out=min_dist)
    return np.array(picks)


def gemv_per_pick(X: np.ndarray, start: int, k: int) -> np.ndarray:
    """Farthest-first traversal with one matrix-vector product per pick, all rows each time."""
    sq_norms = np.einsum("ij,ij->i", X, X)
    picks = [start]
    min_d2 = np.full(len(X), np.inf, dtype=X.dtype)
    for _ in range(k):
        q = X[picks[-1]]
        np.minimum(min_d2, sq_norms - 2 * (X @ q) + q @ q, out=min_d2)
        if len(picks) == k:
            break
        picks.append(int(np.argmax(min_d2)))
    return np.array(picks)


def timed(func, *args, **kwargs):
    """Result, wall seconds and CPU seconds of the process (CPU time shows contention)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--block-rows", type=int, default=1024)
    parser.add_argument("--subset-rows", type=int, default=20_000)
    parser.add_argument("--subset-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    X = np.random.default_rng(args.seed).random((args.rows, args.features), dtype=np.float32)
    rss_input = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB

    # tracemalloc sees numpy's buffers: its peak is what the call itself allocates.
    tracemalloc.start()
    picks, wall, cpu = timed(rs_maximin, X, args.k, seed=args.seed, block_rows=args.block_rows)
    call_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"full: {len(picks)} references in {wall:.1f} s", flush=True)

    sub = X[: args.subset_rows]
    ours, t_ours, c_ours = timed(
        rs_maximin, sub, args.subset_k, seed=args.seed, block_rows=args.block_rows
    )
    start = int(ours[0])
    gemv, t_gemv, c_gemv = timed(gemv_per_pick, sub, start, args.subset_k)
    sub64 = sub.astype(np.float64)  # cdist computes in float64 anyway; converted once
    naive, t_naive, c_naive = timed(naive_cdist, sub64, start, args.subset_k)
    print(f"subset: ours {t_ours:.2f} s, gemv {t_gemv:.2f} s, naive {t_naive:.2f} s", flush=True)

    scale = (args.rows / args.subset_rows) * (args.k / args.subset_k)
    naive_full = t_naive * scale
    result = {
        "benchmark": "rs_maximin",
        "rows": args.rows,
        "features": args.features,
        "k": args.k,
        "dtype": "float32",
        "block_rows": args.block_rows,
        "threads": 1,
        "references": int(len(picks)),
        "unique_references": int(np.unique(picks).size),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "per_pick_ms": round(1e3 * wall / len(picks), 3),
        "input_mib": round(X.nbytes / MIB, 1),
        "call_peak_traced_mib": round(call_peak / MIB, 1),
        "peak_rss_mib": round(rss_peak, 1),
        "rss_after_input_mib": round(rss_input, 1),
        "peer_subset": {
            "rows": args.subset_rows,
            "k": args.subset_k,
            "rs_maximin_s": round(t_ours, 3),
            "gemv_per_pick_s": round(t_gemv, 3),
            "naive_cdist_s": round(t_naive, 3),
            "cpu_s": {
                "rs_maximin": round(c_ours, 3),
                "gemv_per_pick": round(c_gemv, 3),
                "naive_cdist": round(c_naive, 3),
            },
            "naive_over_rs_maximin": round(t_naive / t_ours, 1),
            "gemv_over_rs_maximin": round(t_gemv / t_ours, 2),
            "same_picks_as_naive": bool(np.array_equal(ours, naive)),
            "same_picks_as_gemv": bool(np.array_equal(ours, gemv)),
        },
        "naive_cdist_full_s_extrapolated_from_subset": round(naive_full, 1),
        "speedup_vs_naive_extrapolated": round(naive_full / wall, 1),
        "load_avg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "cpu": cpu_model(),
        "n_cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
