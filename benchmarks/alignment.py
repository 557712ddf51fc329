"""Alignment throughput on one core: numba kernels against the per-pair numpy SVD loop.

Cases
-----
* alkane carbon: 4 neighbours (H at ~1.09 Å, C at ~1.53 Å around a distorted tetrahedron),
  all 24 permutations, metric ``g`` (eq. 12). Throughput without pruning counts every
  (pair, permutation) alignment (rotation and goodness); the pruned figure is per pair.
* core Au: distorted icosahedral Au12 shells with 8-12 neighbours, 40 % with a leading S,
  three-point scheme with the triangle pre-screen, metric ``g'`` (eq. 13).

The naive peer (``align_naive`` / ``align_core_au_naive``) runs on a subset of the same pairs
and is scaled by count; its results are checked against the kernels. Times are CPU seconds of
this single-threaded process (best of a few repeats), so other load on the machine inflates
wall time but hardly the figures. Prints human-readable lines, then one JSON object.

Usage: ``python benchmarks/alignment.py [--quick]``
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from oamlm_dist.align import (  # noqa: E402
    Z_AU,
    Z_S,
    align_block,
    align_core_au_block,
    align_core_au_naive,
    align_naive,
    all_permutations,
)

_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
_PHI = (1 + 5**0.5) / 2
_ICOSAHEDRON = np.array(
    [[0, a, b * _PHI] for a in (1, -1) for b in (1, -1)]
    + [[a, b * _PHI, 0] for a in (1, -1) for b in (1, -1)]
    + [[b * _PHI, 0, a] for a in (1, -1) for b in (1, -1)]
)
_ICOSAHEDRON *= 2.88 / np.linalg.norm(_ICOSAHEDRON[0])


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q * np.sign(np.linalg.det(q))[:, None, None]


def alkane_carbons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Carbon neighbourhoods of hot alkanes: CH3-C, CH2-C2 or CH4, nearest first."""
    n_carbon = rng.choice([0, 1, 2], p=[0.1, 0.5, 0.4], size=n)
    Z = np.where(np.arange(4) < 4 - n_carbon[:, None], 1, 6)
    length = np.where(Z == 1, 1.09, 1.53) + rng.normal(scale=0.03, size=(n, 4))
    directions = _TETRAHEDRON + rng.normal(scale=0.1, size=(n, 4, 3))  # ~6 degrees
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    P = np.einsum("nkj,nij->nki", directions * length[..., None], random_rotations(rng, n))
    order = np.argsort(length, axis=1)
    return np.take_along_axis(P, order[..., None], axis=1), np.take_along_axis(Z, order, axis=1)


def core_gold(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distorted Au12 shells with 8-12 neighbours, 40 % with an S first, NaN-padded."""
    P = np.einsum("kj,nij->nki", _ICOSAHEDRON, random_rotations(rng, n))
    P += rng.normal(scale=0.12, size=P.shape)
    Z = np.full((n, 12), Z_AU)
    for i in range(n):
        order = np.argsort(np.linalg.norm(P[i], axis=1))
        if rng.random() < 0.4:
            P[i, 0] *= 2.4 / np.linalg.norm(P[i, 0])
            Z[i, 0] = Z_S
            order = np.r_[0, 1 + np.argsort(np.linalg.norm(P[i, 1:], axis=1))]
        P[i], Z[i] = P[i, order], Z[i, order]
        n_valid = rng.integers(8, 13)
        P[i, n_valid:], Z[i, n_valid:] = np.nan, 0
    return P, Z


def cpu_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best CPU time and its wall time over ``repeats`` calls, and the last result."""
    best_cpu, best_wall, out = np.inf, np.inf, None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if cpu < best_cpu:
            best_cpu, best_wall = cpu, wall
    return best_cpu, best_wall, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    repeats = 1 if args.quick else 3
    rng = np.random.default_rng(2024)
    perms = all_permutations(4)
    n_perm = len(perms)

    # Compile (or load from cache) outside the timings.
    P, Z = alkane_carbons(rng, 4)
    align_block(P, Z, P, Z, perms)
    align_block(P, None, P, None, perms, prune=False)
    P, Z = core_gold(rng, 4)
    align_core_au_block(P, Z, P, Z)

    # --- alkane carbons -------------------------------------------------------------------
    n_q, n_ref = int(400 * scale), 500
    QP, QZ = alkane_carbons(rng, n_q)
    SP, SZ = alkane_carbons(rng, n_ref)
    n_pairs = n_q * n_ref
    cpu_full, wall_full, (_, g_full, p_full) = cpu_seconds(
        lambda: align_block(QP, None, SP, None, perms, metric="g", prune=False), repeats
    )
    cpu_pruned, _, (_, g_pruned, p_pruned) = cpu_seconds(
        lambda: align_block(QP, None, SP, None, perms, metric="g", prune=True), repeats
    )
    cpu_elem, _, _ = cpu_seconds(
        lambda: align_block(QP, QZ, SP, SZ, perms, metric="g", prune=True), repeats
    )
    assert np.array_equal(p_full, p_pruned) and np.array_equal(g_full, g_pruned)

    n_naive_q, n_naive_ref = max(2, int(16 * scale)), 25
    c0 = time.process_time()
    naive = [align_naive(QP[i], None, SP[:n_naive_ref], None, perms, metric="g")
             for i in range(n_naive_q)]  # fmt: skip
    cpu_naive = time.process_time() - c0
    n_naive_pairs = n_naive_q * n_naive_ref
    g_naive = np.array([r[1] for r in naive])
    p_naive = np.array([r[2] for r in naive])
    dg = float(np.abs(g_naive - g_full[:n_naive_q, :n_naive_ref]).max())
    perm_agree = float((p_naive == p_full[:n_naive_q, :n_naive_ref]).mean())

    align_rate = n_pairs * n_perm / cpu_full
    naive_rate = n_naive_pairs * n_perm / cpu_naive
    print(f"alkane C, M=4, {n_perm} permutations, {n_pairs} pairs ({n_q} x {n_ref})")
    print(
        f"  numba, all permutations : {align_rate:.3e} alignments/s/core, "
        f"{n_pairs / cpu_full:.3e} pairs/s/core (wall/cpu {wall_full / cpu_full:.2f})"
    )
    print(
        f"  numba, pruned           : {n_pairs / cpu_pruned:.3e} pairs/s/core "
        f"(x{cpu_full / cpu_pruned:.1f} vs all permutations)"
    )
    print(f"  numba, pruned + elements: {n_pairs / cpu_elem:.3e} pairs/s/core")
    print(
        f"  naive numpy SVD loop    : {naive_rate:.3e} alignments/s/core "
        f"({n_naive_pairs} pairs); speed-up x{align_rate / naive_rate:.0f}"
    )
    print(f"  agreement with naive    : max |dg| {dg:.1e}, same permutation {perm_agree:.3f}")

    # --- core gold ------------------------------------------------------------------------
    n_q_au, n_ref_au = int(200 * scale), 300
    AQ, AQZ = core_gold(rng, n_q_au)
    AS, ASZ = core_gold(rng, n_ref_au)
    n_au_pairs = n_q_au * n_ref_au
    cpu_au, _, (_, g_au, c_au) = cpu_seconds(
        lambda: align_core_au_block(AQ, AQZ, AS, ASZ, metric="g_prime"), repeats
    )
    n_naive_au_q, n_naive_au_ref = max(2, int(6 * scale)), 30
    c0 = time.process_time()
    naive_au = [align_core_au_naive(AQ[i], AQZ[i], AS[:n_naive_au_ref], ASZ[:n_naive_au_ref])
                for i in range(n_naive_au_q)]  # fmt: skip
    cpu_naive_au = time.process_time() - c0
    n_naive_au_pairs = n_naive_au_q * n_naive_au_ref
    g_naive_au = np.array([r[1] for r in naive_au])
    dg_au = float(np.abs(g_naive_au - g_au[:n_naive_au_q, :n_naive_au_ref]).max())
    au_rate = n_au_pairs / cpu_au
    au_naive_rate = n_naive_au_pairs / cpu_naive_au
    print(f"core Au, M=12 (8-12 valid, 40 % with S), n_best=10, {n_au_pairs} pairs")
    print(f"  numba                   : {au_rate:.3e} pairs/s/core")
    print(
        f"  naive numpy loop        : {au_naive_rate:.3e} pairs/s/core "
        f"({n_naive_au_pairs} pairs); speed-up x{au_rate / au_naive_rate:.0f}"
    )
    print(f"  agreement with naive    : max |dg'| {dg_au:.1e}")

    result = {
        "benchmark": "alignment",
        "timer": "process_time (CPU s, single thread), best of repeats",
        "threads": 1,
        "M": 4,
        "n_perm": n_perm,
        "n_pairs": n_pairs,
        "alignments_per_s_per_core": align_rate,
        "pairs_per_s_per_core": n_pairs / cpu_full,
        "pairs_per_s_per_core_pruned": n_pairs / cpu_pruned,
        "pairs_per_s_per_core_pruned_elements": n_pairs / cpu_elem,
        "pruning_speedup": cpu_full / cpu_pruned,
        "naive_alignments_per_s_per_core": naive_rate,
        "naive_n_pairs": n_naive_pairs,
        "speedup_vs_naive": align_rate / naive_rate,
        "speedup_vs_naive_pruned": (n_pairs / cpu_pruned) / (naive_rate / n_perm),
        "max_abs_g_diff_vs_naive": dg,
        "perm_agreement_vs_naive": perm_agree,
        "wall_over_cpu": wall_full / cpu_full,
        "core_au_n_pairs": n_au_pairs,
        "core_au_pairs_per_s_per_core": au_rate,
        "core_au_naive_pairs_per_s_per_core": au_naive_rate,
        "core_au_naive_n_pairs": n_naive_au_pairs,
        "core_au_speedup_vs_naive": au_rate / au_naive_rate,
        "core_au_max_abs_g_diff_vs_naive": dg_au,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
