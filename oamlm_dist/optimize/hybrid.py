"""Hybrid optimisation: ML-BFGS rounds ("coarse") between fine single points ("fine").

Each round submits a fine single point at the current geometry as a Dask future
(``resources={"dft": 1}``). While it runs, the client relaxes the structure further with
the ML force field (speculation). When the fine result arrives it is stored, the online model
learns from it, and the next geometry is chosen. ML rounds relax on a surrogate: the model
plus the fine-minus-model residual at the latest fine point, which by default also varies
linearly, fitted to the earlier fine points, while that fit predicts each new fine point
better than a constant residual (:mod:`.residual`). After a fine result:

* converged: the *fine* forces are below ``fmax`` (never the ML ones);
* the fine energy rose after an ML round: the round is rejected and a new one starts from
  the best point on half the trust radius (its fine forces are known: no fine call is
  needed); at the smallest radius, a fine step from the best point instead;
* the ML prediction at this geometry agreed with the fine forces (weighted-average angle
  below ``agree_deg`` and norms within ``agree_norm``): continue from the speculative ML
  relaxation, inside a trust radius set by how well the surrogate predicted the fine energy
  change (:mod:`.trust`); if this point is worse than the best one (a fine step went
  uphill), a new round from the best point instead;
* after ``floor_failures`` uphill rounds at the smallest radius, the model's force changes
  are too coarse near this minimum: the run is finished on fine steps;
* otherwise: a step on the fine results alone (:mod:`.finesteps`): by default from the best
  point to the minimum of a Gaussian process over inverse interatomic distances fitted to
  every fine energy and force so far, until two of them went uphill; or BFGS's. In the worst
  case this is the plain fine optimiser plus the rejected rounds.

With a bootstrap ensemble (``ensemble=``), an ML round also ends where the ensemble's
uncertainty of the surrogate exceeds ``max_uncertainty`` (:mod:`.uncertainty`): the
uncertainty, not only the trust radius, decides when the next fine calculation is due.

:class:`HybridOptimizer` is a state machine (``start`` → ``tell`` → ...), so one client can
keep the fine futures of many structures in flight (:func:`optimize_many`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from oamlm_dist.active.ensemble import ForceEnsemble
from oamlm_dist.calculators import fine_single_point, series_frame
from oamlm_dist.cluster import FINE_RESOURCE
from oamlm_dist.errors import FineCalculationError, InputError, OamlmError
from oamlm_dist.forcefield import ForceField
from oamlm_dist.models.oamlm import weighted_angle_deg
from oamlm_dist.optimize.finesteps import FineSteps
from oamlm_dist.optimize.mlbfgs import free_atoms, ml_bfgs
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.optimize.residual import ResidualJacobian
from oamlm_dist.optimize.trust import TrustRegion, reduction_ratio, surrogate_energy_change
from oamlm_dist.optimize.uncertainty import UncertaintyGate
from oamlm_dist.store import FrameBatch, Store, now_iso


@dataclass
class HybridSettings:
    fmax: float = 0.05  # eV/Å, on fine forces
    max_fine: int = 100
    ml_steps: int = 60  # ML-BFGS steps per round
    ml_maxstep: float = 0.1  # Å, ML-BFGS step cap
    ml_fmax_factor: float = 0.5  # ML rounds relax to this fraction of fmax
    trust: float = 0.25  # Å, initial trust radius of an ML round
    trust_min: float = 0.05
    trust_max: float = 0.8
    fine_maxstep: float = 0.2  # Å, step cap of fine BFGS steps (ASE's default)
    # degrees: the weighted-average angle between ML and fine force changes up to which the
    # next step is an ML round. The fine steps alone beat models whose force changes are
    # 20° off; a 10° stand-in keeps its gain at 10 (benchmarks/hybrid_model_accuracy.py,
    # hybrid_starts.py)
    agree_deg: float = 10.0
    agree_norm: float = 0.5  # relative error of the largest force
    energy_tolerance: float = 1e-3  # eV, a rise beyond this rejects an ML round
    new_weight: float = 5.0  # weight of fine rows in the online model update
    reset_every: int | None = None
    # relax on the current surrogate while a fine calculation runs (see speculate)
    speculate: bool = True
    # s; a fine calculation running longer is cancelled and counts as failed (None: no limit)
    fine_timeout_s: float | None = None
    # eV/Å; with an ensemble, an ML round halts where δ of the force changes exceeds this
    # (the best of 0.1, 0.3 and 1 on xTB rings, benchmarks/hybrid_uncertainty.py)
    max_uncertainty: float = 1.0
    # the fine-minus-ML residual linear around the latest fine point, fitted to the previous
    # fine points (see residual.py), instead of constant, while the fit predicts new points
    linear_residual: bool = True
    # fine steps from a Gaussian process of all fine points (see finesteps.py), not BFGS
    fine_gp: bool = True
    # after this many uphill ML rounds at the smallest trust radius the model's force
    # changes are too coarse for the end-game: the run is finished on fine steps (None: never)
    floor_failures: int | None = 2

    def __post_init__(self):
        # Settings without a command-line option, checked here; those with one (fine_timeout_s,
        # max_uncertainty, agree_deg) by out_of_range, so the error can name the option.
        if not 0 < self.trust_min <= self.trust <= self.trust_max:
            raise InputError(f"HybridSettings: the trust radii must satisfy 0 < trust_min <= "
                             f"trust <= trust_max, got {self.trust_min}, {self.trust}, "
                             f"{self.trust_max} Å")
        if self.floor_failures is not None and self.floor_failures < 1:
            raise InputError(f"HybridSettings: floor_failures must be None or >= 1, got "
                             f"{self.floor_failures}")

    def out_of_range(self) -> tuple[str, float, str] | None:
        """The first setting that must be > 0 but is not: (field, value, unit), or None."""
        for name, unit in (("fine_timeout_s", "s"), ("max_uncertainty", "eV/Å"),
                           ("agree_deg", "°")):
            value = getattr(self, name)
            if value is not None and not value > 0:
                return name, value, unit
        return None


class CorrectedForceField(ForceField):
    """ML forces plus the fine-minus-ML residual at a fine point (``anchor``), so the
    surrogate reproduces the fine forces there exactly and the model supplies only how forces
    change nearby; with a ``jacobian``, the residual also changes linearly away from the
    anchor (:mod:`.residual`)."""

    def __init__(self, model, correction: np.ndarray, anchor: np.ndarray,
                 jacobian: ResidualJacobian | None = None):
        super().__init__(model)
        self.correction = correction
        self.anchor = anchor
        self.jacobian = jacobian

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = self.results["forces"] + self.correction
        if self.jacobian is not None:
            forces += self.jacobian.forces(self.atoms.get_positions() - self.anchor)
        self.results["forces"] = forces


@dataclass
class FinePoint:
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    fmax: float
    kind: str  # how the geometry was reached: start, ml, fine-step, backtrack


@dataclass
class HybridState:
    fine_calls: int = 0
    ml_calls: int = 0
    ensemble_calls: int = 0  # predictions of the uncertainty ensemble (M members each)
    fine_wall_s: float = 0.0  # summed wall time of the fine calculations on the workers
    rounds: list[dict] = field(default_factory=list)
    converged: bool = False
    stopped: str | None = None


def _check_describes(ensemble: ForceEnsemble, atoms: Atoms, name: str) -> None:
    """Fail at once if the ensemble cannot describe the structure (elements, scheme):
    otherwise every ML round would halt unseen and the run silently become fine-only. Atoms
    of classes it never saw are allowed: the gate counts them as uncertain."""
    probe = atoms.copy()
    probe.set_constraint()
    probe.calc = None
    try:
        ensemble.predict(probe, unknown_classes=True)
    except OamlmError as exc:
        raise InputError(f"{name}: the uncertainty ensemble cannot describe this structure: "
                         f"{exc}") from exc


def fine_task(atoms: Atoms, calculator: str, params: dict, series: str | None = None) -> dict:
    """Dask task: one fine single point (retried once with safer settings on SCF failure).

    A calculation that still fails is returned as ``{"error", "attempts"}``, not raised:
    repeating it unchanged would fail again. Lost workers are handled by the scheduler,
    which reruns the task elsewhere. ``series`` (the optimisation's name) lets a worker that
    ran the previous fine call of the same optimisation start from its converged state.
    """
    try:
        result = fine_single_point(atoms, calculator, params, series=series)
    except FineCalculationError as exc:
        return {"error": str(exc), "attempts": exc.attempts}
    return {"energy": result.energy, "forces": result.forces, "attempts": result.attempts,
            "settings": result.settings, "wall_s": result.wall_s}


class HybridOptimizer:
    """Relax one structure with ML-BFGS rounds between fine single points."""

    def __init__(self, atoms: Atoms, model: OnlineModel, calculator: str = "xtb",
                 params: dict | None = None, settings: HybridSettings | None = None,
                 name: str = "structure", store: Store | None = None,
                 trajectory: str | None = None, ensemble: ForceEnsemble | None = None):
        self.atoms = series_frame(atoms, calculator, params)  # e.g. GPAW's box, once
        self.model = model
        self.ensemble = ensemble
        if ensemble is not None:
            _check_describes(ensemble, self.atoms, name)
        self.calculator = calculator
        self.params = params or {}
        self.settings = settings or HybridSettings()
        self.name = name
        self.store = store
        self.trajectory_path = trajectory
        self.free = free_atoms(self.atoms)
        self.state = HybridState()
        self.fine_steps = FineSteps(self.atoms.get_positions(), self.free,
                                    self.settings.fine_maxstep, gp=self.settings.fine_gp)
        self.residual = (ResidualJacobian(self.free) if self.settings.linear_residual
                         else None)
        self.trust = TrustRegion(self.settings.trust, self.settings.trust_min,
                                 self.settings.trust_max)
        # the latest ML round: the fine point it started from, the surrogate's energy change
        self.ml_anchor: FinePoint | None = None
        self.ml_predicted = 0.0
        self.uphill_at_floor = 0  # ML rounds that went uphill at the smallest radius
        self.points: list[FinePoint] = []
        self.pending_kind = "start"
        # ML relaxation done while the current fine future runs (see speculate)
        self.speculative: np.ndarray | None = None
        self.speculative_steps = 0
        self.last_gate: dict = {}  # the latest round's uncertainty gate: halted, max δ
        self.frames: list[Atoms] = []  # trajectory: fine points and ML steps
        self.started = time.perf_counter()

    # ---- the state machine ----------------------------------------------------------------
    def start(self) -> np.ndarray:
        return self.atoms.get_positions()

    def speculate(self) -> None:
        """Work done while the fine future at the current geometry runs: an ML round from it
        on the surrogate as it stands (corrected at the previous fine point). If the fine
        result then lets the model continue, the real round (corrected here) starts from
        this geometry: the two surrogates differ by a small, slowly varying force shift (the
        residual's change between the two fine points), so their minima are close and most
        ML steps were taken while the fine calculation ran."""
        self.speculative = None
        if (not self.settings.speculate or not self.points or not self.model.ready
                or self._retired()):
            return
        x = self.atoms.get_positions()
        surrogate = self._surrogate(self.points[-1])
        if surrogate is None:
            return
        # The trust radius the next round will have if this ML point is accepted.
        trust = self.trust.grown() if self.pending_kind == "ml" else self.trust.radius
        target, steps, _ = self._relax(x, surrogate, x, trust, "ml-speculative")
        self.speculative = target
        self.speculative_steps = steps

    def tell(self, result: dict) -> np.ndarray | None:
        """Digest the fine result at the current geometry; the next geometry, or None."""
        s = self.settings
        x = self.atoms.get_positions()
        forces = np.where(self.free[:, None], result["forces"], 0.0)
        fmax = float(np.linalg.norm(forces, axis=1).max(initial=0.0))
        point = FinePoint(x, float(result["energy"]), forces, fmax, self.pending_kind)
        agreement = self._agreement(point)
        self.state.fine_calls += 1
        self.state.fine_wall_s += float(result.get("wall_s", 0.0))
        self.points.append(point)
        self._record_fine(point, result)
        self.state.rounds.append({"fine_call": self.state.fine_calls, "kind": point.kind,
                                  "energy": point.energy, "fmax": fmax, **agreement,
                                  "trust": self.trust.radius})
        if fmax <= s.fmax:
            self.state.converged = True
            return None
        if self.state.fine_calls >= s.max_fine:
            self.state.stopped = f"fine-call budget of {s.max_fine} reached"
            return None
        self.fine_steps.update(x[self.free].ravel(), point.energy, forces[self.free].ravel())
        try:
            self.model.add([self._fine_frame(point)], weight=s.new_weight)
        except OamlmError as exc:
            # e.g. a step broke a bond the atom-class scheme relies on: keep optimising on
            # fine forces, without learning from this geometry.
            self.state.rounds[-1]["not_learned"] = str(exc)
        self._update_residual()
        best = min(self.points, key=lambda p: p.energy)
        uphill = point.energy > best.energy + s.energy_tolerance
        if uphill and point.kind in ("fine-step", "backtrack"):
            self.fine_steps.went_uphill()
        if point.kind == "ml":
            anchor = self.ml_anchor
            rho = reduction_ratio(point.energy - anchor.energy, self.ml_predicted)
            self.state.rounds[-1]["rho"] = rho
            if uphill:
                return self._retry_or_backtrack(best)
            step = np.linalg.norm(point.positions - anchor.positions, axis=1).max()
            self.trust.update(rho, float(step))
        if agreement["agree"] and self.model.ready and not self._retired():
            # Rounds start from the best point, as trust-region steps do: a fine step that
            # went uphill is learnt from, not continued from.
            if uphill:
                self.speculative = None  # it was relaxed from the uphill point
            target = self._ml_move(best if uphill else point)
            if target is not None:
                return target
        return self._fine_step(best if self.fine_steps.from_best else point, "fine-step")

    # ---- pieces ---------------------------------------------------------------------------
    def _retired(self) -> bool:
        """No more ML rounds: too many went uphill at the smallest radius."""
        limit = self.settings.floor_failures
        return limit is not None and self.uphill_at_floor >= limit

    def _retry_or_backtrack(self, best: FinePoint) -> np.ndarray:
        """After an ML round that went uphill: a new round from the best point on half the
        radius, or, when the radius was already the smallest, a fine step from it."""
        at_floor = self.trust.at_floor
        self.uphill_at_floor += at_floor
        self.trust.shrink()
        if not at_floor:
            self.speculative = None  # it was relaxed from the rejected point
            target = self._ml_move(best)
            if target is not None:
                return target
        return self._fine_step(best, "backtrack")

    def _ml_move(self, point: FinePoint) -> np.ndarray | None:
        """Go to the end of an ML round from ``point`` (None: the round did not move)."""
        target = self._ml_round(point)
        if np.abs(target - point.positions).max() <= 1e-6:
            return None
        self.pending_kind = "ml"
        self.atoms.set_positions(target, apply_constraint=False)
        return target

    def _fine_step(self, point: FinePoint, kind: str) -> np.ndarray:
        x = point.positions.copy()
        dx = self.fine_steps.step(point.positions[self.free].ravel(),
                                  point.forces[self.free].ravel())
        x[self.free] += dx.reshape(-1, 3)
        self.pending_kind = kind
        self.speculative = None
        self.atoms.set_positions(x, apply_constraint=False)
        return x

    def _ml_round(self, point: FinePoint) -> np.ndarray:
        """ML-BFGS from a fine point on the corrected surrogate, inside the trust radius;
        started from the speculative geometry when there is one."""
        surrogate = self._surrogate(point)
        if surrogate is None:
            return point.positions
        start = point.positions if self.speculative is None else self.speculative
        target, steps, end_forces = self._relax(start, surrogate, point.positions,
                                                self.trust.radius, "ml")
        if end_forces is not None:
            self.ml_anchor = point
            self.ml_predicted = surrogate_energy_change(
                point.forces[self.free], end_forces[self.free],
                (target - point.positions)[self.free])
        self.state.rounds[-1].update({"ml_steps": steps,
                                      "speculative_steps": self.speculative_steps
                                      if self.speculative is not None else 0,
                                      **self.last_gate})
        self.speculative = None
        return target

    def _correction(self, point: FinePoint) -> np.ndarray | None:
        """Fine minus ML forces at a fine point (None: the model cannot predict there)."""
        raw = self._ml_forces_at(point.positions)
        return None if raw is None else point.forces - raw

    def _surrogate(self, point: FinePoint) -> CorrectedForceField | None:
        """The force field an ML round relaxes on, anchored at a fine point."""
        correction = self._correction(point)
        if correction is None:
            return None
        return CorrectedForceField(self.model.model, correction, point.positions,
                                   self._jacobian())

    def _jacobian(self) -> ResidualJacobian | None:
        """The linear residual, while it predicts the fine points better than a constant."""
        return self.residual if self.residual is not None and self.residual.predictive else None

    def _update_residual(self) -> None:
        """Fit the linear residual to the step between the last two fine points, with the
        model as it is now (it has just learnt the newer point)."""
        if self.residual is None or len(self.points) < 2:
            return
        before, now = self.points[-2], self.points[-1]
        r_before, r_now = self._correction(before), self._correction(now)
        if r_before is not None and r_now is not None:
            self.residual.update(now.positions - before.positions, r_now - r_before)
        self.state.rounds[-1]["linear_residual"] = self.residual.predictive

    def _relax(self, start: np.ndarray, surrogate: CorrectedForceField, centre: np.ndarray,
               trust: float, kind: str) -> tuple[np.ndarray, int, np.ndarray | None]:
        """ML-BFGS on the surrogate from ``start``, within ``trust`` around the
        fine point ``centre`` (and, with an ensemble, while its uncertainty of the force
        changes from ``centre`` stays below the limit); the geometry reached (kept in the
        trajectory as ``kind``), the steps taken and the surrogate forces there (None: the
        model could not describe the structure).

        A speculative round is gated from the geometry whose fine result is pending: the
        real round after it is corrected there.
        """
        s = self.settings
        work = self.atoms.copy()
        work.set_constraint(self.atoms.constraints)
        work.set_positions(start, apply_constraint=False)
        work.calc = surrogate
        self.last_gate = {}
        gate = None if self.ensemble is None else UncertaintyGate(
            self.ensemble, work, centre, self.free, s.max_uncertainty)
        try:
            if gate is not None and not np.array_equal(start, centre) and gate(work):
                # The speculative geometry (reached on the previous surrogate) is already
                # beyond the limit from this fine point: relax afresh from the fine point.
                work.set_positions(centre, apply_constraint=False)
                self.speculative_steps = 0
            result = ml_bfgs(work, fmax=s.fmax * s.ml_fmax_factor, steps=s.ml_steps,
                             maxstep=s.ml_maxstep, reset_every=s.reset_every,
                             max_displacement=trust, centre=centre, halt=gate)
        except OamlmError:
            return centre, 0, None  # the model cannot describe this structure: no ML move
        finally:
            self.state.ensemble_calls += 0 if gate is None else gate.calls
        self.state.ml_calls += result["force_calls"]
        if gate is not None:
            self.last_gate = {"halted": result["halted"], "uncertainty": gate.largest}
        forces = work.get_forces()
        snapshot = work.copy()
        snapshot.calc = SinglePointCalculator(snapshot, forces=forces)
        snapshot.info.update({"kind": kind, "fine_call": self.state.fine_calls,
                              "ml_steps": result["steps"]})
        self.frames.append(snapshot)
        return work.get_positions(), result["steps"], forces

    def _ml_forces_at(self, x: np.ndarray) -> np.ndarray | None:
        if not self.model.ready:
            return None
        probe = self.atoms.copy()
        probe.set_positions(x, apply_constraint=False)
        try:
            forces = self.model.predict(probe)["forces"]
        except OamlmError:
            return None
        self.state.ml_calls += 1
        return forces

    def _agreement(self, point: FinePoint) -> dict:
        """Does the model (before learning this point) predict the fine forces here?

        With a previous fine point the test is on force *changes*, which is what the corrected
        surrogate relies on; at the first point, on the forces themselves.
        """
        ml = self._ml_forces_at(point.positions)
        if ml is None:
            return {"agree": False, "angle_deg": None, "norm_error": None}
        fine = point.forces
        if self.points:
            previous = self.points[-1]
            before = self._ml_forces_at(previous.positions)
            if before is None:
                return {"agree": False, "angle_deg": None, "norm_error": None}
            ml, fine = ml - before, fine - previous.forces
            jacobian = self._jacobian()
            if jacobian is not None:
                ml = ml + jacobian.forces(point.positions - previous.positions)
        ml, fine = ml[self.free], fine[self.free]
        angle = float(weighted_angle_deg(ml, fine))
        fine_max = np.linalg.norm(fine, axis=1).max(initial=0.0)
        ml_max = np.linalg.norm(ml, axis=1).max(initial=0.0)
        norm_error = float(abs(ml_max - fine_max) / max(fine_max, 1e-9))
        agree = angle <= self.settings.agree_deg and norm_error <= self.settings.agree_norm
        return {"agree": bool(agree), "angle_deg": angle, "norm_error": norm_error}

    def _fine_frame(self, point: FinePoint) -> Atoms:
        frame = self.atoms.copy()
        frame.set_constraint()
        frame.set_positions(point.positions, apply_constraint=False)
        frame.calc = SinglePointCalculator(frame, energy=point.energy, forces=point.forces)
        frame.info.update({"kind": "fine", "fine_call": self.state.fine_calls,
                           "reached_by": point.kind})
        return frame

    def _record_fine(self, point: FinePoint, result: dict) -> None:
        frame = self._fine_frame(point)
        frame.calc.results["forces"] = result["forces"]  # store unconstrained forces
        self.frames.append(frame)
        if self.store is not None:
            segment = self.store.new_segment("fine", {
                "name": f"{self.name}/fine{self.state.fine_calls}",
                "optimisation": self.name, "fine_call": self.state.fine_calls,
                "reached_by": point.kind, "calculator": self.calculator,
                "settings": result.get("settings", {}), "attempts": result.get("attempts", [])})
            segment.append(FrameBatch.from_atoms([frame]))
            segment.mark_complete()

    def fail(self, reason: str, attempts: list | None = None) -> None:
        """A fine calculation failed for good: stop, and record why in the store."""
        self.state.stopped = f"fine calculation {self.state.fine_calls + 1} failed: {reason}"
        if self.store is not None:
            failures = self.store.group("failures", create=True)
            record = failures.create_group(f"{self.name}-fine{self.state.fine_calls + 1}",
                                           overwrite=True)
            record.update_attributes({"optimisation": self.name, "reason": reason,
                                 "attempts": attempts or [], "time": now_iso()})

    def summary(self) -> dict:
        best = min(self.points, key=lambda p: p.energy) if self.points else None
        last = self.points[-1] if self.points else None
        final = last if self.state.converged else best
        if self.trajectory_path:
            self.write_trajectory(self.trajectory_path)
        return {"name": self.name, "converged": self.state.converged,
                "fine_calls": self.state.fine_calls, "ml_calls": self.state.ml_calls,
                "ensemble_calls": self.state.ensemble_calls,
                "energy": None if final is None else final.energy,
                "fmax": None if final is None else final.fmax,
                "wall_s": round(time.perf_counter() - self.started, 2),
                "fine_wall_s": round(self.state.fine_wall_s, 2),
                "trajectory": self.trajectory_path, "stopped": self.state.stopped}

    def final_atoms(self) -> Atoms:
        best = self.points[-1] if self.state.converged else min(self.points,
                                                                key=lambda p: p.energy)
        atoms = self.atoms.copy()
        atoms.set_positions(best.positions, apply_constraint=False)
        atoms.calc = SinglePointCalculator(atoms, energy=best.energy, forces=best.forces)
        return atoms

    def write_trajectory(self, path: str) -> None:
        from ase.io import write

        write(path, self.frames, format="traj")


def _submit(client, optimizer: HybridOptimizer, positions: np.ndarray):
    atoms = optimizer.atoms.copy()
    atoms.set_constraint()
    atoms.set_positions(positions, apply_constraint=False)
    key = f"fine-{optimizer.name}-call{optimizer.state.fine_calls + 1}-{time.time_ns()}"
    return client.submit(fine_task, atoms, optimizer.calculator, optimizer.params,
                         optimizer.name, resources={FINE_RESOURCE: 1}, key=key, pure=False)


def optimize_many(optimizers: list[HybridOptimizer], client, on_round=None) -> list[dict]:
    """Drive several hybrid optimisations, keeping all their fine futures in flight.

    A fine future still running ``settings.fine_timeout_s`` seconds after its submission is
    cancelled and handled like a failed calculation (reason "timed out after N s"). A task
    already executing cannot be interrupted: it keeps its worker slot until it returns.
    """
    from distributed import wait

    in_flight: dict = {}  # future key -> (future, optimizer, deadline or None), in order

    def submit(optimizer: HybridOptimizer, positions: np.ndarray) -> None:
        future = _submit(client, optimizer, positions)
        timeout = optimizer.settings.fine_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        in_flight[future.key] = (future, optimizer, deadline)

    for optimizer in optimizers:
        submit(optimizer, optimizer.start())
    for optimizer in optimizers:
        optimizer.speculate()
    while in_flight:
        deadlines = [d for _, _, d in in_flight.values() if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        try:
            finished = wait([f for f, _, _ in in_flight.values()], timeout=timeout,
                            return_when="FIRST_COMPLETED").done
        except TimeoutError:
            finished = set()
        now = time.monotonic()
        for key, (future, optimizer, deadline) in list(in_flight.items()):
            if future not in finished:
                if deadline is not None and now >= deadline:
                    del in_flight[key]
                    future.cancel()
                    limit = optimizer.settings.fine_timeout_s
                    optimizer.fail(f"timed out after {limit:g} s",
                                   [{"outcome": "timed_out", "timeout_s": limit}])
                continue
            del in_flight[key]
            try:
                result = future.result()
            except Exception as exc:  # e.g. KilledWorker: the task lost its workers repeatedly
                optimizer.fail(f"{type(exc).__name__}: {exc}")
                continue
            if "error" in result:
                optimizer.fail(result["error"], result["attempts"])
                continue
            following = optimizer.tell(result)
            if on_round:
                on_round(optimizer)
            if following is not None:
                submit(optimizer, following)
                optimizer.speculate()
    return [optimizer.summary() for optimizer in optimizers]

