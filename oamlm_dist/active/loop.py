"""The active-learning loop: train → sample → uncertainty → check with fine calls → add → retrain.

One iteration:

1. train a bootstrap :class:`~oamlm_dist.active.ensemble.ForceEnsemble` on the training set
   (full frames, and chunk frames of which only the central atom's row is used);
2. sample candidate structures from each start structure: rattled copies or snapshots of
   ML-driven Langevin MD on the ensemble's mean forces;
3. predict the per-atom uncertainty δ_i of every candidate; the iteration's structure
   uncertainty is the largest δ_i;
4. select the most uncertain candidates (full structures) or atoms (nearsighted chunks cut
   around them, when ``chunk_cutoff`` is set) and run fine single points on them as parallel
   Dask futures; each result is stored as a ``fine`` segment as soon as it arrives;
5. add those whose force error (ensemble mean vs fine) exceeds ``tolerance``: a whole frame,
   or for a chunk the central atom only.

Stop rules, checked in this order: structure uncertainty below ``threshold``; no
improvement of the structure uncertainty over ``patience_improvement`` iterations; the
fine-call ``budget`` spent; ``patience_additions`` iterations in a row without additions;
``max_iterations`` iterations done.

The state (completed iterations, training frame ids, fine calls, history) is kept in the
store's ``active/<name>`` attrs and written once per iteration, after its fine results are
stored. Training and sampling are deterministic given the state, so a killed loop repeats
the unfinished iteration with the same candidates and reuses every fine result already
stored for it (found by the segments' ``active``/``iteration``/``job`` attrs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from oamlm_dist.active.chunks import DEFAULT_VACUUM, central_rows, cut_chunk
from oamlm_dist.active.ensemble import MIN_SUPPORT, EnsembleForceField, ForceEnsemble
from oamlm_dist.cluster import FINE_RESOURCE
from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.errors import InputError, OamlmError
from oamlm_dist.locks import writer_lock
from oamlm_dist.store import FrameBatch, Store, now_iso
from oamlm_dist.structures import rattle
from oamlm_dist.training import FitSettings, select_segments

THIOLATE_ELEMENTS = {"Au", "S", "C", "H"}
SAMPLERS = ("rattle", "md")
COLD = -1  # iteration number of the cold start's fine results


@dataclass(frozen=True)
class LearnSettings:
    """How the active-learning loop samples, selects and stops (stored with its state)."""

    members: int = 4
    references: int = 500  # K per class and member (capped at the rows available)
    tolerance: float = 0.3  # eV/Å: force error above which a checked item is added
    threshold: float = 0.05  # eV/Å: stop when the structure uncertainty falls below
    budget: int = 50  # fine calls in total
    max_iterations: int = 20
    per_iteration: int = 4  # fine calls per iteration (at most)
    patience_additions: int = 5  # iterations in a row without additions before stopping
    patience_improvement: int = 2  # iterations without a lower structure uncertainty
    sampler: str = "rattle"
    candidates: int = 8  # candidate structures per start structure and iteration
    rattle: float = 0.1  # Å, Gaussian displacement of the rattle sampler
    md_steps: int = 40  # ML-MD steps per start structure (snapshots evenly spaced)
    md_temperature: float = 500.0  # K
    md_timestep: float = 1.0  # fs
    md_max_uncertainty: float = 2.0  # eV/Å: an ML-MD run ends at a snapshot this uncertain
    chunk_cutoff: float | None = None  # Å; set: check atoms by nearsighted chunks
    vacuum: float = DEFAULT_VACUUM  # Å around each chunk
    seed: int = 0

    def validate(self) -> None:
        if self.members < 2:
            raise InputError(f"learn: --members must be >= 2, got {self.members}")
        if self.budget < 1 or self.per_iteration < 1 or self.max_iterations < 1:
            raise InputError("learn: --budget, --per-iteration and --max-iterations must be >= 1")
        if self.sampler not in SAMPLERS:
            raise InputError(f"learn: unknown sampler {self.sampler!r} ({', '.join(SAMPLERS)})")
        if self.tolerance < 0 or self.threshold < 0:
            raise InputError("learn: --tolerance and --threshold must be >= 0 eV/Å")
        if self.chunk_cutoff is not None and self.chunk_cutoff <= 0:
            raise InputError(f"learn: --chunk-cutoff must be > 0 Å, got {self.chunk_cutoff}")


@dataclass
class Job:
    """One fine check: a full candidate (``centre`` None) or a chunk around one atom."""

    key: int
    atoms: Atoms
    candidate: int
    atom: int | None  # atom of the candidate the chunk is centred on
    centre: int | None  # index of that atom in the chunk


def default_spec(structures: list[tuple[str, Atoms]], scheme: str | None = None,
                 soap: SoapSettings | None = None, extra_species: list[str] | None = None
                 ) -> DescriptorSpec:
    """Descriptor settings for the structures' elements and ``extra_species`` (e.g. those of
    the training frames); the thiolate scheme for Au–SCH3 systems, else the element one."""
    species = sorted({s for _, atoms in structures for s in atoms.get_chemical_symbols()}
                     | set(extra_species or []))
    if scheme is None:
        scheme = "thiolate" if set(species) <= THIOLATE_ELEMENTS and "S" in species else "element"
    soap = soap or SoapSettings()
    soap = SoapSettings(**{**asdict(soap), "species": tuple(species)})
    return DescriptorSpec(scheme, soap)


class ActiveLearner:
    """The loop's state machine over a store; :meth:`run` drives it to a stop rule."""

    def __init__(self, store: Store, name: str, structures: list[tuple[str, Atoms]],
                 calculator: str, params: dict | None = None,
                 settings: LearnSettings | None = None, spec: DescriptorSpec | None = None,
                 initial: str | None = None):
        if not structures:
            raise InputError("learn: give at least one start structure")
        self.store = store
        self.name = name
        self.structures = [(n, _plain(a)) for n, a in structures]
        self.calculator = calculator
        self.params = params or {}
        self.settings = settings or LearnSettings()
        self.settings.validate()
        # The store's elements too: initial training frames may hold more than the starts.
        self.spec = spec or default_spec(self.structures, extra_species=store.elements())
        self.group = store.group(f"active/{name}", create=True)
        self.state = dict(self.group.attrs.get("state") or {})
        if not self.state:
            self.state = {"iteration": 0, "fine_calls": 0, "training": self._initial(initial),
                          "history": [], "best_uncertainty": None, "stalled": 0,
                          "no_additions": 0, "stopped": None}
            self._commit()
        self.ensemble: ForceEnsemble | None = None
        self._frames_cache: dict[tuple[int, int], Atoms] = {}

    # ---- state --------------------------------------------------------------------------
    def _initial(self, selector: str | None) -> list[list]:
        """Training frames present before the loop: every frame of the selected segments."""
        ids = select_segments(self.store, selector)
        return [[s.id, f, -1] for s in self.store.segments()
                if s.id in ids and s.attrs.get("active") != self.name
                for f in range(s.n_frames)]

    def _commit(self) -> None:
        # One attrs document per write: a kill never leaves half an iteration recorded.
        self.group.update_attributes({"state": self.state, "settings": asdict(self.settings),
                                 "calculator": self.calculator, "spec": self.spec.to_dict(),
                                 "updated": now_iso()})

    def stop_reason(self) -> str | None:
        """The stop rule that holds for the recorded state, or None."""
        s, st = self.settings, self.state
        history = st["history"]
        last = history[-1] if history else None
        if last is not None and last["max_uncertainty"] is not None \
                and last.get("covered", True) and last["max_uncertainty"] < s.threshold:
            return f"structure uncertainty {last['max_uncertainty']:.3g} below {s.threshold:g} eV/Å"
        if st["stalled"] >= s.patience_improvement:
            return f"structure uncertainty not improved for {st['stalled']} iterations"
        if st["fine_calls"] >= s.budget:
            return f"fine-call budget of {s.budget} spent"
        if st["no_additions"] >= s.patience_additions:
            return f"no additions for {st['no_additions']} iterations"
        if st["iteration"] >= s.max_iterations:
            return f"iteration cap of {s.max_iterations} reached"
        return None

    # ---- training -----------------------------------------------------------------------
    def _frame(self, segment: int, frame: int) -> Atoms:
        key = (segment, frame)
        if key not in self._frames_cache:
            self._frames_cache[key] = self.store.segment(segment).read(frame, frame + 1)[0]
        return self._frames_cache[key]

    def train(self) -> ForceEnsemble:
        """The bootstrap ensemble of the current training set (seeded by the iteration)."""
        items = self.state["training"]
        if not items:
            raise InputError("learn: no training frames (ingest some, or let the loop start "
                             "cold from the structures)")
        frames = [self._frame(seg, f) for seg, f, _ in items]
        centres = [None if c < 0 else c for _, _, c in items]
        rows = central_rows(describe_frames(frames, self.spec), centres)
        fit = FitSettings(references=self.settings.references,
                          seed=self.settings.seed + 1000 * self.state["iteration"])
        self.ensemble = ForceEnsemble.train(rows, self.spec, fit, self.settings.members,
                                            seed=fit.seed)
        return self.ensemble

    # ---- sampling -----------------------------------------------------------------------
    def sample(self) -> list[Atoms]:
        """Candidate structures of this iteration (deterministic given the state)."""
        s, i = self.settings, self.state["iteration"]
        out = []
        for k, (_, start) in enumerate(self.structures):
            if s.sampler == "rattle":
                seeds = np.random.default_rng([s.seed, i, k]).integers(2**32, size=s.candidates)
                out += [rattle(start, s.rattle, seed=int(seed)) for seed in seeds]
            else:
                out += self._md(start, np.random.default_rng([s.seed, i, k]))
        return out

    def _md(self, start: Atoms, rng: np.random.Generator) -> list[Atoms]:
        """Snapshots of Langevin MD on the ensemble's mean forces."""
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import thermalize_momenta

        s = self.settings
        atoms = start.copy()
        atoms.calc = EnsembleForceField(self.ensemble)
        thermalize_momenta(atoms, temperature_K=s.md_temperature, rng=rng)
        dynamics = Langevin(atoms, s.md_timestep * units.fs, temperature_K=s.md_temperature,
                            friction=0.01 / units.fs, fixcm=False, rng=rng)
        every = max(1, s.md_steps // s.candidates)
        snapshots = []
        for _ in range(s.candidates):
            try:
                dynamics.run(every)
            except OamlmError:
                break  # the model cannot describe where MD went: keep what came before
            snapshots.append(_plain(atoms))
            # Past this point the ensemble is guessing: MD would only wander further off.
            if atoms.calc.results["uncertainty"].max() > s.md_max_uncertainty:
                break
        # MD that left the model's domain at once (e.g. a young model's huge forces) still
        # yields the start structure, the point it is least sure how to leave.
        return snapshots or [_plain(start)]

    def _described(self, candidates: list[Atoms]) -> tuple[list[Atoms], list[dict]]:
        """The candidates the ensemble can describe, with its predictions; a rattle that
        stretched a bond past the atom-class cut-offs is dropped, not fatal."""
        kept, predictions = [], []
        for candidate in candidates:
            try:
                predictions.append(self.ensemble.predict(candidate))
            except OamlmError:
                continue
            kept.append(candidate)
        return kept, predictions

    # ---- selection ----------------------------------------------------------------------
    def select(self, candidates: list[Atoms], uncertainty: list[np.ndarray], n: int
               ) -> list[Job]:
        """The ``n`` most uncertain candidates, or atoms (as chunks) with a chunk cutoff."""
        s = self.settings
        if s.chunk_cutoff is None:
            order = np.argsort([-u.max() for u in uncertainty], kind="stable")[:n]
            return [Job(k, candidates[c], int(c), None, None) for k, c in enumerate(order)]
        pairs = [(-float(u[a]), c, a) for c, u in enumerate(uncertainty) for a in range(len(u))]
        pairs.sort()
        jobs = []
        for _, c, a in pairs[:n]:
            chunk = cut_chunk(candidates[c], a, s.chunk_cutoff, s.vacuum)
            jobs.append(Job(len(jobs), chunk.atoms, c, a, chunk.centre))
        return jobs

    # ---- fine checks --------------------------------------------------------------------
    def _stored(self, iteration: int) -> dict[int, dict]:
        """Fine results of this loop's iteration already in the store, by job key."""
        out = {}
        for segment in self.store.segments(kind="fine"):
            attrs = segment.attrs
            if attrs.get("active") == self.name and attrs.get("iteration") == iteration \
                    and segment.n_frames:
                frame = segment.read(0, 1)[0]
                out[int(attrs["job"])] = {"segment": segment.id,
                                          "forces": frame.calc.results["forces"]}
        failures = f"active/{self.name}/failures"
        if failures in self.store.root:
            for _, group in self.store.group(failures).groups():
                if group.attrs.get("iteration") == iteration:
                    out[int(group.attrs["job"])] = {"error": group.attrs["reason"]}
        return out

    def check(self, client, jobs: list[Job], iteration: int) -> dict[int, dict]:
        """Fine single points of the jobs as Dask futures; each result is stored on arrival.

        Jobs whose result (or failure) is already stored for ``iteration`` are not rerun.
        """
        from distributed import as_completed

        from oamlm_dist.optimize.hybrid import fine_task

        results = self._stored(iteration)
        futures = {}
        for job in jobs:
            if job.key in results:
                continue
            future = client.submit(fine_task, job.atoms, self.calculator, self.params,
                                   resources={FINE_RESOURCE: 1}, pure=False,
                                   key=f"learn-{self.name}-it{iteration}-job{job.key}-"
                                       f"{time.time_ns()}")
            futures[future] = job
        for future in as_completed(list(futures)):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # e.g. KilledWorker
                result = {"error": f"{type(exc).__name__}: {exc}", "attempts": []}
            results[job.key] = self._record(job, result, iteration)
        return results

    def _record(self, job: Job, result: dict, iteration: int) -> dict:
        if "error" in result:
            group = self.store.group(f"active/{self.name}/failures", create=True)
            group.create_group(f"it{iteration}-job{job.key}", overwrite=True).update_attributes(
                {"iteration": iteration, "job": job.key, "reason": result["error"],
                 "attempts": result.get("attempts", []), "time": now_iso()})
            return {"error": result["error"]}
        frame = job.atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=result["energy"],
                                           forces=result["forces"])
        segment = self.store.new_segment("fine", {
            "name": f"{self.name}/it{iteration}/job{job.key}", "active": self.name,
            "iteration": iteration, "job": job.key, "candidate": job.candidate,
            "centre": -1 if job.centre is None else job.centre, "calculator": self.calculator,
            "settings": result.get("settings", {}), "attempts": result.get("attempts", [])})
        segment.append(FrameBatch.from_atoms([frame]))
        segment.mark_complete()
        return {"segment": segment.id, "forces": np.asarray(result["forces"])}

    # ---- one iteration ------------------------------------------------------------------
    def step(self, client) -> dict:
        """Run one iteration and record it; its history entry."""
        s, st = self.settings, self.state
        self.train()
        sampled = self.sample()
        candidates, predictions = self._described(sampled)
        uncertainty = [p["uncertainty"] for p in predictions]
        # No candidate means nothing was measured: never a reason to stop as converged.
        max_u = float(max(u.max() for u in uncertainty)) if uncertainty else None
        # Atoms of classes with too few training rows have a meaningless (zero) spread: they
        # are checked first, and the threshold and stall rules wait until they are covered.
        thin = [(0 <= p["support"]) & (p["support"] < MIN_SUPPORT) for p in predictions]
        covered = not any(t.any() for t in thin)
        entry = {"iteration": st["iteration"], "candidates": len(candidates),
                 "undescribed": len(sampled) - len(candidates),
                 "max_uncertainty": max_u, "covered": covered, "checked": 0, "additions": 0,
                 "failed": 0, "max_error": None}
        if covered and max_u is not None:
            best = st["best_uncertainty"]
            if best is None or max_u < best:
                st["best_uncertainty"], st["stalled"] = max_u, 0
            else:
                st["stalled"] += 1
        if candidates and (not covered or (max_u >= s.threshold
                                           and st["stalled"] < s.patience_improvement)):
            n = min(s.per_iteration, s.budget - st["fine_calls"])
            ranking = [u + np.where(t, 1e6, 0.0) for u, t in zip(uncertainty, thin, strict=True)]
            jobs = self.select(candidates, ranking, n)
            results = self.check(client, jobs, st["iteration"])
            errors, added = [], []
            for job in jobs:
                result = results[job.key]
                if "error" in result:
                    entry["failed"] += 1
                    continue
                error = _force_error(predictions[job.candidate]["forces"], result["forces"], job)
                errors.append(error)
                if error > s.tolerance:
                    added.append([result["segment"], 0, -1 if job.centre is None else job.centre])
            st["training"] = st["training"] + added
            st["fine_calls"] += len(jobs)
            entry.update(checked=len(jobs), additions=len(added),
                         max_error=max(errors) if errors else None)
            st["no_additions"] = 0 if added else st["no_additions"] + 1
        elif not candidates:
            st["no_additions"] += 1
        st["iteration"] += 1
        entry["fine_calls"] = st["fine_calls"]
        st["history"] = st["history"] + [entry]
        st["stopped"] = self.stop_reason()
        self._commit()
        return entry

    def cold_start(self, client) -> dict | None:
        """Without training frames: fine points of the start structures (with a chunk
        cutoff, chunks around a few atoms of every class); all become training data."""
        if self.state["training"]:
            return None
        s = self.settings
        jobs: list[Job] = []
        for k, (_, atoms) in enumerate(self.structures):
            if s.chunk_cutoff is None:
                jobs.append(Job(len(jobs), atoms, k, None, None))
                continue
            for a in self._cold_centres(atoms):
                chunk = cut_chunk(atoms, int(a), s.chunk_cutoff, s.vacuum)
                jobs.append(Job(len(jobs), chunk.atoms, k, int(a), chunk.centre))
        jobs = jobs[: s.budget]
        results = self.check(client, jobs, COLD)
        good = [j for j in jobs if "error" not in results[j.key]]
        if not good:
            raise OamlmError("learn: every fine calculation of the cold start failed (see "
                             f"active/{self.name}/failures in the store)")
        self.state["training"] = [[results[j.key]["segment"], 0,
                                   -1 if j.centre is None else j.centre] for j in good]
        self.state["fine_calls"] += len(jobs)
        entry = {"iteration": "cold", "candidates": len(jobs), "max_uncertainty": None,
                 "checked": len(jobs), "additions": len(good), "failed": len(jobs) - len(good),
                 "max_error": None, "fine_calls": self.state["fine_calls"]}
        self.state["history"] = self.state["history"] + [entry]
        self._commit()
        return entry

    def _cold_centres(self, atoms: Atoms) -> list[int]:
        """Chunk centres of a cold start: ``per_iteration`` atoms of every class (at least
        ``MIN_SUPPORT``), evenly spaced over the class's atoms."""
        n = max(self.settings.per_iteration, MIN_SUPPORT)
        centres = set()
        for fields in describe_frames([atoms], self.spec).values():
            members = fields["atom"]
            picks = np.unique(np.linspace(0, len(members) - 1, min(n, len(members))).astype(int))
            centres.update(int(members[p]) for p in picks)
        return sorted(centres)

    def run(self, client, on_iteration: Callable[[dict], None] | None = None) -> dict:
        """Iterate until a stop rule holds; the summary (also kept in the store)."""
        started = time.perf_counter()
        entry = self.cold_start(client)
        if entry is not None and on_iteration:
            on_iteration(entry)
        while (reason := self.stop_reason()) is None:
            entry = self.step(client)
            if on_iteration:
                on_iteration(entry)
        self.state["stopped"] = reason
        self._commit()
        self.train()  # the final ensemble includes the last additions
        models = self.ensemble.save(self.store, self.name, {"active": self.name})
        history = self.state["history"]
        return {"name": self.name, "stopped": reason, "iterations": self.state["iteration"],
                "fine_calls": self.state["fine_calls"],
                "training_frames": len(self.state["training"]),
                "additions": sum(h["additions"] for h in history),
                "max_uncertainty": next((h["max_uncertainty"] for h in reversed(history)
                                         if h["max_uncertainty"] is not None), None),
                "models": models, "wall_s": round(time.perf_counter() - started, 2)}


def _force_error(predicted: np.ndarray, fine: np.ndarray, job: Job) -> float:
    """Largest ‖f_ML − f_fine‖ over the structure, or at the chunk's central atom (the ML
    force there is the full structure's: the chunk is trusted for that atom only)."""
    fine = np.asarray(fine)
    if job.centre is None:
        return float(np.linalg.norm(predicted - fine, axis=1).max())
    return float(np.linalg.norm(predicted[job.atom] - fine[job.centre]))


def _plain(atoms: Atoms) -> Atoms:
    out = atoms.copy()
    out.calc = None
    out.set_constraint()
    return out


def learn(store_path, name: str, structures: list[tuple[str, Atoms]], client, calculator: str,
          params: dict | None = None, settings: LearnSettings | None = None,
          spec: DescriptorSpec | None = None, initial: str | None = None,
          on_iteration: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) the active-learning loop ``name`` on a store (created if missing).

    Parameters
    ----------
    store_path : str or path
        The store; fine results go into it as ``fine`` segments, the state into
        ``active/<name>``, the final ensemble into ``models/<name>-m<j>``.
    name : str
        The loop's name; rerunning with the same name resumes it.
    structures : list of (name, Atoms)
        Start structures of the sampler.
    client : distributed.Client
        Runs the fine single points (``resources={"dft": 1}``).
    calculator, params
        Fine calculator kind (``xtb``, ``gpaw``, ``emt``) and its settings.
    settings : LearnSettings, optional
    spec : DescriptorSpec, optional
        Descriptor settings (default: SOAP defaults, scheme from the elements).
    initial : str, optional
        Segment selector of the initial training frames (default: all frames in the store
        when the loop starts; none: a cold start from the structures).
    on_iteration : callable, optional
        Called with each iteration's history entry.

    Returns
    -------
    dict
        Summary: stop reason, iterations, fine calls, additions, last structure uncertainty.
    """
    settings = settings or LearnSettings()
    settings.validate()
    store = Store.create(store_path, exist_ok=True)
    # One loop per name at a time: two would interleave their iterations and ensembles.
    with writer_lock(store.path, f"active-{name}"):
        learner = ActiveLearner(store, name, structures, calculator, params, settings, spec,
                                initial)
        return learner.run(client, on_iteration)

