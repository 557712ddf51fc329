"""Alignment of a class's neighbourhoods to its references, where permutations tie."""

import numpy as np

from oamlm_dist.align import align_block
from oamlm_dist.environments import class_permutations
from oamlm_dist.models.class_model import References, align_to_references, class_metric

# An H neighbourhood (its C, the two other H) with a twofold axis along z: the rotation by
# 180° about z maps the C onto itself and the two H onto each other.
SYMMETRIC_H = np.array([[0.0, 0.0, 1.09], [1.0, 0.3, 1.45], [-1.0, -0.3, 1.45]])
H_Z = np.array([6, 1, 1])


def random_h_references(k: int, seed: int) -> References:
    """K lopsided H neighbourhoods with random unit forces."""
    rng = np.random.default_rng(seed)
    S = np.empty((k, 3, 3))
    for j in range(k):
        c = rng.normal(size=3)
        S[j, 0] = 1.09 * c / np.linalg.norm(c)
        S[j, 1:] = S[j, 0] + rng.normal(scale=0.9, size=(2, 3))
    T = rng.normal(size=(k, 3))
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    return References(Q=np.zeros((k, 1)), S=S, SZ=np.tile(H_Z, (k, 1)), T=T,
                      perms=class_permutations("thiolate", "H"))


def images(query: np.ndarray, refs: References) -> tuple[np.ndarray, np.ndarray]:
    """Per permutation: the reference forces rotated by its own best rotation (n_perm, K, 3)
    and its goodness (n_perm, K)."""
    rotated, goodness = [], []
    for p in range(len(refs.perms)):
        R, g, _ = align_block(query[None], H_Z[None], refs.S, refs.SZ, refs.perms[p:p + 1],
                              metric=class_metric("H"))
        rotated.append(np.einsum("kab,kb->ka", R[0], refs.T))
        goodness.append(g[0])
    return np.array(rotated), np.array(goodness)


def blended(query: np.ndarray, refs: References) -> np.ndarray:
    R, _, matched = align_to_references("H", query[None], H_Z[None], refs)
    assert matched.all()
    return np.einsum("kab,kb->ka", R[0], refs.T)


def test_a_twofold_symmetric_neighbourhood_gets_reference_forces_along_its_axis():
    """Both permutations fit equally well; the reference forces carried into the query's frame
    are the mean of the two symmetry images: their components along the axis."""
    refs = random_h_references(6, seed=1)
    rotated, goodness = images(SYMMETRIC_H, refs)
    np.testing.assert_allclose(goodness[0], goodness[1], rtol=1e-10)
    assert np.linalg.norm(rotated[0, :, :2], axis=1).min() > 0.05  # one image is off-axis
    r = blended(SYMMETRIC_H, refs)
    np.testing.assert_allclose(r[:, :2], 0.0, atol=1e-8)
    np.testing.assert_allclose(r[:, 2], rotated[0, :, 2], atol=1e-10)


def test_orientations_are_continuous_across_a_permutation_tie():
    """Moving one H by ±1e-6 Å makes a different permutation the best for some references,
    and their best images differ by O(1); the blended orientations move by O(1e-6 / width)."""
    refs = random_h_references(6, seed=2)
    step = np.zeros_like(SYMMETRIC_H)
    step[1, 0] = 1e-6
    before, after = SYMMETRIC_H - step, SYMMETRIC_H + step
    rotated, _ = images(SYMMETRIC_H, refs)
    flips = np.argmin(images(before, refs)[1], axis=0) != np.argmin(images(after, refs)[1],
                                                                     axis=0)
    assert flips.any()
    assert np.linalg.norm(rotated[0] - rotated[1], axis=1)[flips].min() > 0.1
    assert np.abs(blended(after, refs) - blended(before, refs)).max() < 1e-2
