"""BFGS on ML forces with the options of the primary source (seed 000, sec. III D).

* ``maxstep``: 0.1 Å for rings, 0.05 Å for the stretched-staple and MD-snapshot cases;
* ``reset_every``: return the Hessian approximation to its initial value every n steps
  (noise in ML forces accumulates in the BFGS update);
* ``groups``: alternate between atom groups, e.g. ``[(outer, 24), (core, 12)]``: 24 steps
  on the outer layer with the core fixed (``FixAtoms``), then 12 on the core, and so on;
* ``max_displacement``: a trust radius; no atom ends further than this from its start;
* ``halt``: a test of the geometry after each step (e.g. "the model's uncertainty is too
  high here") that ends the relaxation at that step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from oamlm_dist.forcefield import ForcesOnly


def free_atoms(atoms: Atoms) -> np.ndarray:
    """Boolean mask of atoms not fixed by a ``FixAtoms`` constraint."""
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = False
    return free


def ml_bfgs(atoms: Atoms, fmax: float = 0.05, steps: int = 200, maxstep: float = 0.1,
            reset_every: int | None = None,
            groups: Sequence[tuple[Sequence[int], int]] | None = None,
            max_displacement: float | None = None, centre: np.ndarray | None = None,
            halt: Callable[[Atoms], bool] | None = None, trajectory=None) -> dict:
    """Relax ``atoms`` in place with the forces of its calculator (e.g. a ForceField).

    Stops when the forces on the caller's free atoms are below ``fmax``, after ``steps``
    steps, or when an atom reaches ``max_displacement`` from ``centre`` (default: its start;
    it is put back on that radius), or when ``halt(atoms)`` is true after a step. Returns
    ``{"steps", "converged", "fmax", "force_calls", "trust_limited", "halted"}``.
    """
    base_constraints = list(atoms.constraints)
    start = atoms.get_positions() if centre is None else np.asarray(centre)
    free = free_atoms(atoms)
    schedule = list(groups) if groups else [(np.flatnonzero(free), steps)]
    taken, calls, since_reset = 0, 0, 0
    limited = converged = halted = False
    try:
        while taken < steps and not (limited or converged or halted):
            progressed = False
            for indices, n_steps in schedule:
                members = np.zeros(len(atoms), dtype=bool)
                members[np.asarray(indices, dtype=int)] = True
                atoms.set_constraint([*base_constraints, FixAtoms(mask=~(members & free))])
                # A new constraint set starts a new Hessian, as a reset does.
                optimizer = BFGS(ForcesOnly(atoms), maxstep=maxstep, logfile=None,
                                 trajectory=trajectory)
                since_reset = 0
                for _ in optimizer.irun(fmax=fmax, steps=min(n_steps, steps - taken)):
                    calls += 1
                    if optimizer.nsteps == 0:
                        continue
                    taken += 1
                    since_reset += 1
                    progressed = True
                    if max_displacement is not None and _beyond(atoms, start, max_displacement):
                        limited = True
                    # also at the trust radius: the geometry the caller gets was tested
                    if halt is not None and halt(atoms):
                        halted = True
                    if limited or halted:
                        break
                    if reset_every and since_reset >= reset_every:
                        optimizer.initialize()
                        since_reset = 0
                if limited or halted or taken >= steps:
                    break
            atoms.set_constraint(base_constraints)
            converged = _fmax(atoms, free) <= fmax
            if not progressed:
                break
    finally:
        atoms.set_constraint(base_constraints)
    return {"steps": taken, "converged": bool(converged), "force_calls": calls,
            "fmax": _fmax(atoms, free), "trust_limited": limited, "halted": halted}


def _fmax(atoms: Atoms, free: np.ndarray) -> float:
    forces = atoms.get_forces()[free]
    return float(np.linalg.norm(forces, axis=1).max(initial=0.0))


def _beyond(atoms: Atoms, start: np.ndarray, radius: float) -> bool:
    """Put atoms back inside the trust radius; True if any had left it."""
    displacement = atoms.get_positions() - start
    largest = np.linalg.norm(displacement, axis=1).max(initial=0.0)
    if largest <= radius:
        return False
    atoms.set_positions(start + displacement * (radius / largest), apply_constraint=False)
    return True
