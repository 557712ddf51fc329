"""The hybrid's steps on fine results alone reproduce the ASE optimisers they follow."""

import numpy as np
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.optimize import BFGS

from oamlm_dist.optimize import finesteps
from oamlm_dist.optimize.distance_gp import InverseDistanceGP
from oamlm_dist.optimize.finesteps import FineBFGS, FineSteps
from oamlm_dist.structures import rattle


class RecordingEMT(EMT):
    """EMT that keeps every geometry it evaluates, with its energy."""

    def __init__(self):
        super().__init__()
        self.visited = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.visited.append((self.atoms.get_positions().copy(), self.results["energy"]))


def start_structure(amplitude: float, seed: int):
    atoms = Icosahedron("Au", 2)
    atoms.center()
    return rattle(atoms, amplitude, seed=seed)


def ase_visits(optimizer_class, start, steps: int) -> tuple[list[np.ndarray], list[float]]:
    """The geometries an ASE optimiser evaluates, and their energies."""
    atoms = start.copy()
    atoms.calc = RecordingEMT()
    optimizer_class(atoms, logfile=None).run(fmax=0.05, steps=steps)
    return [x for x, _ in atoms.calc.visited], [e for _, e in atoms.calc.visited]


def own_visits(fine_steps, start, n_calls: int, from_best: bool, fmax: float | None = None,
               calculator=None) -> tuple[list[np.ndarray], list[float]]:
    """Evaluate (with EMT unless ``calculator``), update, step from the latest or the best
    point, as the hybrid does, for ``n_calls`` calls or until the largest force is at most
    ``fmax``: the geometries evaluated, and their energies."""
    probe = start.copy()
    probe.calc = calculator or EMT()
    points, visited, energies = [], [], []
    for _ in range(n_calls):
        x, f = probe.get_positions().ravel(), probe.get_forces().ravel()
        energy = probe.get_potential_energy()
        visited.append(probe.get_positions().copy())
        energies.append(energy)
        if fmax is not None and np.linalg.norm(f.reshape(-1, 3), axis=1).max() <= fmax:
            break
        points.append((energy, x, f))
        fine_steps.update(x, energy, f)
        _, x, f = min(points, key=lambda p: p[0]) if from_best else points[-1]
        probe.set_positions((x + fine_steps.step(x, f)).reshape(-1, 3))
    return visited, energies


def test_fine_bfgs_takes_the_steps_of_ase_bfgs():
    start = start_structure(0.15, seed=3)
    reference, _ = ase_visits(BFGS, start, steps=6)
    mine, _ = own_visits(FineBFGS(3 * 13, maxstep=0.2), start, len(reference),
                         from_best=False)
    np.testing.assert_allclose(np.array(mine), np.array(reference), atol=1e-10)


def test_fine_steps_switch_to_bfgs_when_the_process_is_full(monkeypatch):
    """With room for 4 points, the first 4 steps are the process's from the best point; later
    ones are BFGS's from the latest point, with a Hessian updated by every point."""
    monkeypatch.setattr(finesteps, "GP_MAX_ROWS", 4 * (3 * 13 + 1))
    start = start_structure(0.2, seed=1)
    free = np.ones(13, bool)
    steps = FineSteps(start.get_positions(), free, maxstep=0.2)
    shadow = FineBFGS(3 * 13, maxstep=0.2)
    reference, _ = own_visits(InverseDistanceGP(start.get_positions(), free), start, 4,
                              from_best=True)
    probe = start.copy()
    probe.calc = EMT()
    points = []
    for call in range(8):
        x, f = probe.get_positions().ravel(), probe.get_forces().ravel()
        energy = probe.get_potential_energy()
        points.append((energy, x, f))
        if call < 4:
            np.testing.assert_allclose(x, reference[call].ravel(), atol=1e-7)
        steps.update(x, energy, f)
        shadow.update(x, energy, f)
        assert steps.from_best is (call < 4)
        if steps.from_best:
            _, x, f = min(points, key=lambda p: p[0])
        else:
            np.testing.assert_allclose(steps.step(x, f), shadow.step(x, f), atol=1e-12)
        probe.set_positions((x + steps.step(x, f)).reshape(-1, 3))
