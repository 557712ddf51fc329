"""The linear fine-minus-ML residual of the hybrid surrogate (Powell-symmetric-Broyden)."""

import numpy as np

from oamlm_dist.optimize.residual import ResidualJacobian


def symmetric(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T


def test_each_update_meets_the_secant_condition_and_stays_symmetric():
    free = np.array([True, False, True, True])
    jacobian = ResidualJacobian(free)
    rng = np.random.default_rng(0)
    for _ in range(4):
        step, change = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
        jacobian.update(step, change)
        np.testing.assert_allclose(jacobian.forces(step)[free], change[free], atol=1e-10)
        np.testing.assert_allclose(jacobian.matrix, jacobian.matrix.T, atol=1e-12)
        # A fixed atom neither moves the residual nor receives a force from it.
        assert np.all(jacobian.forces(step)[~free] == 0.0)
        moved = step.copy()
        moved[1] += 5.0
        np.testing.assert_allclose(jacobian.forces(moved), jacobian.forces(step))


def test_orthogonal_steps_recover_a_linear_residual_exactly():
    """For r(x) = A x with A symmetric, PSB updates along n orthogonal directions give B = A
    (each update keeps the earlier secant conditions because B and A are symmetric)."""
    n_atoms = 3
    target = symmetric(3 * n_atoms, seed=1)
    jacobian = ResidualJacobian(np.ones(n_atoms, dtype=bool))
    directions, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(9, 9)))
    for s in 0.05 * directions.T:
        jacobian.update(s.reshape(-1, 3), (target @ s).reshape(-1, 3))
    np.testing.assert_allclose(jacobian.matrix, target, atol=1e-9)


def test_a_step_too_short_to_measure_changes_nothing():
    jacobian = ResidualJacobian(np.ones(2, dtype=bool))
    jacobian.update(np.full((2, 3), 1e-9), np.ones((2, 3)))
    assert jacobian.updates == 0 and not jacobian.matrix.any()


def test_predictive_only_after_predicting_a_new_step_better_than_a_constant():
    """For a linear residual r(x) = A x, B learnt along s1 predicts a step s2 that overlaps
    s1; for a residual whose change along s2 contradicts the secant (a far-off, anharmonic
    first step), B predicts worse than no change at all."""
    target = symmetric(6, seed=3)
    s1 = np.random.default_rng(4).normal(size=6) * 0.1
    s2 = s1 + np.random.default_rng(5).normal(size=6) * 0.01

    def learnt_along_s1() -> ResidualJacobian:
        jacobian = ResidualJacobian(np.ones(2, dtype=bool))
        jacobian.update(s1.reshape(2, 3), (target @ s1).reshape(2, 3))
        # B = 0 predicted no change: no better than the constant residual.
        assert not jacobian.predictive
        return jacobian

    consistent = learnt_along_s1()
    consistent.update(s2.reshape(2, 3), (target @ s2).reshape(2, 3))
    assert consistent.predictive
    contradicted = learnt_along_s1()
    contradicted.update(s2.reshape(2, 3), (-target @ s2).reshape(2, 3))
    assert not contradicted.predictive
