"""The Gaussian process over inverse interatomic distances behind the hybrid's fine steps."""

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.optimize import BFGS, GPMin
from scipy.spatial.transform import Rotation
from test_finesteps import ase_visits, own_visits, start_structure

from oamlm_dist.optimize import distance_gp
from oamlm_dist.optimize.distance_gp import InverseDistanceGP


def fitted(points, free) -> InverseDistanceGP:
    """A process fitted to (positions, energy, forces) points, over the ``free`` atoms."""
    gp = InverseDistanceGP(points[0][0], free)
    for positions, energy, forces in points:
        gp.update(positions[free].ravel(), energy, forces[free].ravel())
    return gp


def emt_points(atoms, n: int, seed: int, free) -> list:
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        probe = atoms.copy()
        probe.positions[free] += rng.normal(0, 0.04, (int(free.sum()), 3))
        probe.calc = EMT()
        points.append((probe.get_positions(), probe.get_potential_energy(), probe.get_forces()))
    return points


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=3)
    return atoms


def test_posterior_mean_reproduces_the_fine_points_with_fixed_atoms():
    atoms = ethanol()
    free = np.ones(len(atoms), bool)
    free[:2] = False
    points = emt_points(atoms, 5, seed=1, free=free)
    gp = fitted(points, free)
    for positions, energy, forces in points:
        mean, gradient = gp.mean(positions[free].ravel())
        assert abs(mean - energy) < 1e-3
        np.testing.assert_allclose(-gradient, forces[free].ravel(), atol=1e-3)


def test_mean_gradient_is_the_derivative_of_the_mean():
    atoms = ethanol()
    free = np.ones(len(atoms), bool)
    free[3] = False
    gp = fitted(emt_points(atoms, 4, seed=2, free=free), free)
    x = atoms.positions[free].ravel() + np.random.default_rng(3).normal(0, 0.05, 3 * free.sum())
    _, gradient = gp.mean(x)
    h = 1e-5
    numeric = [(gp.mean(x + h * e)[0] - gp.mean(x - h * e)[0]) / (2 * h)
               for e in np.eye(len(x))]
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)


def test_mean_is_invariant_under_a_rigid_motion():
    """Trained on rotated and shifted copies of the points, the process gives the same energy
    at the moved query and the gradient turned by the same rotation."""
    atoms = ethanol()
    free = np.ones(len(atoms), bool)
    points = emt_points(atoms, 4, seed=4, free=free)
    rotation = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    shift = np.array([0.7, -1.3, 2.1])
    moved = [(p @ rotation.T + shift, e, f @ rotation.T) for p, e, f in points]
    query = points[0][0] + np.random.default_rng(5).normal(0, 0.05, points[0][0].shape)
    energy, gradient = fitted(points, free).mean(query.ravel())
    energy_moved, gradient_moved = fitted(moved, free).mean((query @ rotation.T + shift).ravel())
    assert abs(energy - energy_moved) < 1e-9
    np.testing.assert_allclose(gradient_moved, (gradient.reshape(-1, 3) @ rotation.T).ravel(),
                               atol=1e-9)


def test_steps_find_the_lennard_jones_dimer_minimum():
    """The analytic minimum 2^(1/6) σ, from 1.5 σ, in a few fine calls."""
    dimer = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 1.5]])
    dimer.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=10.0)
    visited, _ = own_visits(InverseDistanceGP(dimer.get_positions(), np.ones(2, bool)),
                            dimer, 12, from_best=True, fmax=1e-3, calculator=dimer.calc)
    assert len(visited) < 12
    assert abs(np.linalg.norm(visited[-1][1] - visited[-1][0]) - 2 ** (1 / 6)) < 1e-3


def test_fewer_fine_calls_than_gpmin_on_rattled_gold_clusters():
    """Over five rattled Au13 icosahedra on EMT: fewer calls than ASE's GPMin (Cartesian
    kernel) in all, each to the minimum BFGS finds (within 5 meV)."""
    ours, theirs = 0, 0
    for seed in range(1, 6):
        start = start_structure(0.2, seed=seed)
        visited, energies = own_visits(InverseDistanceGP(start.get_positions(),
                                                         np.ones(len(start), bool)),
                                       start, 60, from_best=True, fmax=0.05)
        gpmin, _ = ase_visits(GPMin, start, 60)
        _, bfgs_energies = ase_visits(BFGS, start, 100)
        assert len(visited) < 60 and abs(energies[-1] - bfgs_energies[-1]) < 5e-3
        ours, theirs = ours + len(visited), theirs + len(gpmin)
    assert ours < theirs


def calls_to_converge(start, limit: int = 60) -> tuple[int, float]:
    """Fine calls of the process's steps (from the best point) until fmax <= 0.05, and the
    final energy."""
    visited, energies = own_visits(InverseDistanceGP(start.get_positions(),
                                                     np.ones(len(start), bool)),
                                   start, limit, from_best=True, fmax=0.05)
    assert len(visited) < limit, f"no convergence in {limit} calls"
    return len(visited), energies[-1]


def test_prior_cap_lengthens_the_steps_from_a_start_far_above(monkeypatch):
    """A cluster stretched to 125 % starts about 30 eV above its minimum: with GPMin's prior
    rule (the highest energy seen) the steps stay short; capped, the same minimum takes fewer
    calls."""
    start = start_structure(0.1, seed=1)
    centre = start.get_center_of_mass()
    start.positions = centre + 1.25 * (start.positions - centre)
    cap = distance_gp.PRIOR_CAP
    capped_calls, capped_energy = calls_to_converge(start)
    monkeypatch.setattr(distance_gp, "PRIOR_CAP", np.inf)
    uncapped_calls, uncapped_energy = calls_to_converge(start)
    probe = start.copy()
    probe.calc = EMT()
    assert probe.get_potential_energy() - uncapped_energy > 2 * cap
    assert capped_calls < uncapped_calls
    assert abs(capped_energy - uncapped_energy) < 1e-3
