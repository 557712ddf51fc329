"""EMLM, OAMLM and the shared regression backbone: small, exact checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from oamlm_dist.models import (
    EMLM,
    OAMLM,
    NormalEquations,
    accept_references,
    angles_deg,
    factorize,
    fit_emlm,
    fit_huber_columns,
    fit_oamlm,
    input_distances,
    mean_angle_deg,
    median_angle_deg,
    predict_directions,
    sigma2_for_class,
    weighted_angle_deg,
)
from oamlm_dist.models.regression import _huber_scale


def huber_objective(X, y, coef, intercept, scale, epsilon, alpha, weights=None):
    """scikit-learn's HuberRegressor loss, written out independently."""
    w = np.ones(len(y)) if weights is None else weights
    z = np.abs(y - X @ coef - intercept) / scale
    H = np.where(z <= epsilon, z * z, 2 * epsilon * z - epsilon**2)
    return np.sum(w * (scale + scale * H)) + alpha * coef @ coef


def outlier_problem(rng, n=300, p=3, fraction=0.1):
    X = rng.normal(size=(n, p))
    coef = np.array([1.5, -2.0, 0.5])[:p]
    y = X @ coef + 0.7 + 0.05 * rng.normal(size=n)
    bad = rng.choice(n, int(fraction * n), replace=False)
    y[bad] += rng.uniform(20, 40, size=bad.size)  # one-sided, so least squares is biased
    return X, y, coef, 0.7


def random_unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- regression backbone ---------------------------------------------------------------


def test_input_distances_are_euclidean():
    rng = np.random.default_rng(0)
    X, Q = rng.uniform(size=(7, 4)), rng.uniform(size=(3, 4))
    expected = np.sqrt(((X[:, None, :] - Q[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(input_distances(X, Q), expected, rtol=1e-14)
    assert np.all(np.diag(input_distances(X, X)) == 0)
    # The matrix-product form: equal elsewhere, within a few sqrt(eps)·|x| of zero at x = q.
    np.testing.assert_allclose(input_distances(X, Q, fast=True), expected, rtol=1e-12)
    scale = 4 * np.sqrt(np.finfo(float).eps) * np.linalg.norm(X, axis=1)
    assert np.all(np.diag(input_distances(X, X, fast=True)) <= scale)


def test_normal_equations_merge_equals_full_accumulation():
    rng = np.random.default_rng(1)
    D, Y = rng.uniform(size=(40, 6)), rng.normal(size=(40, 2))
    full = NormalEquations.from_block(D, Y)
    halves = NormalEquations.from_block(D[:25], Y[:25]) + NormalEquations.from_block(D[25:], Y[25:])
    for name, value in full.to_arrays().items():
        np.testing.assert_allclose(halves.to_arrays()[name], value, rtol=1e-13, err_msg=name)
    summed = sum(NormalEquations.from_block(D[i : i + 10], Y[i : i + 10]) for i in range(0, 40, 10))
    np.testing.assert_allclose(summed.solve(1e-6), full.solve(1e-6), rtol=1e-10)
    assert summed.n_rows == 40 and summed.weight_sum == 40.0
    W = rng.normal(size=(6, 2))
    np.testing.assert_allclose(
        full.residual_sum_of_squares(W), ((Y - D @ W) ** 2).sum(axis=0), rtol=1e-10
    )


def test_normal_equations_round_trip_through_arrays():
    rng = np.random.default_rng(2)
    eq = NormalEquations.from_block(rng.uniform(size=(9, 4)), rng.normal(size=9))
    arrays = {name: np.array(value) for name, value in eq.to_arrays().items()}
    restored = NormalEquations.from_arrays(arrays)
    for name, value in eq.to_arrays().items():
        assert np.array_equal(restored.to_arrays()[name], value), name
    with pytest.raises(ValueError, match="cannot merge"):
        eq + NormalEquations(4, 2)


def test_weighted_rows_equal_duplicated_rows():
    rng = np.random.default_rng(3)
    D, Y = rng.uniform(size=(12, 5)), rng.normal(size=(12, 3))
    counts = rng.integers(0, 4, size=12)
    weighted = NormalEquations.from_block(D, Y, weights=counts.astype(float))
    duplicated = NormalEquations.from_block(np.repeat(D, counts, 0), np.repeat(Y, counts, 0))
    for name, value in duplicated.to_arrays().items():
        if name != "n_rows":  # rows seen differ; their weight does not
            np.testing.assert_allclose(weighted.to_arrays()[name], value, rtol=1e-12, atol=1e-12)
    doubled = NormalEquations.from_block(D, Y).scaled(2.0)
    np.testing.assert_allclose(
        doubled.A, NormalEquations.from_block(D, Y, np.full(12, 2.0)).A, rtol=1e-13
    )
    with pytest.raises(ValueError, match="non-negative"):
        NormalEquations.from_block(D, Y, weights=-np.ones(12))


def test_factorize_falls_back_to_minimum_norm_solution_when_singular():
    rng = np.random.default_rng(4)
    B = rng.normal(size=(5, 3))
    singular = B @ B.T  # rank 3
    rhs = singular @ rng.normal(size=5)
    x = factorize(singular)(rhs)
    np.testing.assert_allclose(x, np.linalg.lstsq(singular, rhs, rcond=None)[0], atol=1e-10)
    spd = singular + np.eye(5)
    np.testing.assert_allclose(factorize(spd)(rhs), np.linalg.solve(spd, rhs), rtol=1e-12)


# --- EMLM ----------------------------------------------------------------------------------


def test_emlm_interpolates_training_data_when_references_are_all_points():
    rng = np.random.default_rng(5)
    X = rng.uniform(size=(40, 6))
    Y = np.sin(3 * X).sum(axis=1)
    model = fit_emlm(X, Y, Q=X)
    assert model.predict(X).shape == (40,)
    assert np.max(np.abs(model.predict(X) - Y)) < 1e-6


@pytest.mark.parametrize("normalised", [False, True])
def test_emlm_ridge_equals_augmented_least_squares(normalised):
    rng = np.random.default_rng(6)
    X, Y = rng.uniform(size=(30, 4)), rng.normal(size=(30, 2))
    Q = X[:8]
    beta = 0.05  # large enough that the ridge visibly changes W
    model = fit_emlm(X, Y, Q, beta=beta, normalised_ridge=normalised)
    D, K, N = cdist(X, Q), 8, 30
    ridge = N * beta / K if normalised else beta / K
    augmented = np.vstack([D, np.sqrt(ridge) * np.eye(K)])
    expected = np.linalg.lstsq(augmented, np.vstack([Y, np.zeros((K, 2))]), rcond=None)[0]
    np.testing.assert_allclose(model.W, expected, rtol=1e-9, atol=1e-12)
    if normalised:  # eq. 7: the stationarity condition of eq. 6
        gradient = D.T @ (D @ model.W - Y) / N + beta / K * model.W
        assert np.max(np.abs(gradient)) < 1e-10
    unregularised = np.linalg.lstsq(D, Y, rcond=None)[0]
    assert not np.allclose(model.W, unregularised, rtol=1e-3)


def test_emlm_incremental_update_equals_refit_on_union():
    rng = np.random.default_rng(7)
    X = rng.uniform(size=(50, 3))
    Y = np.linalg.norm(X - 0.5, axis=1)
    Q = X[::5]
    old = NormalEquations.from_block(cdist(X[:30], Q), Y[:30])
    new = NormalEquations.from_block(cdist(X[30:], Q), Y[30:])
    for normalised in (False, True):
        updated = EMLM.from_normal_equations(Q, old + new, normalised_ridge=normalised)
        refit = fit_emlm(X, Y, Q, normalised_ridge=normalised)
        np.testing.assert_allclose(updated.W, refit.W, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(updated.predict(X), refit.predict(X), atol=1e-10)


def test_emlm_round_trip_is_bit_identical():
    rng = np.random.default_rng(8)
    X = rng.uniform(size=(20, 3))
    model = fit_emlm(X, rng.normal(size=(20, 2)), X[:6], normalised_ridge=True)
    arrays, settings = model.to_arrays()
    restored = EMLM.from_arrays({k: v.copy() for k, v in arrays.items()},
                                json.loads(json.dumps(settings)))
    assert restored.beta == model.beta and restored.normalised_ridge
    assert np.array_equal(restored.predict(X), model.predict(X))
    assert restored.predict(X).shape == (20, 2)
    with pytest.raises(ValueError, match="not 'emlm'"):
        EMLM.from_arrays(arrays, {**settings, "model": "oamlm"})


# --- Huber regression ------------------------------------------------------------------


def test_huber_scale_step_is_the_exact_minimiser():
    rng = np.random.default_rng(9)
    r = np.abs(rng.standard_t(df=2, size=(60, 3)))
    weights = rng.uniform(0.5, 2.0, size=60)
    for epsilon in (1.1, 1.35, 2.0):
        sigma = _huber_scale(r, weights, epsilon)
        for j in range(3):
            def loss(s, j=j, epsilon=epsilon):
                z = r[:, j] / s
                H = np.where(z <= epsilon, z * z, 2 * epsilon * z - epsilon**2)
                return np.sum(weights * (s + s * H))

            best = minimize_scalar(loss, bounds=(1e-6, 100), method="bounded",
                                   options={"xatol": 1e-12})
            assert sigma[j] == pytest.approx(best.x, rel=1e-6)
    assert _huber_scale(np.zeros((5, 1)), np.ones(5), 1.35)[0] > 0


def test_huber_downweights_outliers_that_bias_least_squares():
    X, y, coef, intercept = outlier_problem(np.random.default_rng(10))
    b, c = fit_huber_columns(X, y, epsilon=1.35)
    assert np.max(np.abs(b[:, 0] - coef)) < 0.05 and abs(c[0] - intercept) < 0.05
    ls = np.linalg.lstsq(np.hstack([X, np.ones((len(y), 1))]), y, rcond=None)[0]
    assert abs(ls[-1] - intercept) > 1.0  # least squares absorbs the outliers


def test_huber_satisfies_the_optimality_conditions_of_the_huber_regressor_loss():
    rng = np.random.default_rng(11)
    X, y, _, _ = outlier_problem(rng, n=120)
    weights = rng.uniform(0.5, 2.0, size=120)
    epsilon, alpha = 1.5, 0.3
    b, c, s = fit_huber_columns(X, y, epsilon, alpha=alpha, weights=weights, tol=1e-12,
                                max_iter=2000, return_scale=True)
    params = np.concatenate([b[:, 0], c, s])

    def loss(p):
        return huber_objective(X, y, p[:3], p[3], p[4], epsilon, alpha, weights)

    # Every coordinate direction is an ascent direction from the minimiser.
    base = loss(params)
    for k in range(5):
        for h in (1e-5, -1e-5):
            step = np.zeros(5)
            step[k] = h * max(1.0, abs(params[k]))
            assert loss(params + step) >= base - 1e-9
    # An independent general-purpose minimisation of the same loss lands on it.
    bounds = [(None, None)] * 4 + [(1e-8, None)]
    start = np.array([0, 0, 0, 0, 1.0])
    other = minimize(loss, start, method="L-BFGS-B", bounds=bounds,
                     options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-10})
    assert loss(params) <= other.fun + 1e-8
    np.testing.assert_allclose(params, other.x, atol=2e-4)


def test_huber_matches_scikit_learn_huber_regressor():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(12)
    X, y, _, _ = outlier_problem(rng, n=150)
    weights = rng.uniform(0.5, 2.0, size=150)
    for epsilon in (1.2, 1.35, 2.0):
        reference = sklearn.HuberRegressor(epsilon=epsilon, max_iter=5000, tol=1e-10)
        reference.fit(X, y, sample_weight=weights)
        b, c, s = fit_huber_columns(X, y, epsilon, weights=weights, tol=1e-12, max_iter=2000,
                                    return_scale=True)
        np.testing.assert_allclose(b[:, 0], reference.coef_, atol=1e-5)
        assert c[0] == pytest.approx(reference.intercept_, abs=1e-5)
        # scikit-learn's L-BFGS-B stops a little early; its loss is never lower than ours.
        assert s[0] == pytest.approx(reference.scale_, rel=1e-3)
        ours = huber_objective(X, y, b[:, 0], c[0], s[0], epsilon, 1e-4, weights)
        theirs = huber_objective(X, y, reference.coef_, reference.intercept_,
                                 reference.scale_, epsilon, 1e-4, weights)
        assert ours <= theirs + 1e-9


def test_huber_columns_are_independent_and_selectable():
    rng = np.random.default_rng(13)
    X = rng.uniform(size=(80, 5))
    D = cdist(X, X[:6])
    Y = np.column_stack([np.sin(4 * X[:, k]) for k in range(4)])
    Y[rng.uniform(size=Y.shape) < 0.1] += 5.0
    gram = NormalEquations.from_block(D, Y).augmented_gram()
    b_all, c_all = fit_huber_columns(D, Y, 1.2, gram=gram, tol=1e-10, max_iter=1000)
    b_two, c_two = fit_huber_columns(D, Y, 1.2, columns=[1, 3], tol=1e-10, max_iter=1000)
    np.testing.assert_allclose(b_two, b_all[:, [1, 3]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_two, c_all[[1, 3]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=">= 1"):
        fit_huber_columns(D, Y, 0.9)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        fit_huber_columns(D, Y, 1.2, max_iter=1)


# --- direction prediction --------------------------------------------------------------


def consistent_case(rng, K=30):
    """References whose rotated forces r_j and cosines d_c,j agree with one unit vector u."""
    u = random_unit(rng, 1)[0]
    r = random_unit(rng, K)
    return u, r, r @ u, np.zeros(K)


def test_exact_and_sqp_recover_a_consistent_direction():
    rng = np.random.default_rng(14)
    u, r, d_c, g = consistent_case(rng)
    np.testing.assert_allclose(predict_directions(d_c, r, g, method="exact"), u, atol=1e-12)
    np.testing.assert_allclose(predict_directions(d_c, r, g, method="sqp"), u, atol=1e-6)
    tilted = Rotation.from_rotvec(np.radians(30) * random_unit(rng, 1)[0]).apply(u)
    np.testing.assert_allclose(
        predict_directions(d_c, r, g, method="sqp", v0=3 * tilted), u, atol=1e-6
    )
    analytic = predict_directions(d_c, r, g, method="analytic")
    assert np.linalg.norm(analytic) == pytest.approx(1.0)
    assert 0 < angles_deg(analytic, u)[0] < 20  # eq. 17 is exact only for isotropic r_j


def test_direction_methods_batch_like_single_queries():
    rng = np.random.default_rng(15)
    n, K = 4, 12
    d_c, g = rng.uniform(-1, 1, size=(n, K)), rng.uniform(0, 1, size=(n, K))
    r = random_unit(rng, n * K).reshape(n, K, 3)
    for method in ("analytic", "exact", "sqp"):
        batch = predict_directions(d_c, r, g, method=method)
        single = np.stack([predict_directions(d_c[i], r[i], g[i], method=method)
                           for i in range(n)])
        np.testing.assert_allclose(batch, single, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0)
    with pytest.raises(ValueError, match="unknown direction method"):
        predict_directions(d_c, r, g, method="newton")


def test_reference_weights_survive_uniformly_poor_alignments():
    rng = np.random.default_rng(16)
    u, r, d_c, _ = consistent_case(rng)
    g = np.full(len(d_c), 40.0)  # exp(-(g/σ2)²) underflows without the shift
    np.testing.assert_allclose(predict_directions(d_c, r, g, method="exact"), u, atol=1e-12)


def test_acceptance_rule_drops_references_aligned_worse_than_predicted():
    rng = np.random.default_rng(17)
    u, r, d_c, g = consistent_case(rng, K=20)
    d_c[0] = -d_c[0] + 0.5  # an inconsistent reference ...
    g[0] = 0.3
    d_g = np.full(20, 0.1)  # ... aligned worse than predicted: g_0 - d_g,0 > 0
    mask = accept_references(g, d_g)
    assert not mask[0] and mask[1:].all()
    accepted = predict_directions(d_c, r, g, method="exact", d_g=d_g, sigma2=10.0)
    np.testing.assert_allclose(accepted, u, atol=1e-12)
    assert angles_deg(predict_directions(d_c, r, g, method="exact", sigma2=10.0), u)[0] > 0.1
    assert accept_references(np.ones(3), np.zeros(3)).all()  # none accepted: use all


def test_sigma2_defaults_per_class():
    assert sigma2_for_class("Au_unit") == 0.25
    assert sigma2_for_class("S") == 0.5


# --- OAMLM ---------------------------------------------------------------------------------


def test_least_squares_b_reproduces_training_cosines_when_references_are_all_points():
    rng = np.random.default_rng(18)
    X = rng.uniform(size=(30, 5))
    D_c, D_g = rng.uniform(-1, 1, size=(30, 30)), rng.uniform(0, 1, size=(30, 30))
    T = random_unit(rng, 30)
    model = fit_oamlm(X, X, T, D_c, D_g)
    d_c, d_g = model.predict_outputs(X)
    assert np.max(np.abs(d_c - D_c)) < 1e-6 and np.max(np.abs(d_g - D_g)) < 1e-6
    assert model.c_c is None and model.robust_epsilon is None


def test_oamlm_predicts_training_directions_through_the_alignment():
    rng = np.random.default_rng(19)
    N = 30
    X = rng.uniform(size=(N, 5))
    Y = random_unit(rng, N)
    rot = Rotation.random(N, random_state=rng).as_matrix()
    T = Y  # every training point is a reference
    R = np.einsum("iab,jcb->ijac", rot, rot)  # R_ij = rot_i rot_jᵀ
    r = np.einsum("ijab,jb->ija", R, T)
    D_c = np.einsum("ia,ija->ij", Y, r)
    model = fit_oamlm(X, X, T, D_c, method="exact")
    np.testing.assert_allclose(model.rotate_references(R), r, atol=1e-12)
    pred = model.predict(X, R, np.zeros((N, N)))
    assert np.max(angles_deg(pred, Y)) < 1e-4


def test_oamlm_from_normal_equations_equals_in_memory_fit():
    rng = np.random.default_rng(20)
    X = rng.uniform(size=(50, 4))
    Q, T = X[:10], random_unit(rng, 10)
    D_c, D_g = rng.uniform(-1, 1, size=(50, 10)), rng.uniform(0, 1, size=(50, 10))
    D_in = cdist(X, Q)
    parts = [NormalEquations.from_block(D_in[s], np.hstack([D_c, D_g])[s])
             for s in (slice(0, 20), slice(20, 50))]
    merged = OAMLM.from_normal_equations(Q, T, parts[0] + parts[1], accept=True)
    direct = fit_oamlm(X, Q, T, D_c, D_g, accept=True)
    np.testing.assert_allclose(merged.B_c, direct.B_c, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(merged.B_g, direct.B_g, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="acceptance rule needs B_g"):
        fit_oamlm(X, Q, T, D_c, accept=True)


def test_robust_oamlm_round_trip_is_bit_identical():
    rng = np.random.default_rng(21)
    X = rng.uniform(size=(40, 4))
    Q, T = X[:8], random_unit(rng, 8)
    D_c, D_g = rng.uniform(-1, 1, size=(40, 8)), rng.uniform(0, 1, size=(40, 8))
    S = rng.normal(size=(8, 5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fit must converge
        model = fit_oamlm(X, Q, T, D_c, D_g, S=S, robust_epsilon=1.2, accept=True,
                          method="sqp", sigma2=0.25)
    assert model.c_c.shape == (8,) and model.c_g.shape == (8,)
    arrays, settings = model.to_arrays()
    restored = OAMLM.from_arrays({k: v.copy() for k, v in arrays.items()},
                                 json.loads(json.dumps(settings)))
    for name in ("Q", "T", "B_c", "B_g", "c_c", "c_g", "S"):
        assert np.array_equal(getattr(restored, name), getattr(model, name)), name
    R = Rotation.random(5 * 8, random_state=rng).as_matrix().reshape(5, 8, 3, 3)
    g = rng.uniform(0, 0.3, size=(5, 8))
    assert np.array_equal(restored.predict(X[:5], R, g), model.predict(X[:5], R, g))
    assert (restored.robust_epsilon, restored.method, restored.sigma2) == (1.2, "sqp", 0.25)
    least_squares = fit_oamlm(X, Q, T, D_c)
    assert "B_g" not in least_squares.to_arrays()[0]


# --- angle metrics -------------------------------------------------------------------------


def test_weighted_angle_against_hand_computed_values():
    pred = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    ref = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    # angles 0°, 90°, 90°; weights |F|² = 4, 1, 9
    np.testing.assert_allclose(angles_deg(pred, ref), [0.0, 90.0, 90.0], atol=1e-12)
    assert weighted_angle_deg(pred, ref) == pytest.approx((0 * 4 + 90 * 1 + 90 * 9) / 14)
    assert weighted_angle_deg(pred, ref, weights=np.ones(3)) == pytest.approx(60.0)
    assert mean_angle_deg(pred, ref) == pytest.approx(60.0)
    assert median_angle_deg(pred, ref) == pytest.approx(90.0)
    assert angles_deg([1.0, 0, 0], [-1.0, 1e-9, 0])[0] == pytest.approx(180.0)
    assert np.isnan(angles_deg([0.0, 0, 0], [1.0, 0, 0])[0])


def test_weighted_angle_scores_an_empty_prediction_as_90_degrees():
    pred = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    # angles 0°, (none: 90°), (zero reference, weight 0); weights 1, 4, 0
    assert weighted_angle_deg(pred, ref) == pytest.approx(90 * 4 / 5)
