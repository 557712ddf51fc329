"""The trust region of the hybrid's ML rounds against analytic cases."""

import numpy as np
import pytest

from oamlm_dist.optimize.trust import GROWTH, TrustRegion, reduction_ratio, surrogate_energy_change


def test_surrogate_energy_change_is_exact_for_a_quadratic():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 12))
    a, b = m @ m.T + np.eye(12), rng.normal(size=12)

    def energy(x):
        return 0.5 * x @ a @ x - b @ x

    def forces(x):
        return b - a @ x

    x0, x1 = rng.normal(size=12), rng.normal(size=12)
    change = surrogate_energy_change(forces(x0).reshape(4, 3), forces(x1).reshape(4, 3),
                                     (x1 - x0).reshape(4, 3))
    assert change == pytest.approx(energy(x1) - energy(x0), rel=1e-12)


def test_ratio_of_a_surrogate_that_predicted_no_decrease_is_zero():
    assert reduction_ratio(-0.5, -1.0) == 0.5
    assert reduction_ratio(-0.5, 0.0) == 0.0


def test_radius_shrinks_on_a_poor_prediction_and_grows_only_at_the_boundary():
    region = TrustRegion(radius=0.4, minimum=0.05, maximum=0.5)
    region.update(rho=0.9, step=0.2)  # good, but the round stopped well inside: unchanged
    assert region.radius == 0.4
    region.update(rho=0.5, step=0.4)  # fair: unchanged
    assert region.radius == 0.4
    region.update(rho=0.9, step=0.4)  # good and at the boundary: grows, capped
    assert region.radius == min(0.5, 0.4 * GROWTH)
    for _ in range(6):
        region.update(rho=-1.0, step=0.01)  # uphill: halves, down to the floor
    assert region.radius == 0.05 and region.at_floor
