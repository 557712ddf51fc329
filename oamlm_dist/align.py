"""Batched alignment of atomic neighbourhoods (OAMLM, seed 000 eq. 11-13 and sec. II C).

Array conventions
-----------------
* A neighbourhood is an ``(M, 3)`` float array of neighbour positions relative to the centre
  atom (the centre is the origin and is not stored), with a companion ``(M,)`` int array ``Z``
  of atomic numbers. Padding rows sit at the end: NaN coordinates and ``Z == 0``. A row is
  *valid* when its coordinates are finite and, if ``Z`` is given, ``Z != 0``.
* A rotation ``R`` (3x3, det +1) maps a *reference* neighbourhood ``s`` onto the *query* ``p``:
  it minimises ``sum_k |p_k - R s_perm[k]|^2`` where ``perm`` is a row of a permutation table
  ``(n_perm, M)``: reference row ``perm[k]`` is matched with query row ``k``. This is the
  Arun/Kabsch rotation ``R = V diag(1, 1, d) U^T`` of ``H = sum_k s_perm[k] p_k^T = U S V^T``,
  ``d = sign(det(V U^T))``, i.e. the best *proper* rotation.
* Goodness of a matched permutation with ``n`` valid pairs and residuals
  ``r_k = p_k - R s_perm[k]`` (the centre is a zero residual counted in ``1 + n``):
  ``metric="g"`` (eq. 12) ``g = sum_k |r_k| / (1 + n)``,
  ``metric="g_prime"`` (eq. 13) ``g' = sqrt(sum_k |r_k|^2) / (1 + n)``.
  ``R`` is always the least-squares rotation, also for ``g``.

Choice of the permutation (:func:`align_block`, :func:`align_many`, :func:`align_naive`)
--------------------------------------------------------------------------------------------
1. Only pairs of rows valid in both neighbourhoods take part. A permutation that matches two
   valid rows of different elements (both ``Z`` given) is skipped, as is one excluded by
   ``perm_mask``.
2. Only the permutations with the largest number ``n`` of matched pairs compete: otherwise a
   permutation could win by leaving a badly fitting atom unmatched.
3. The smallest ``g`` wins; exact ties go to the lower permutation index.
4. If no permutation matches at least one valid pair, the result is ``R = I``,
   ``g = +inf`` and ``perm = NO_MATCH`` (-1). Degenerate sets (one point, collinear points)
   give a finite ``g`` and one of the optimal proper rotations; ``g`` is never NaN.

:func:`blend_block` applies rules 1, 2 and 4 but, instead of rule 3, averages the rotations of
the competing permutations weighted by their fit, so its result is continuous where
permutations tie.

Rotations are computed with Horn's quaternion method: the largest eigenvalue ``lam`` of the
4x4 key matrix by Halley's method on its characteristic polynomial, started above the root
(as in Theobald's QCP), the eigenvector from a column of the adjugate of ``N - lam I``, and a
Jacobi eigensolver when the eigenvalue is (nearly) degenerate. This is Kabsch/Arun with the
determinant correction, without a general SVD; results agree with ``numpy.linalg.svd`` to
rounding error.

With ``prune=True`` two exact lower bounds of ``g`` skip permutations that cannot win:
rotations preserve lengths, so ``|r_k| >= ||p_k| - |s_perm[k]||`` (radial bound, no rotation
needed), and ``sum_k |r_k| >= sqrt(sum_k |r_k|^2) >= sqrt(E_min)`` with ``E_min`` the
least-squares residual given by ``lam`` (no rotation needed). Permutations are visited in order
of the radial bound; the result is that of the exhaustive search (barring ties within
rounding).

The kernels are serial (``parallel=False``): parallelism comes from Dask tasks over blocks.
"""

from __future__ import annotations

import itertools

import numpy as np
from numba import njit

__all__ = [
    "NO_MATCH",
    "Z_AU",
    "Z_S",
    "align_block",
    "align_core_au",
    "align_core_au_block",
    "align_core_au_naive",
    "align_many",
    "align_naive",
    "all_permutations",
    "blend_block",
    "triangle_prescreen",
]

#: Permutation index (or core-Au choice) reported when nothing could be matched.
NO_MATCH = -1
#: Atomic numbers used by the core-gold scheme.
Z_S = 16
Z_AU = 79

_METRICS = {"g": 0, "g_prime": 1}
# Relative gap of Horn's matrix below which the adjugate eigenvector loses accuracy.
_ADJ_MIN_GAP = 1e-2
# Relative slack on the least-squares bound: covers rounding in lam.
_BOUND_SLACK = 1e-8
# Blend widths beyond the best fit at which a permutation's weight is negligible (< 1e-13).
_BLEND_REACH = 30.0


def all_permutations(m: int) -> np.ndarray:
    """All ``m!`` permutations of ``range(m)`` as an ``(m!, m)`` int64 table, identity first."""
    return np.array(list(itertools.permutations(range(m))), dtype=np.int64).reshape(-1, m)


# --------------------------------------------------------------------------------------------
# 3x3 alignment primitives (numba)
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _horn(h, n):
    """Fill ``n`` (4, 4) with Horn's key matrix of ``h = sum s p^T`` (maps s onto p)."""
    sxx, sxy, sxz = h[0, 0], h[0, 1], h[0, 2]
    syx, syy, syz = h[1, 0], h[1, 1], h[1, 2]
    szx, szy, szz = h[2, 0], h[2, 1], h[2, 2]
    n[0, 0] = sxx + syy + szz
    n[0, 1] = n[1, 0] = syz - szy
    n[0, 2] = n[2, 0] = szx - sxz
    n[0, 3] = n[3, 0] = sxy - syx
    n[1, 1] = sxx - syy - szz
    n[1, 2] = n[2, 1] = sxy + syx
    n[1, 3] = n[3, 1] = szx + sxz
    n[2, 2] = -sxx + syy - szz
    n[2, 3] = n[3, 2] = syz + szy
    n[3, 3] = -sxx - syy + szz


@njit(cache=True)
def _det4_sym(a):
    """Determinant of a symmetric 4x4 matrix by 2x2 minors of rows (0, 1) and (2, 3)."""
    s0 = a[0, 0] * a[1, 1] - a[0, 1] * a[0, 1]
    s1 = a[0, 0] * a[1, 2] - a[0, 2] * a[0, 1]
    s2 = a[0, 0] * a[1, 3] - a[0, 3] * a[0, 1]
    s3 = a[0, 1] * a[1, 2] - a[0, 2] * a[1, 1]
    s4 = a[0, 1] * a[1, 3] - a[0, 3] * a[1, 1]
    s5 = a[0, 2] * a[1, 3] - a[0, 3] * a[1, 2]
    c5 = a[2, 2] * a[3, 3] - a[2, 3] * a[2, 3]
    c4 = a[1, 2] * a[3, 3] - a[2, 3] * a[1, 3]
    c3 = a[1, 2] * a[2, 3] - a[2, 2] * a[1, 3]
    c2 = a[0, 2] * a[3, 3] - a[2, 3] * a[0, 3]
    c1 = a[0, 2] * a[2, 3] - a[2, 2] * a[0, 3]
    c0 = a[0, 2] * a[1, 3] - a[1, 2] * a[0, 3]
    return s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0


@njit(cache=True)
def _poly(c2, c1, c0, x):
    """``P(x) = x^4 + c2 x^2 + c1 x + c0`` and its first derivative."""
    x2 = x * x
    return ((x2 + c2) * x + c1) * x + c0, (4.0 * x2 + 2.0 * c2) * x + c1


@njit(cache=True)
def _max_eigenvalue(h, n, e0, lam_cut):
    """Largest eigenvalue ``lam`` of Horn's matrix ``n`` of ``h``, and ``dP/dlam`` there.

    ``n`` is traceless, so ``P(x) = det(n - x I) = x^4 + c2 x^2 + c1 x + c0`` with real roots.
    Halley's method started above the largest root descends monotonically onto it with cubic
    convergence (Laguerre's inequality keeps its denominator positive there), so every iterate
    is an upper bound: as soon as one falls below ``lam_cut`` the search stops and that
    iterate is returned. ``dP/dlam = 0`` is returned at a (near-)multiple root, where ``P``
    is rounding noise; the caller then uses the Jacobi solver. ``e0 = (|p|^2 + |s|^2) / 2``.
    """
    hh = 0.0
    for a in range(3):
        for b in range(3):
            hh += h[a, b] * h[a, b]
    # Cofactors of h give det(h) and I2 = sum_{i<j} s_i^2 s_j^2 (s: singular values of h).
    k00 = h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1]
    k01 = h[1, 2] * h[2, 0] - h[1, 0] * h[2, 2]
    k02 = h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]
    k10 = h[0, 2] * h[2, 1] - h[0, 1] * h[2, 2]
    k11 = h[0, 0] * h[2, 2] - h[0, 2] * h[2, 0]
    k12 = h[0, 1] * h[2, 0] - h[0, 0] * h[2, 1]
    k20 = h[0, 1] * h[1, 2] - h[0, 2] * h[1, 1]
    k21 = h[0, 2] * h[1, 0] - h[0, 0] * h[1, 2]
    k22 = h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]
    i2 = (
        k00 * k00
        + k01 * k01
        + k02 * k02
        + k10 * k10
        + k11 * k11
        + k12 * k12
        + k20 * k20
        + k21 * k21
        + k22 * k22
    )
    c2 = -2.0 * hh
    c1 = -8.0 * (h[0, 0] * k00 + h[0, 1] * k01 + h[0, 2] * k02)
    c0 = _det4_sym(n)
    # Upper bounds of lam = s1 + s2 + d s3: (sum s)^2 <= sum s^2 + 2 sqrt(3 I2), and e0.
    # The Rayleigh quotients n[i, i] and 0 (n is traceless) are lower bounds.
    lam = min(e0, np.sqrt(hh + 2.0 * np.sqrt(3.0 * i2)))
    low = max(0.0, n[0, 0], n[1, 1], n[2, 2], n[3, 3])
    tol = 1e-8 * lam
    p, dp = _poly(c2, c1, c0, lam)
    for _ in range(100):
        if p <= 0.0 or dp <= 0.0 or lam < lam_cut:
            break
        step = p * dp / (dp * dp - 0.5 * p * (12.0 * lam * lam + 2.0 * c2))
        cand = lam - step
        if not cand >= low:
            return lam, 0.0
        # After a step of 1e-6 the cubic convergence leaves an error far below rounding.
        if step <= tol:
            return cand, dp
        pc, dpc = _poly(c2, c1, c0, cand)
        if dpc <= 0.0:
            return lam, 0.0
        if pc <= 0.0:
            # Past the root: by rounding when converged, else p and dp were rounding noise.
            return (cand, dpc) if -pc <= tol * dpc else (lam, 0.0)
        lam, p, dp = cand, pc, dpc
    return lam, max(dp, 0.0)


@njit(cache=True)
def _quat_to_rot(w, x, y, z, r):
    """Rotation matrix of a unit quaternion ``(w, x, y, z)`` into ``r``."""
    r[0, 0] = w * w + x * x - y * y - z * z
    r[0, 1] = 2.0 * (x * y - w * z)
    r[0, 2] = 2.0 * (x * z + w * y)
    r[1, 0] = 2.0 * (x * y + w * z)
    r[1, 1] = w * w - x * x + y * y - z * z
    r[1, 2] = 2.0 * (y * z - w * x)
    r[2, 0] = 2.0 * (x * z - w * y)
    r[2, 1] = 2.0 * (y * z + w * x)
    r[2, 2] = w * w - x * x - y * y + z * z


@njit(cache=True)
def _jacobi_top_vector(n, r):
    """Rotation from the top eigenvector of symmetric ``n`` by cyclic Jacobi (overwrites n).

    Robust for repeated eigenvalues (one point, collinear points): any unit vector of the top
    eigenspace is a valid quaternion, so the rotation is proper and optimal. Returns the top
    eigenvalue.
    """
    v = np.eye(4)
    total = 0.0
    for i in range(4):
        for j in range(4):
            total += n[i, j] * n[i, j]
    for _ in range(50):
        off = 0.0
        for i in range(3):
            for j in range(i + 1, 4):
                off += n[i, j] * n[i, j]
        if off <= 1e-32 * total:
            break
        for p in range(3):
            for q in range(p + 1, 4):
                apq = n[p, q]
                if apq == 0.0:
                    continue
                theta = (n[q, q] - n[p, p]) / (2.0 * apq)
                t = 1.0 / (abs(theta) + np.sqrt(theta * theta + 1.0))
                if theta < 0.0:
                    t = -t
                c = 1.0 / np.sqrt(t * t + 1.0)
                s = t * c
                for k in range(4):
                    akp = n[k, p]
                    akq = n[k, q]
                    n[k, p] = c * akp - s * akq
                    n[k, q] = s * akp + c * akq
                for k in range(4):
                    apk = n[p, k]
                    aqk = n[q, k]
                    n[p, k] = c * apk - s * aqk
                    n[q, k] = s * apk + c * aqk
                n[p, q] = n[q, p] = 0.0  # annihilated in exact arithmetic
                for k in range(4):
                    vkp = v[k, p]
                    vkq = v[k, q]
                    v[k, p] = c * vkp - s * vkq
                    v[k, q] = s * vkp + c * vkq
    best = 0
    for i in range(1, 4):
        if n[i, i] > n[best, best]:
            best = i
    w, x, y, z = v[0, best], v[1, best], v[2, best], v[3, best]
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    _quat_to_rot(w / norm, x / norm, y / norm, z / norm, r)
    return n[best, best]


@njit(cache=True)
def _rotation(n, lam, dp, r):
    """Least-squares proper rotation into ``r`` from Horn's matrix ``n`` (overwritten).

    ``lam`` and ``dp`` come from :func:`_max_eigenvalue`. Returns the top eigenvalue.
    """
    for i in range(4):
        n[i, i] -= lam
    # adj(n - lam I) = |P'(lam)| q q^T: pick its column with the largest |q_i|.
    if lam > 0.0 and dp > _ADJ_MIN_GAP * lam * lam * lam:
        m01 = n[2, 0] * n[3, 1] - n[2, 1] * n[3, 0]
        m02 = n[2, 0] * n[3, 2] - n[2, 2] * n[3, 0]
        m03 = n[2, 0] * n[3, 3] - n[2, 3] * n[3, 0]
        m12 = n[2, 1] * n[3, 2] - n[2, 2] * n[3, 1]
        m13 = n[2, 1] * n[3, 3] - n[2, 3] * n[3, 1]
        m23 = n[2, 2] * n[3, 3] - n[2, 3] * n[3, 2]
        u01 = n[0, 0] * n[1, 1] - n[0, 1] * n[1, 0]
        u02 = n[0, 0] * n[1, 2] - n[0, 2] * n[1, 0]
        u03 = n[0, 0] * n[1, 3] - n[0, 3] * n[1, 0]
        u12 = n[0, 1] * n[1, 2] - n[0, 2] * n[1, 1]
        u13 = n[0, 1] * n[1, 3] - n[0, 3] * n[1, 1]
        u23 = n[0, 2] * n[1, 3] - n[0, 3] * n[1, 2]
        d0 = abs(n[1, 1] * m23 - n[1, 2] * m13 + n[1, 3] * m12)
        d1 = abs(n[0, 0] * m23 - n[0, 2] * m03 + n[0, 3] * m02)
        d2 = abs(n[3, 0] * u13 - n[3, 1] * u03 + n[3, 3] * u01)
        d3 = abs(n[2, 0] * u12 - n[2, 1] * u02 + n[2, 2] * u01)
        # The generalised cross product of three rows of n - lam I is orthogonal to them.
        if d0 >= d1 and d0 >= d2 and d0 >= d3:
            x0, x1, x2, x3 = n[1, 0], n[1, 1], n[1, 2], n[1, 3]
            a01, a02, a03, a12, a13, a23 = m01, m02, m03, m12, m13, m23
        elif d1 >= d2 and d1 >= d3:
            x0, x1, x2, x3 = n[0, 0], n[0, 1], n[0, 2], n[0, 3]
            a01, a02, a03, a12, a13, a23 = m01, m02, m03, m12, m13, m23
        elif d2 >= d3:
            x0, x1, x2, x3 = n[3, 0], n[3, 1], n[3, 2], n[3, 3]
            a01, a02, a03, a12, a13, a23 = u01, u02, u03, u12, u13, u23
        else:
            x0, x1, x2, x3 = n[2, 0], n[2, 1], n[2, 2], n[2, 3]
            a01, a02, a03, a12, a13, a23 = u01, u02, u03, u12, u13, u23
        w = x1 * a23 - x2 * a13 + x3 * a12
        x = -(x0 * a23 - x2 * a03 + x3 * a02)
        y = x0 * a13 - x1 * a03 + x3 * a01
        z = -(x0 * a12 - x1 * a02 + x2 * a01)
        norm = np.sqrt(w * w + x * x + y * y + z * z)
        if norm > 0.0:
            _quat_to_rot(w / norm, x / norm, y / norm, z / norm, r)
            return lam
    for i in range(4):
        n[i, i] += lam
    return _jacobi_top_vector(n, r)


@njit(cache=True)
def _kabsch(h, n, e0, r):
    """Least-squares proper rotation of ``h = sum s p^T`` into ``r``; returns Horn's lam."""
    _horn(h, n)
    lam, dp = _max_eigenvalue(h, n, e0, -np.inf)
    return _rotation(n, lam, dp, r)


# --------------------------------------------------------------------------------------------
# Generic alignment over a permutation table (numba)
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _cross_covariance(qp, qv, rp, rv, perm, h):
    """``h = sum_k s_perm[k] p_k^T`` over pairs valid on both sides; returns (n, e0)."""
    for a in range(3):
        for b in range(3):
            h[a, b] = 0.0
    count = 0
    gsum = 0.0
    for k in range(qp.shape[0]):
        m = perm[k]
        if qv[k] and rv[m]:
            p0, p1, p2 = qp[k, 0], qp[k, 1], qp[k, 2]
            s0, s1, s2 = rp[m, 0], rp[m, 1], rp[m, 2]
            h[0, 0] += s0 * p0
            h[0, 1] += s0 * p1
            h[0, 2] += s0 * p2
            h[1, 0] += s1 * p0
            h[1, 1] += s1 * p1
            h[1, 2] += s1 * p2
            h[2, 0] += s2 * p0
            h[2, 1] += s2 * p1
            h[2, 2] += s2 * p2
            gsum += p0 * p0 + p1 * p1 + p2 * p2 + s0 * s0 + s1 * s1 + s2 * s2
            count += 1
    return count, 0.5 * gsum


@njit(cache=True)
def _residual_goodness(qp, qv, rp, rv, perm, r, metric, count):
    """Eq. 12 (metric 0) or eq. 13 (metric 1) for rotation ``r`` and permutation ``perm``."""
    acc = 0.0
    for k in range(qp.shape[0]):
        m = perm[k]
        if qv[k] and rv[m]:
            s0, s1, s2 = rp[m, 0], rp[m, 1], rp[m, 2]
            d0 = qp[k, 0] - (r[0, 0] * s0 + r[0, 1] * s1 + r[0, 2] * s2)
            d1 = qp[k, 1] - (r[1, 0] * s0 + r[1, 1] * s1 + r[1, 2] * s2)
            d2 = qp[k, 2] - (r[2, 0] * s0 + r[2, 1] * s1 + r[2, 2] * s2)
            sq = d0 * d0 + d1 * d1 + d2 * d2
            acc += np.sqrt(sq) if metric == 0 else sq
    if metric == 1:
        acc = np.sqrt(acc)
    return acc / (1.0 + count)


@njit(cache=True)
def _set_identity(r):
    for a in range(3):
        for b in range(3):
            r[a, b] = 1.0 if a == b else 0.0


@njit(cache=True)
def _candidates(qv, qz, qn, rv, rz, rn, perms, pmask, use_z, metric, prune, bound, counts,
                order):
    """The competing permutations of a pair (rules 1-2 of the module docstring): their number,
    with their indices in ``order[:n]`` (by radial bound ``bound`` when ``prune``)."""
    n_perm, m_rows = perms.shape
    n_max = 0
    for p in range(n_perm):
        counts[p] = -1
        if not pmask[p]:
            continue
        count = 0
        b = 0.0
        ok = True
        for k in range(m_rows):
            m = perms[p, k]
            if qv[k] and rv[m]:
                if use_z and qz[k] != rz[m]:
                    ok = False
                    break
                d = qn[k] - rn[m]
                b += abs(d) if metric == 0 else d * d
                count += 1
        if ok:
            counts[p] = count
            bound[p] = (b if metric == 0 else np.sqrt(b)) / (1.0 + count)
            n_max = max(n_max, count)
    if n_max == 0:
        return 0
    n_cand = 0
    for p in range(n_perm):
        if counts[p] == n_max:
            # Insertion sort by bound keeps equal bounds in index order.
            pos = n_cand
            if prune:
                while pos > 0 and bound[order[pos - 1]] > bound[p]:
                    order[pos] = order[pos - 1]
                    pos -= 1
            order[pos] = p
            n_cand += 1
    return n_cand


@njit(cache=True)
def _align_pair(qp, qv, qz, qn, rp, rv, rz, rn, perms, pmask, use_z, metric, prune, ws, r_out):
    """Best permutation of one (query, reference) pair; writes ``r_out``, returns (g, perm).

    ``qn``/``rn`` are row norms (radial bound); ``ws`` holds workspaces (see caller).
    """
    h, n4, r, bound, counts, order = ws
    _set_identity(r_out)
    n_cand = _candidates(qv, qz, qn, rv, rz, rn, perms, pmask, use_z, metric, prune, bound,
                         counts, order)
    best_g = np.inf
    best_p = NO_MATCH
    for idx in range(n_cand):
        p = order[idx]
        if prune and bound[p] > best_g * (1.0 + 1e-12):
            break
        count, e0 = _cross_covariance(qp, qv, rp, rv, perms[p], h)
        _horn(h, n4)
        # Least-squares bound: a winner needs 2 (e0 - lam) <= ((1 + n) g_best)^2.
        lam_cut = -np.inf
        if prune and best_g < np.inf:
            e_max = (best_g * (1.0 + count)) ** 2 * (1.0 + 1e-12) + _BOUND_SLACK * e0
            lam_cut = e0 - 0.5 * e_max
        lam, dp = _max_eigenvalue(h, n4, e0, lam_cut)
        if lam < lam_cut:
            continue
        _rotation(n4, lam, dp, r)
        g = _residual_goodness(qp, qv, rp, rv, perms[p], r, metric, count)
        if g < best_g or (g == best_g and p < best_p):
            best_g = g
            best_p = p
            for a in range(3):
                for b in range(3):
                    r_out[a, b] = r[a, b]
    return best_g, best_p


@njit(cache=True)
def _align_block_kernel(
    qP, qV, qZ, qN, rP, rV, rZ, rN, perms, pmask, use_z, metric, prune, R, G, best_perm
):
    ws = _workspaces(perms.shape[0])
    for i in range(qP.shape[0]):
        for j in range(rP.shape[0]):
            g, p = _align_pair(
                qP[i], qV[i], qZ[i], qN[i], rP[j], rV[j], rZ[j], rN[j],
                perms, pmask[j], use_z, metric, prune, ws, R[i, j],
            )  # fmt: skip
            G[i, j] = g
            best_perm[i, j] = p


@njit(cache=True)
def _workspaces(n_perm):
    """Scratch arrays of one pair's search: H, Horn's matrix, a rotation, and per
    permutation the bound, the matched count and the visiting order."""
    return (np.zeros((3, 3)), np.zeros((4, 4)), np.zeros((3, 3)), np.zeros(n_perm),
            np.zeros(n_perm, dtype=np.int64), np.zeros(n_perm, dtype=np.int64))


@njit(cache=True)
def _blend_pair(qp, qv, qz, qn, rp, rv, rz, rn, perms, pmask, use_z, metric, width, ws,
                r_out):
    """Blended rotation of one pair (see :func:`blend_block`) into ``r_out``; returns the best
    goodness. Permutations whose radial bound is ``_BLEND_REACH`` widths above the best
    goodness are skipped: their weights are below exp(-_BLEND_REACH)."""
    h, n4, r, bound, counts, order = ws
    _set_identity(r_out)
    n_cand = _candidates(qv, qz, qn, rv, rz, rn, perms, pmask, use_z, metric, True, bound,
                         counts, order)
    if n_cand == 0:
        return np.inf
    acc = np.zeros((3, 3))
    total = 0.0
    best_g = np.inf
    for idx in range(n_cand):
        p = order[idx]
        if bound[p] > best_g + _BLEND_REACH * width:
            break
        count, e0 = _cross_covariance(qp, qv, rp, rv, perms[p], h)
        _horn(h, n4)
        lam, dp = _max_eigenvalue(h, n4, e0, -np.inf)
        _rotation(n4, lam, dp, r)
        g = _residual_goodness(qp, qv, rp, rv, perms[p], r, metric, count)
        if g < best_g:
            # weights are relative to the best fit: rescale those summed so far
            rescale = np.exp(-(best_g - g) / width)
            acc *= rescale
            total *= rescale
            best_g = g
        weight = np.exp(-(g - best_g) / width)
        acc += weight * r
        total += weight
    for a in range(3):
        for b in range(3):
            r_out[a, b] = acc[a, b] / total
    return best_g


@njit(cache=True)
def _blend_block_kernel(qP, qV, qZ, qN, rP, rV, rZ, rN, perms, pmask, use_z, metric, width,
                        R, G):
    ws = _workspaces(perms.shape[0])
    for i in range(qP.shape[0]):
        for j in range(rP.shape[0]):
            G[i, j] = _blend_pair(
                qP[i], qV[i], qZ[i], qN[i], rP[j], rV[j], rZ[j], rN[j],
                perms, pmask[j], use_z, metric, width, ws, R[i, j],
            )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Python API: generic alignment
# --------------------------------------------------------------------------------------------


def _metric_code(metric: str) -> int:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    return _METRICS[metric]


def _prepare(P: np.ndarray, Z: np.ndarray | None, name: str) -> tuple[np.ndarray, ...]:
    """Contiguous float64 coordinates, validity mask, int64 Z and row norms (0 where invalid)."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    if P.ndim < 2 or P.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., M, 3), got {P.shape}")
    valid = np.isfinite(P).all(axis=-1)
    if Z is None:
        Z = np.zeros(P.shape[:-1], dtype=np.int64)
    else:
        Z = np.ascontiguousarray(Z, dtype=np.int64)
        if Z.shape != P.shape[:-1]:
            raise ValueError(f"{name} Z must have shape {P.shape[:-1]}, got {Z.shape}")
        valid &= Z != 0
    norms = np.where(valid, np.linalg.norm(np.nan_to_num(P), axis=-1), 0.0)
    return P, valid, Z, norms


def _check_perms(perms: np.ndarray, m: int) -> np.ndarray:
    perms = np.ascontiguousarray(perms, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != m or perms.shape[0] == 0:
        raise ValueError(f"perms must have shape (n_perm, {m}), got {perms.shape}")
    if not (np.sort(perms, axis=1) == np.arange(m)).all():
        raise ValueError("every row of perms must be a permutation of range(M)")
    return perms


def align_block(
    query_P: np.ndarray,
    query_Z: np.ndarray | None,
    ref_P: np.ndarray,
    ref_Z: np.ndarray | None,
    perms: np.ndarray,
    metric: str = "g",
    prune: bool = True,
    perm_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align every reference onto every query over a permutation table.

    Parameters
    ----------
    query_P : numpy.ndarray
        ``(n, M, 3)`` query neighbourhoods (NaN-padded rows at the end).
    query_Z : numpy.ndarray or None
        ``(n, M)`` atomic numbers (0 = padding). Element matching is enforced only when both
        ``query_Z`` and ``ref_Z`` are given.
    ref_P : numpy.ndarray
        ``(K, M, 3)`` reference neighbourhoods.
    ref_Z : numpy.ndarray or None
        ``(K, M)`` atomic numbers of the references.
    perms : numpy.ndarray
        ``(n_perm, M)`` permutation table; row ``p`` matches reference row ``p[k]`` with query
        row ``k`` (e.g. :func:`all_permutations`).
    metric : {"g", "g_prime"}
        Goodness of eq. 12 or eq. 13 (see the module docstring).
    prune : bool
        Skip permutations whose exact lower bound exceeds the best goodness so far; the result
        is the same as without pruning.
    perm_mask : numpy.ndarray, optional
        ``(K, n_perm)`` bool: permutations each reference may use (default: all).

    Returns
    -------
    R : numpy.ndarray
        ``(n, K, 3, 3)`` proper rotations mapping reference ``j`` onto query ``i``.
    g : numpy.ndarray
        ``(n, K)`` goodness of the best permutation (``+inf`` when nothing matched).
    perm : numpy.ndarray
        ``(n, K)`` int64 index into ``perms`` of the best permutation (``NO_MATCH``).
    """
    args = _block_inputs(query_P, query_Z, ref_P, ref_Z, perms, metric, perm_mask)
    n, k = args[0].shape[0], args[4].shape[0]
    R = np.empty((n, k, 3, 3))
    g = np.empty((n, k))
    perm = np.empty((n, k), dtype=np.int64)
    _align_block_kernel(*args, prune, R, g, perm)
    return R, g, perm


def blend_block(
    query_P: np.ndarray,
    query_Z: np.ndarray | None,
    ref_P: np.ndarray,
    ref_Z: np.ndarray | None,
    perms: np.ndarray,
    width: float,
    metric: str = "g",
    perm_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`align_block`, but each pair's matrix blends the rotations of its
    competing permutations (rules 1-2 of the module docstring), permutation ``p`` weighted
    by ``exp(-(g_p - g_best) / width)``.

    The blend is continuous where permutations tie, unlike the best rotation, which jumps;
    it is not a rotation in general, so it only serves to carry vectors (``R t``).

    Returns
    -------
    R : numpy.ndarray
        ``(n, K, 3, 3)`` blended matrices (``I`` where nothing matched).
    g : numpy.ndarray
        ``(n, K)`` goodness of the best permutation (``+inf`` when nothing matched).
    matched : numpy.ndarray
        ``(n, K)`` bool, some permutation matched.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    args = _block_inputs(query_P, query_Z, ref_P, ref_Z, perms, metric, perm_mask)
    n, k = args[0].shape[0], args[4].shape[0]
    R = np.empty((n, k, 3, 3))
    g = np.empty((n, k))
    _blend_block_kernel(*args, float(width), R, g)
    return R, g, np.isfinite(g)


def _block_inputs(query_P, query_Z, ref_P, ref_Z, perms, metric, perm_mask) -> tuple:
    """Checked kernel arguments of :func:`align_block` and :func:`blend_block`: query and
    reference arrays (``_prepare``), permutations, mask, element matching and metric code."""
    code = _metric_code(metric)
    qP, qV, qZ, qN = _prepare(query_P, query_Z, "query_P")
    rP, rV, rZ, rN = _prepare(ref_P, ref_Z, "ref_P")
    if qP.ndim != 3 or rP.ndim != 3 or qP.shape[1] != rP.shape[1]:
        raise ValueError(
            f"query_P (n, M, 3) and ref_P (K, M, 3) needed, got {qP.shape} and {rP.shape}"
        )
    perms = _check_perms(perms, qP.shape[1])
    if perm_mask is None:
        pmask = np.ones((rP.shape[0], perms.shape[0]), dtype=np.bool_)
    else:
        pmask = np.ascontiguousarray(perm_mask, dtype=np.bool_)
        if pmask.shape != (rP.shape[0], perms.shape[0]):
            raise ValueError(f"perm_mask must have shape {(rP.shape[0], perms.shape[0])}")
    use_z = query_Z is not None and ref_Z is not None
    return qP, qV, qZ, qN, rP, rV, rZ, rN, perms, pmask, use_z, code


def align_many(
    query_P: np.ndarray,
    query_Z: np.ndarray | None,
    ref_P: np.ndarray,
    ref_Z: np.ndarray | None,
    perms: np.ndarray,
    metric: str = "g",
    prune: bool = True,
    perm_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align K references onto one query (``(M, 3)``); see :func:`align_block`.

    Returns
    -------
    R : numpy.ndarray
        ``(K, 3, 3)`` rotations.
    g : numpy.ndarray
        ``(K,)`` goodness values.
    perm : numpy.ndarray
        ``(K,)`` best permutation per reference.
    """
    qz = None if query_Z is None else np.asarray(query_Z)[None]
    R, g, perm = align_block(
        np.asarray(query_P)[None], qz, ref_P, ref_Z, perms, metric, prune, perm_mask
    )
    return R[0], g[0], perm[0]


# --------------------------------------------------------------------------------------------
# Core gold: three-point alignment (seed 000 sec. II C)
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _nearest_two(P, Z, V, z):
    """Rows of the nearest and second-nearest valid atoms of element ``z`` (-1 if absent).

    Equal distances keep row order.
    """
    a = -1
    b = -1
    da = np.inf
    db = np.inf
    for k in range(P.shape[0]):
        if V[k] and Z[k] == z:
            d = P[k, 0] * P[k, 0] + P[k, 1] * P[k, 1] + P[k, 2] * P[k, 2]
            if d < da:
                b, db = a, da
                a, da = k, d
            elif d < db:
                b, db = k, d
    return a, b


@njit(cache=True)
def _triangle(P, a, b, out):
    """Sides ``(|OA|, |OB|, |AB|)`` (Å) and angles at ``(O, A, B)`` (rad) of O, P[a], P[b]."""
    ax, ay, az = P[a, 0], P[a, 1], P[a, 2]
    bx, by, bz = P[b, 0], P[b, 1], P[b, 2]
    aa = ax * ax + ay * ay + az * az
    bb = bx * bx + by * by + bz * bz
    ab = ax * bx + ay * by + az * bz
    cx = ay * bz - az * by
    cy = az * bx - ax * bz
    cz = ax * by - ay * bx
    cross = np.sqrt(cx * cx + cy * cy + cz * cz)
    out[0] = np.sqrt(aa)
    out[1] = np.sqrt(bb)
    out[2] = np.sqrt(max(aa + bb - 2.0 * ab, 0.0))
    # atan2(|a x b|, a.b) is accurate for all angles, unlike acos.
    out[3] = np.arctan2(cross, ab)
    out[4] = np.arctan2(cross, aa - ab)
    out[5] = np.arctan2(cross, bb - ab)


@njit(cache=True)
def _ordered_au_pairs(P, Z, V, feats, pairs):
    """Triangle features of all ordered pairs of valid Au rows, in row order; returns count."""
    m_rows = P.shape[0]
    count = 0
    for a in range(m_rows):
        if not (V[a] and Z[a] == Z_AU):
            continue
        for b in range(m_rows):
            if b != a and V[b] and Z[b] == Z_AU:
                _triangle(P, a, b, feats[count])
                pairs[count, 0] = a
                pairs[count, 1] = b
                count += 1
    return count


@njit(cache=True)
def _select_triangles(q_feat, feats, n_pairs, n_best, sel_u, sel_k):
    """The ``n_best`` pairs with the smallest eq. 18 difference, ascending (stable).

    Returns how many were kept.
    """
    kept = 0
    for t in range(n_pairs):
        u = 0.0
        for c in range(6):
            d = feats[t, c] - q_feat[c]
            u += d * d
        if kept < n_best:
            pos = kept
            kept += 1
        elif u < sel_u[kept - 1]:
            pos = kept - 1
        else:
            continue
        while pos > 0 and sel_u[pos - 1] > u:
            sel_u[pos] = sel_u[pos - 1]
            sel_k[pos] = sel_k[pos - 1]
            pos -= 1
        sel_u[pos] = u
        sel_k[pos] = t
    return kept


@njit(cache=True)
def _compact(P, V, out):
    """Copy the valid rows of ``P`` to the front of ``out``; returns their number."""
    count = 0
    for k in range(P.shape[0]):
        if V[k]:
            out[count, 0] = P[k, 0]
            out[count, 1] = P[k, 1]
            out[count, 2] = P[k, 2]
            count += 1
    return count


@njit(cache=True)
def _nn_goodness(qc, nq, rc, nr, r, metric, best, buf):
    """Nearest-neighbour goodness of rotated reference ``r rc`` against query ``qc``.

    For every atom of the larger set (the reference on equal counts), its distance ``d`` to the
    nearest atom of the other set; ``g' = sqrt(sum d^2) / (1 + L)`` (metric 1) or
    ``g = sum d / (1 + L)`` (metric 0) with ``L`` the larger count. Returns ``+inf`` as soon
    as the value must exceed ``best``.
    """
    if nq == 0 or nr == 0:
        return np.inf
    for t in range(nr):
        s0, s1, s2 = rc[t, 0], rc[t, 1], rc[t, 2]
        buf[t, 0] = r[0, 0] * s0 + r[0, 1] * s1 + r[0, 2] * s2
        buf[t, 1] = r[1, 0] * s0 + r[1, 1] * s1 + r[1, 2] * s2
        buf[t, 2] = r[2, 0] * s0 + r[2, 1] * s1 + r[2, 2] * s2
    if nr >= nq:
        big, n_big, other, n_other = buf, nr, qc, nq
    else:
        big, n_big, other, n_other = qc, nq, buf, nr
    limit = best * (1.0 + n_big)
    if metric == 1:
        limit = limit * limit
    acc = 0.0
    for t in range(n_big):
        dmin = np.inf
        for k in range(n_other):
            d0 = big[t, 0] - other[k, 0]
            d1 = big[t, 1] - other[k, 1]
            d2 = big[t, 2] - other[k, 2]
            dmin = min(dmin, d0 * d0 + d1 * d1 + d2 * d2)
        acc += np.sqrt(dmin) if metric == 0 else dmin
        if acc > limit:
            return np.inf
    if metric == 1:
        acc = np.sqrt(acc)
    return acc / (1.0 + n_big)


@njit(cache=True)
def _two_point_rotation(q1, q2, s1, s2, h, n4, r):
    """Kabsch rotation mapping (s1, s2) onto (q1, q2); the centre adds nothing to h."""
    e0 = 0.0
    for a in range(3):
        e0 += q1[a] * q1[a] + q2[a] * q2[a] + s1[a] * s1[a] + s2[a] * s2[a]
        for b in range(3):
            h[a, b] = s1[a] * q1[b] + s2[a] * q2[b]
    _kabsch(h, n4, 0.5 * e0, r)


@njit(cache=True)
def _core_au_kernel(qP, qZ, qV, rP, rZ, rV, n_best, metric, R, G, C):
    n_q, m_rows = qP.shape[0], qP.shape[1]
    n_ref = rP.shape[0]
    max_pairs = max(m_rows * (m_rows - 1), 1)
    feats = np.empty((n_ref, max_pairs, 6))
    pairs = np.empty((n_ref, max_pairs, 2), dtype=np.int64)
    n_pairs = np.empty(n_ref, dtype=np.int64)
    r_has_s = np.empty(n_ref, dtype=np.bool_)
    r_comp = np.empty((n_ref, m_rows, 3))
    r_count = np.empty(n_ref, dtype=np.int64)
    # Reference triangles do not depend on the query: computed once per block.
    for j in range(n_ref):
        n_pairs[j] = _ordered_au_pairs(rP[j], rZ[j], rV[j], feats[j], pairs[j])
        r_has_s[j] = rV[j, 0] and rZ[j, 0] == Z_S
        r_count[j] = _compact(rP[j], rV[j], r_comp[j])
    h = np.empty((3, 3))
    n4 = np.empty((4, 4))
    r = np.empty((3, 3))
    q_feat = np.empty(6)
    q_comp = np.empty((m_rows, 3))
    buf = np.empty((m_rows, 3))
    sel_u = np.empty(max(n_best, 1))
    sel_k = np.empty(max(n_best, 1), dtype=np.int64)
    for i in range(n_q):
        q = qP[i]
        q_has_s = qV[i, 0] and qZ[i, 0] == Z_S
        a0, a1 = _nearest_two(q, qZ[i], qV[i], Z_AU)
        if a1 >= 0:
            _triangle(q, a0, a1, q_feat)
        nq = _compact(q, qV[i], q_comp)
        for j in range(n_ref):
            s = rP[j]
            best = np.inf
            c0 = NO_MATCH
            c1 = NO_MATCH
            _set_identity(R[i, j])
            if q_has_s and r_has_s[j]:
                n_cand = 0 if a0 < 0 else m_rows
            else:
                n_cand = 0
                if a1 >= 0:
                    n_cand = _select_triangles(q_feat, feats[j], n_pairs[j], n_best, sel_u, sel_k)
            for t in range(n_cand):
                if q_has_s and r_has_s[j]:
                    # Scenario 1: (S, nearest Au) of the query against (S, any Au).
                    if not (rV[j, t] and rZ[j, t] == Z_AU):
                        continue
                    b0, b1 = 0, t
                    _two_point_rotation(q[0], q[a0], s[0], s[t], h, n4, r)
                else:
                    # Scenario 2: the two nearest Au against a pre-screened ordered Au pair.
                    b0, b1 = pairs[j, sel_k[t], 0], pairs[j, sel_k[t], 1]
                    _two_point_rotation(q[a0], q[a1], s[b0], s[b1], h, n4, r)
                g = _nn_goodness(q_comp, nq, r_comp[j], r_count[j], r, metric, best, buf)
                if g < best:
                    best = g
                    c0, c1 = b0, b1
                    for a in range(3):
                        for b in range(3):
                            R[i, j, a, b] = r[a, b]
            G[i, j] = best
            C[i, j, 0] = c0
            C[i, j, 1] = c1


@njit(cache=True)
def _prescreen_one(qP, qZ, qV, rP, rZ, rV, n_best):
    m_rows = qP.shape[0]
    max_pairs = max(m_rows * (m_rows - 1), 1)
    feats = np.empty((max_pairs, 6))
    pairs = np.empty((max_pairs, 2), dtype=np.int64)
    sel_u = np.empty(max(n_best, 1))
    sel_k = np.empty(max(n_best, 1), dtype=np.int64)
    q_feat = np.empty(6)
    a0, a1 = _nearest_two(qP, qZ, qV, Z_AU)
    if a1 < 0:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    _triangle(qP, a0, a1, q_feat)
    n_pairs = _ordered_au_pairs(rP, rZ, rV, feats, pairs)
    kept = _select_triangles(q_feat, feats, n_pairs, n_best, sel_u, sel_k)
    return pairs[sel_k[:kept]].copy(), sel_u[:kept].copy()


def _core_inputs(query_P, query_Z, ref_P, ref_Z, n_best, metric):
    if query_Z is None or ref_Z is None:
        raise ValueError("core-Au alignment needs query_Z and ref_Z (S = 16 first, Au = 79)")
    if n_best < 1:
        raise ValueError(f"n_best must be at least 1, got {n_best}")
    code = _metric_code(metric)
    qP, qV, qZ, _ = _prepare(query_P, query_Z, "query_P")
    rP, rV, rZ, _ = _prepare(ref_P, ref_Z, "ref_P")
    return qP, qV, qZ, rP, rV, rZ, code


def align_core_au_block(
    query_P: np.ndarray,
    query_Z: np.ndarray,
    ref_P: np.ndarray,
    ref_Z: np.ndarray,
    n_best: int = 10,
    metric: str = "g_prime",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core-gold alignment of every reference onto every query (seed 000 sec. II C).

    Neighbourhoods hold up to ``M`` (12) neighbours: sulfur within 3.0 Å first, then Au by
    distance. Both scenarios align three points, the centre (origin) and two neighbours:

    1. Query and reference both have an S in row 0 (``Z[0] == 16``): the query's
       (S, nearest Au) against the reference's (S, Au) for every Au of the reference.
    2. Otherwise: the query's (nearest Au, second-nearest Au) against ordered pairs of the
       reference's Au (at most ``M (M - 1)``). Triangles (centre, A, B) are compared by eq. 18,
       ``u = sum over the sides |OA|, |OB|, |AB| (Å) and the angles at O, A, B (rad) of
       squared differences``, and the ``n_best`` smallest ``u`` are aligned.

    Each candidate rotation is applied to the whole reference and scored by nearest-neighbour
    distances over the larger neighbourhood: for every valid atom of the neighbourhood with
    more valid atoms (the rotated reference if the counts are equal), ``d`` = distance to the
    nearest valid atom of the other neighbourhood (any element, centres excluded);
    ``g' = sqrt(sum d^2) / (1 + L)`` (eq. 13) or ``g = sum d / (1 + L)`` (eq. 12), with ``L``
    the larger count. The candidate with the smallest value wins (ties: the first candidate,
    in reference row order or ascending ``u``).

    Parameters
    ----------
    query_P, ref_P : numpy.ndarray
        ``(n, M, 3)`` and ``(K, M, 3)`` neighbourhoods (NaN padding at the end).
    query_Z, ref_Z : numpy.ndarray
        ``(n, M)`` and ``(K, M)`` atomic numbers (0 = padding); required.
    n_best : int
        Triangles kept by the pre-screen of scenario 2 (10 in the paper).
    metric : {"g_prime", "g"}
        Nearest-neighbour form of eq. 13 (default) or eq. 12.

    Returns
    -------
    R : numpy.ndarray
        ``(n, K, 3, 3)`` proper rotations mapping reference ``j`` onto query ``i``.
    g : numpy.ndarray
        ``(n, K)`` goodness; ``+inf`` with ``R = I`` when no candidate exists (the query or
        reference lacks the Au needed by its scenario).
    choice : numpy.ndarray
        ``(n, K, 2)`` int64 reference rows matched with the query's two alignment points
        (scenario 1: ``(0, Au row)``; scenario 2: the Au pair), ``NO_MATCH`` if none.
    """
    qP, qV, qZ, rP, rV, rZ, code = _core_inputs(query_P, query_Z, ref_P, ref_Z, n_best, metric)
    if qP.ndim != 3 or rP.ndim != 3 or qP.shape[1] != rP.shape[1]:
        raise ValueError(
            f"query_P (n, M, 3) and ref_P (K, M, 3) needed, got {qP.shape} and {rP.shape}"
        )
    n, k = qP.shape[0], rP.shape[0]
    R = np.empty((n, k, 3, 3))
    g = np.empty((n, k))
    choice = np.empty((n, k, 2), dtype=np.int64)
    _core_au_kernel(qP, qZ, qV, rP, rZ, rV, n_best, code, R, g, choice)
    return R, g, choice


def align_core_au(
    query_P: np.ndarray,
    query_Z: np.ndarray,
    ref_P: np.ndarray,
    ref_Z: np.ndarray,
    n_best: int = 10,
    metric: str = "g_prime",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core-gold alignment of K references onto one query (``(M, 3)``).

    See :func:`align_core_au_block`. Returns ``R`` ``(K, 3, 3)``, ``g`` ``(K,)`` and
    ``choice`` ``(K, 2)``.
    """
    qz = None if query_Z is None else np.asarray(query_Z)[None]
    R, g, choice = align_core_au_block(np.asarray(query_P)[None], qz, ref_P, ref_Z, n_best, metric)
    return R[0], g[0], choice[0]


def triangle_prescreen(
    query_P: np.ndarray,
    query_Z: np.ndarray,
    ref_P: np.ndarray,
    ref_Z: np.ndarray,
    n_best: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Scenario-2 pre-screen of one reference (``(M, 3)``) for one query (``(M, 3)``).

    Returns
    -------
    pairs : numpy.ndarray
        ``(n_kept, 2)`` reference Au rows ``(A, B)`` matched with the query's nearest and
        second-nearest Au, by ascending eq. 18 difference; ``n_kept <= n_best``.
    u : numpy.ndarray
        ``(n_kept,)`` their eq. 18 differences.
    """
    qP, qV, qZ, rP, rV, rZ, _ = _core_inputs(query_P, query_Z, ref_P, ref_Z, n_best, "g")
    return _prescreen_one(qP, qZ, qV, rP, rZ, rV, n_best)


# --------------------------------------------------------------------------------------------
# Reference implementation (numpy, one SVD per pair and permutation)
# --------------------------------------------------------------------------------------------


def _kabsch_svd(S: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Arun/Kabsch proper rotation mapping points ``S`` (n, 3) onto ``P`` by numpy's SVD."""
    U, _, Vt = np.linalg.svd(S.T @ P)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    return Vt.T @ np.diag([1.0, 1.0, d]) @ U.T


def _goodness(residual: np.ndarray, metric: str, count: int) -> float:
    norms = np.linalg.norm(residual, axis=-1)
    acc = norms.sum() if metric == "g" else np.sqrt((norms**2).sum())
    return float(acc / (1 + count))


def align_naive(
    query_P: np.ndarray,
    query_Z: np.ndarray | None,
    ref_P: np.ndarray,
    ref_Z: np.ndarray | None,
    perms: np.ndarray,
    metric: str = "g",
    perm_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference for :func:`align_many`: a Python loop with ``numpy.linalg.svd`` per alignment.

    Same arguments, rules and results as :func:`align_many` (up to rounding); slow.
    """
    _metric_code(metric)
    qP, qV, qZ, _ = _prepare(query_P, query_Z, "query_P")
    rP, rV, rZ, _ = _prepare(ref_P, ref_Z, "ref_P")
    perms = _check_perms(perms, qP.shape[0])
    use_z = query_Z is not None and ref_Z is not None
    n_ref = rP.shape[0]
    R = np.tile(np.eye(3), (n_ref, 1, 1))
    g = np.full(n_ref, np.inf)
    best_perm = np.full(n_ref, NO_MATCH, dtype=np.int64)
    for j in range(n_ref):
        best_count = 0
        for p, perm in enumerate(perms):
            if perm_mask is not None and not perm_mask[j, p]:
                continue
            both = qV & rV[j, perm]
            if use_z and (qZ[both] != rZ[j, perm][both]).any():
                continue
            count = int(both.sum())
            if count == 0 or count < best_count:
                continue
            P, S = qP[both], rP[j, perm][both]
            rot = _kabsch_svd(S, P)
            value = _goodness(P - S @ rot.T, metric, count)
            if count > best_count or value < g[j]:
                best_count, g[j], best_perm[j], R[j] = count, value, p, rot
    return R, g, best_perm


def _triangle_np(P: np.ndarray, a: int, b: int) -> np.ndarray:
    A, B = P[a], P[b]
    sides = [np.linalg.norm(A), np.linalg.norm(B), np.linalg.norm(A - B)]

    def angle(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.arctan2(np.linalg.norm(np.cross(u, v)), u @ v))

    return np.array(sides + [angle(A, B), angle(-A, B - A), angle(-B, A - B)])


def _nn_goodness_np(Q: np.ndarray, S: np.ndarray, metric: str) -> float:
    if len(Q) == 0 or len(S) == 0:
        return np.inf
    big, other = (S, Q) if len(S) >= len(Q) else (Q, S)
    d = np.sqrt(((big[:, None, :] - other[None, :, :]) ** 2).sum(-1)).min(axis=1)
    acc = d.sum() if metric == "g" else np.sqrt((d**2).sum())
    return float(acc / (1 + len(big)))


def align_core_au_naive(
    query_P: np.ndarray,
    query_Z: np.ndarray,
    ref_P: np.ndarray,
    ref_Z: np.ndarray,
    n_best: int | None = 10,
    metric: str = "g_prime",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference for :func:`align_core_au`: Python loops with ``numpy.linalg.svd``.

    ``n_best=None`` skips the triangle pre-screen and aligns every ordered Au pair (brute
    force). Otherwise same rules and results as :func:`align_core_au` (up to rounding).
    """
    screen = 1 if n_best is None else n_best
    qP, qV, qZ, rP, rV, rZ, _ = _core_inputs(query_P, query_Z, ref_P, ref_Z, screen, metric)
    n_ref = rP.shape[0]
    R = np.tile(np.eye(3), (n_ref, 1, 1))
    g = np.full(n_ref, np.inf)
    choice = np.full((n_ref, 2), NO_MATCH, dtype=np.int64)
    q_au = [k for k in np.argsort((qP**2).sum(-1), kind="stable") if qV[k] and qZ[k] == Z_AU]
    q_has_s = qV[0] and qZ[0] == Z_S
    Q = qP[qV]
    for j in range(n_ref):
        s = rP[j]
        r_au = [k for k in range(s.shape[0]) if rV[j, k] and rZ[j, k] == Z_AU]
        if q_has_s and rV[j, 0] and rZ[j, 0] == Z_S:
            q_rows = [0, q_au[0]] if q_au else []
            candidates = [(0, b) for b in r_au] if q_au else []
        else:
            q_rows = q_au[:2]
            candidates = [(a, b) for a in r_au for b in r_au if a != b] if len(q_au) > 1 else []
            if candidates:
                q_feat = _triangle_np(qP, q_au[0], q_au[1])
                u = [((_triangle_np(s, a, b) - q_feat) ** 2).sum() for a, b in candidates]
                order = np.argsort(u, kind="stable")[:n_best]
                candidates = [candidates[t] for t in order]
        for pair in candidates:
            rot = _kabsch_svd(s[list(pair)], qP[q_rows])
            value = _nn_goodness_np(Q, rP[j][rV[j]] @ rot.T, metric)
            if value < g[j]:
                g[j], R[j], choice[j] = value, rot, pair
    return R, g, choice
