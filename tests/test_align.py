"""Alignment kernels: exact recovery, SVD reference agreement, degenerate input, core Au."""

from __future__ import annotations

import numpy as np
import pytest

from oamlm_dist.align import (
    NO_MATCH,
    Z_AU,
    Z_S,
    align_block,
    align_core_au,
    align_core_au_block,
    align_core_au_naive,
    align_many,
    align_naive,
    all_permutations,
    blend_block,
    triangle_prescreen,
)

PERMS4 = all_permutations(4)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def neighbourhoods(rng: np.random.Generator, n: int, m: int = 4) -> np.ndarray:
    """Random neighbours at 1.0-1.6 Å from the centre."""
    v = rng.normal(size=(n, m, 3))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v * rng.uniform(1.0, 1.6, size=(n, m, 1))


def assert_proper(R: np.ndarray) -> None:
    R = R.reshape(-1, 3, 3)
    assert np.isfinite(R).all()
    np.testing.assert_allclose(
        R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Generic alignment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["g", "g_prime"])
@pytest.mark.parametrize("prune", [True, False])
def test_recovers_rotation_and_permutation(metric, prune):
    rng = np.random.default_rng(1)
    refs = neighbourhoods(rng, 8)
    for j, p in [(0, 0), (3, 17), (7, 23), (5, 9)]:
        rot = random_rotation(rng)
        query = refs[j][PERMS4[p]] @ rot.T  # query row k = R s_perm[k]
        R, g, perm = align_many(query, None, refs, None, PERMS4, metric=metric, prune=prune)
        assert g[j] < 1e-10
        assert perm[j] == p
        np.testing.assert_allclose(R[j], rot, atol=1e-10)
        assert (np.delete(g, j) > 1e-3).all()
        assert_proper(R)


def padded_set(rng, n, with_z):
    P = neighbourhoods(rng, n)
    Z = rng.choice([1, 6], size=(n, 4))
    n_valid = rng.integers(3, 5, size=n)  # >= 3 matched points keep R unique
    for i, m in enumerate(n_valid):
        P[i, m:] = np.nan
        Z[i, m:] = 0
    return P, (Z if with_z else None)


@pytest.mark.parametrize("metric", ["g", "g_prime"])
@pytest.mark.parametrize("with_z", [False, True])
def test_matches_svd_reference(metric, with_z):
    rng = np.random.default_rng(2)
    Q, QZ = padded_set(rng, 6, with_z)
    S, SZ = padded_set(rng, 12, with_z)
    R_pruned, g_pruned, p_pruned = align_block(Q, QZ, S, SZ, PERMS4, metric=metric)
    R_full, g_full, p_full = align_block(Q, QZ, S, SZ, PERMS4, metric=metric, prune=False)
    np.testing.assert_array_equal(p_pruned, p_full)
    np.testing.assert_array_equal(g_pruned, g_full)
    checked = 0
    for i in range(len(Q)):
        R_ref, g_ref, p_ref = align_naive(
            Q[i], None if QZ is None else QZ[i], S, SZ, PERMS4, metric=metric
        )
        np.testing.assert_array_equal(p_pruned[i], p_ref)
        np.testing.assert_allclose(g_pruned[i], g_ref, rtol=1e-10, atol=1e-12)
        ok = np.isfinite(g_ref)
        np.testing.assert_allclose(R_pruned[i][ok], R_ref[ok], atol=1e-10)
        checked += ok.sum()
    assert checked > 40
    assert_proper(R_pruned)


def test_perm_mask_and_element_matching():
    rng = np.random.default_rng(3)
    S = neighbourhoods(rng, 3)
    SZ = np.array([[6, 1, 1, 1]] * 3)
    query = S[1][PERMS4[5]] @ random_rotation(rng).T
    QZ = SZ[1][PERMS4[5]]
    _, g, perm = align_many(query, QZ, S, SZ, PERMS4)
    assert perm[1] == 5 and g[1] < 1e-10
    mask = np.ones((3, len(PERMS4)), dtype=bool)
    mask[1, 5] = False
    R, g, perm = align_many(query, QZ, S, SZ, PERMS4, perm_mask=mask)
    R_ref, g_ref, perm_ref = align_naive(query, QZ, S, SZ, PERMS4, perm_mask=mask)
    assert perm[1] != 5 and g[1] > 1e-3
    np.testing.assert_array_equal(perm, perm_ref)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10)
    # Only the 6 permutations that keep the carbon on the carbon are admissible.
    assert (SZ[1][PERMS4[perm]] == QZ).all()


def test_reflection_gives_proper_rotation():
    rng = np.random.default_rng(4)
    S = neighbourhoods(rng, 5)
    mirror = np.diag([1.0, 1.0, -1.0])
    query = S[2] @ mirror @ random_rotation(rng).T
    R, g, perm = align_many(query, None, S, None, PERMS4, metric="g_prime")
    _, g_ref, perm_ref = align_naive(query, None, S, None, PERMS4, metric="g_prime")
    assert_proper(R)
    np.testing.assert_array_equal(perm, perm_ref)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10)
    assert g[2] > 1e-3  # a mirror image is not a rotated copy


@pytest.mark.parametrize("metric", ["g", "g_prime"])
def test_degenerate_sets_are_defined(metric):
    nan = np.full(3, np.nan)
    e = np.array([1.0, 2.0, 2.0]) / 3.0
    collinear = np.array([1.1 * e, -1.4 * e, 1.5 * e, 2.0 * e])
    single = np.array([1.2 * e, nan, nan, nan])
    all_nan = np.full((4, 3), np.nan)
    refs = np.array([collinear, single, all_nan, [[1.0, 0, 0], [0, 1.2, 0], [0, 0, 1.3], nan]])
    for query in (collinear, single, all_nan, refs[3] @ np.diag([1.0, -1.0, -1.0])):
        R, g, perm = align_many(query, None, refs, None, PERMS4, metric=metric)
        _, g_ref, _ = align_naive(query, None, refs, None, PERMS4, metric=metric)
        assert not np.isnan(g).any()
        assert_proper(R)
        nothing = ~np.isfinite(g_ref)
        np.testing.assert_array_equal(~np.isfinite(g), nothing)
        np.testing.assert_array_equal(perm[nothing], NO_MATCH)
        np.testing.assert_array_equal(R[nothing], np.broadcast_to(np.eye(3), R[nothing].shape))
        np.testing.assert_allclose(g[~nothing], g_ref[~nothing], rtol=1e-9, atol=1e-12)
    # A single matched point: only the radial mismatch remains, over 1 + 1 points.
    _, g, _ = align_many(single, None, single[None] * 1.1, None, PERMS4, metric=metric)
    np.testing.assert_allclose(g, 0.1 * 1.2 / 2, rtol=1e-12)
    # Elements that never match: nothing to align.
    Z = np.array([6, 6, 6, 6])
    _, g, perm = align_many(collinear, Z, collinear[None], Z[None] * 0 + 1, PERMS4)
    assert g[0] == np.inf and perm[0] == NO_MATCH


def test_block_matches_many():
    rng = np.random.default_rng(5)
    Q, S = neighbourhoods(rng, 3), neighbourhoods(rng, 4)
    R, g, perm = align_block(Q, None, S, None, PERMS4)
    assert R.shape == (3, 4, 3, 3) and g.shape == (3, 4) and perm.shape == (3, 4)
    for i in range(3):
        R_i, g_i, perm_i = align_many(Q[i], None, S, None, PERMS4)
        np.testing.assert_array_equal(R[i], R_i)
        np.testing.assert_array_equal(g[i], g_i)
        np.testing.assert_array_equal(perm[i], perm_i)
    with pytest.raises(ValueError, match="permutation"):
        align_block(Q, None, S, None, np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="metric"):
        align_block(Q, None, S, None, PERMS4, metric="rmsd")


TETRAHEDRON = 1.3 * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / 3**0.5


def expected_blend(query, ref, width, metric):
    """Each permutation aligned alone by the SVD reference; the competing ones (most matched
    pairs) averaged with weights exp(-(g_p - g_best) / width)."""
    valid_q, valid_r = np.isfinite(query).all(1), np.isfinite(ref).all(1)
    counts = np.array([(valid_q & valid_r[perm]).sum() for perm in PERMS4])
    fits = [align_naive(query, None, ref[None], None, PERMS4[p:p + 1], metric)
            for p in np.flatnonzero(counts == counts.max())]
    g = np.array([fit[1][0] for fit in fits])
    weights = np.exp(-(g - g.min()) / width)
    R = np.einsum("p,pab->ab", weights, np.array([fit[0][0] for fit in fits]))
    return R / weights.sum(), g.min(), weights


@pytest.mark.parametrize("metric", ["g", "g_prime"])
def test_blend_averages_permutations_by_their_fit(metric):
    rng = np.random.default_rng(11)
    # A distorted tetrahedron: its 12 symmetry permutations fit within a few hundredths of Å.
    S = np.concatenate([(TETRAHEDRON + rng.normal(scale=0.01, size=(4, 3)))[None],
                        neighbourhoods(rng, 3)])
    S[3, 3] = np.nan  # a padded reference
    Q = np.stack([TETRAHEDRON @ random_rotation(rng).T + rng.normal(scale=0.01, size=(4, 3)),
                  neighbourhoods(rng, 1)[0]])
    Q[1, 2] = np.nan  # with the padded reference, only some permutations match 3 pairs
    width = 0.02
    R, g, matched = blend_block(Q, None, S, None, PERMS4, width, metric)
    assert matched.all()
    shared = 0
    for i in range(2):
        for j in range(4):
            R_ref, g_ref, weights = expected_blend(Q[i], S[j], width, metric)
            np.testing.assert_allclose(R[i, j], R_ref, atol=1e-9)
            np.testing.assert_allclose(g[i, j], g_ref, rtol=1e-9)
            shared += np.sort(weights)[-2] > 0.1 if len(weights) > 1 else 0
    assert shared >= 1  # some pair really blends several permutations


def test_blend_without_match_and_bad_width():
    rng = np.random.default_rng(12)
    S = neighbourhoods(rng, 2)
    Q = np.full((1, 4, 3), np.nan)
    R, g, matched = blend_block(Q, None, S, None, PERMS4, 0.01)
    assert not matched.any() and np.isinf(g).all()
    np.testing.assert_array_equal(R, np.broadcast_to(np.eye(3), R.shape))
    with pytest.raises(ValueError, match="width"):
        blend_block(S, None, S, None, PERMS4, 0.0)


# --------------------------------------------------------------------------------------------
# Core gold
# --------------------------------------------------------------------------------------------

_PHI = (1 + 5**0.5) / 2
ICOSAHEDRON = np.array(
    [[0, s1, s2 * _PHI] for s1 in (1, -1) for s2 in (1, -1)]
    + [[s1, s2 * _PHI, 0] for s1 in (1, -1) for s2 in (1, -1)]
    + [[s2 * _PHI, 0, s1] for s1 in (1, -1) for s2 in (1, -1)],
    dtype=float,
)
ICOSAHEDRON *= 2.88 / np.linalg.norm(ICOSAHEDRON[0])


def core_shell(rng, with_s: bool, n_valid: int = 12, noise: float = 0.1):
    """A distorted, randomly oriented Au12 shell; optionally one Au replaced by an S first."""
    P = ICOSAHEDRON @ random_rotation(rng).T + rng.normal(scale=noise, size=(12, 3))
    Z = np.full(12, Z_AU)
    order = np.argsort(np.linalg.norm(P, axis=1))
    if with_s:
        P[0] *= 2.4 / np.linalg.norm(P[0])
        Z[0] = Z_S
        order = np.r_[0, 1 + np.argsort(np.linalg.norm(P[1:], axis=1))]
    P, Z = P[order], Z[order]
    P[n_valid:], Z[n_valid:] = np.nan, 0
    return P, Z


@pytest.mark.parametrize("with_s", [True, False])
def test_core_au_recovers_rotated_copy(with_s):
    rng = np.random.default_rng(6)
    refs = [core_shell(rng, with_s) for _ in range(4)]
    S = np.array([r[0] for r in refs])
    SZ = np.array([r[1] for r in refs])
    rot = random_rotation(rng)
    # The query is reference 2 rotated, with its Au rows shuffled.
    shuffle = np.r_[0, 1 + rng.permutation(11)] if with_s else rng.permutation(12)
    query, QZ = S[2][shuffle] @ rot.T, SZ[2][shuffle]
    R, g, choice = align_core_au(query, QZ, S, SZ)
    assert g[2] < 1e-10
    np.testing.assert_allclose(R[2], rot, atol=1e-10)
    au = np.flatnonzero(SZ[2] == Z_AU)
    nearest = au[np.argsort(np.linalg.norm(S[2][au], axis=1))]
    expected = [0, nearest[0]] if with_s else nearest[:2]
    np.testing.assert_array_equal(choice[2], expected)
    assert (np.delete(g, 2) > 1e-2).all()
    assert_proper(R)
    _, g_ref, choice_ref = align_core_au_naive(query, QZ, S, SZ)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(choice, choice_ref)


def triangle_features(P, a, b):
    A, B = P[a], P[b]

    def angle(u, v):
        return np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))

    return np.array(
        [
            np.linalg.norm(A),
            np.linalg.norm(B),
            np.linalg.norm(A - B),
            angle(A, B),
            angle(-A, B - A),
            angle(-B, A - B),
        ]
    )


def test_triangle_prescreen_keeps_the_best_ten():
    rng = np.random.default_rng(7)
    query, QZ = core_shell(rng, False, noise=0.15)
    ref, RZ = core_shell(rng, False, noise=0.15)
    pairs, u = triangle_prescreen(query, QZ, ref, RZ)
    assert pairs.shape == (10, 2) and u.shape == (10,)
    assert (np.diff(u) >= 0).all()
    # Brute force over all 12 * 11 = 132 ordered pairs (eq. 18).
    q_au = np.argsort(np.linalg.norm(query, axis=1))[:2]
    q_feat = triangle_features(query, *q_au)
    all_pairs = [(a, b) for a in range(12) for b in range(12) if a != b]
    all_u = np.array([((triangle_features(ref, a, b) - q_feat) ** 2).sum() for a, b in all_pairs])
    assert len(all_pairs) == 132
    np.testing.assert_allclose(u, np.sort(all_u)[:10], rtol=1e-9)
    kept = {tuple(p) for p in pairs}
    assert kept == {all_pairs[t] for t in np.argsort(all_u)[:10]}
    assert len(triangle_prescreen(query, QZ, ref, RZ, n_best=3)[0]) == 3


def test_core_au_matches_brute_force_when_best_pair_is_kept():
    rng = np.random.default_rng(8)
    agreed = 0
    for trial in range(12):
        with_s = (trial % 3 == 0, trial % 4 == 0)
        query, QZ = core_shell(rng, with_s[0], n_valid=int(rng.integers(8, 13)))
        ref, RZ = core_shell(rng, with_s[1], n_valid=int(rng.integers(8, 13)))
        for metric in ("g_prime", "g"):
            R, g, choice = align_core_au(query, QZ, ref[None], RZ[None], metric=metric)
            R_10, g_10, choice_10 = align_core_au_naive(
                query, QZ, ref[None], RZ[None], metric=metric
            )
            np.testing.assert_allclose(g, g_10, rtol=1e-9)
            np.testing.assert_array_equal(choice, choice_10)
            np.testing.assert_allclose(R, R_10, atol=1e-9)
            _, g_all, choice_all = align_core_au_naive(
                query, QZ, ref[None], RZ[None], n_best=None, metric=metric
            )
            assert g_all[0] <= g[0] + 1e-12
            scenario_2 = not (with_s[0] and with_s[1])
            kept = {tuple(p) for p in triangle_prescreen(query, QZ, ref, RZ)[0]}
            if not scenario_2 or tuple(choice_all[0]) in kept:
                np.testing.assert_allclose(g, g_all, rtol=1e-9)
                np.testing.assert_array_equal(choice, choice_all)
                agreed += scenario_2
    assert agreed >= 4


def test_core_au_block_and_missing_gold():
    rng = np.random.default_rng(9)
    shells = [core_shell(rng, s) for s in (True, False, True)]
    P = np.array([s[0] for s in shells])
    Z = np.array([s[1] for s in shells])
    R, g, choice = align_core_au_block(P, Z, P, Z)
    assert R.shape == (3, 3, 3, 3) and g.shape == (3, 3) and choice.shape == (3, 3, 2)
    np.testing.assert_allclose(np.diag(g), 0.0, atol=1e-10)
    # Scenario 2 between an S-bearing and an S-free shell uses Au pairs only.
    assert (Z[1][choice[0, 1]] == Z_AU).all() and (Z[0][choice[1, 0]] == Z_AU).all()
    # A query with a single Au and no S has no triangle: defined "no match".
    lonely = np.full((12, 3), np.nan)
    lonely[0] = [2.8, 0.0, 0.0]
    lonely_Z = np.r_[Z_AU, np.zeros(11, dtype=int)]
    R, g, choice = align_core_au(lonely, lonely_Z, P, Z)
    assert (g == np.inf).all() and (choice == NO_MATCH).all()
    np.testing.assert_array_equal(R, np.broadcast_to(np.eye(3), R.shape))
    with pytest.raises(ValueError, match="Z"):
        align_core_au(P[0], None, P, Z)
