"""Molecular dynamics sampling on Dask: one task per (structure, run), frames streamed to the store.

Each run owns one ``md`` segment. A task commits its frames every ``flush_every`` frames,
so a killed worker loses only the frames since the last commit; the retried task resumes
from the last committed positions and momenta. The random streams (initial velocities,
Langevin noise) are seeded from (seed, run, frame), so a resumed run follows the same
trajectory as an undisturbed one.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from oamlm_dist.calculators import calculator_settings, fine_single_point, series_frame
from oamlm_dist.cluster import FINE_RESOURCE
from oamlm_dist.errors import InputError, SCFConvergenceError
from oamlm_dist.locks import writer_lock
from oamlm_dist.store import FrameBatch, Store, settings_key, task_token
from oamlm_dist.structures import parse_structures


class RetryingCalculator(Calculator):
    """ASE calculator over :func:`fine_single_point`: every step gets the SCF retry with
    safer settings, so one hard geometry does not end a long MD run, and, given a ``series``
    name, starts from the previous step's converged state (:mod:`oamlm_dist.warm`)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, name: str, params: dict, series: str | None = None):
        super().__init__()
        self.name_ = name
        self.params = params
        self.series = series

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = fine_single_point(self.atoms, self.name_, self.params, series=self.series)
        self.results = {"energy": result.energy, "forces": result.forces}


@dataclass(frozen=True)
class MDSettings:
    temperature: float = 500.0  # K, initial Maxwell-Boltzmann and Langevin bath
    steps: int = 1000
    timestep: float = 1.5  # fs
    thermostat: str = "verlet"  # "verlet" (NVE) or "langevin" (NVT)
    friction: float = 0.01  # 1/fs, Langevin only
    interval: int = 1  # store every n-th step
    seed: int = 0
    flush_every: int = 25  # frames per commit

    def validate(self) -> None:
        if self.steps < 1 or self.interval < 1 or self.steps % self.interval:
            raise InputError(f"MD: steps ({self.steps}) must be a positive multiple of "
                             f"interval ({self.interval})")
        if self.temperature < 0 or self.timestep <= 0:
            raise InputError("MD: temperature must be >= 0 K and timestep > 0 fs")
        if self.thermostat not in ("verlet", "langevin"):
            raise InputError(f"MD: unknown thermostat {self.thermostat!r} (verlet, langevin)")

    @property
    def n_frames(self) -> int:
        return self.steps // self.interval


def _dynamics(atoms: Atoms, settings: MDSettings, run: int, frame: int):
    if settings.thermostat == "verlet":
        return VelocityVerlet(atoms, timestep=settings.timestep * units.fs)
    rng = np.random.default_rng([settings.seed, run, frame])
    return Langevin(atoms, timestep=settings.timestep * units.fs,
                    temperature_K=settings.temperature,
                    friction=settings.friction / units.fs, rng=rng)


def run_md(store_path: str, segment_id: int, atoms: Atoms, calculator: str, params: dict,
           settings: MDSettings, run: int) -> dict:
    """Run (or resume) one MD run into its segment. Executed as a Dask task."""
    store = Store.open(store_path, mode="a")
    segment = store.segment(segment_id)
    done = segment.n_frames
    if done >= settings.n_frames:
        segment.mark_complete()
        return {"segment": segment_id, "frames": done, "resumed_from": done, "wall_s": 0.0}
    start = time.perf_counter()
    if done:
        atoms = segment.read(done - 1, done)[0]
        atoms.calc = None
    else:
        atoms = series_frame(atoms, calculator, params)
        rng = np.random.default_rng([settings.seed, run])
        thermalize_momenta(atoms, temperature_K=settings.temperature, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
    atoms.calc = RetryingCalculator(calculator, params, f"md:{store_path}:{segment_id}")
    frame = done
    stopped = None
    while frame < settings.n_frames and stopped is None:
        # A fresh integrator per commit block: its random stream restarts where a
        # resumed task would restart it.
        dynamics = _dynamics(atoms, settings, run, frame)
        block = []
        for _ in range(min(settings.flush_every, settings.n_frames - frame)):
            try:
                dynamics.run(settings.interval)
            except SCFConvergenceError as exc:
                # The run is deterministic: a rerun would reach the same geometry and fail
                # again, so it ends here with the frames it has.
                stopped = f"SCF failed after frame {frame}: {exc}"
                break
            snapshot = atoms.copy()
            snapshot.calc = None
            snapshot.arrays["forces"] = atoms.get_forces()
            snapshot.info["energy"] = atoms.get_potential_energy()
            block.append(snapshot)
            frame += 1
        if block:
            segment.append(FrameBatch.from_atoms(block, with_momenta=True))
    segment.mark_complete(stopped)
    return {"segment": segment_id, "frames": frame, "resumed_from": done,
            "wall_s": time.perf_counter() - start, "stopped": stopped}


def plan_runs(store: Store, structures: list[tuple[str, Atoms]], calculator: str, params: dict,
              settings: MDSettings, runs: int) -> list[dict]:
    """One entry per (structure, run), reusing the segment of an earlier identical request."""
    calc_settings = calculator_settings(calculator, **params)
    plans = []
    for name, atoms in structures:
        for run in range(runs):
            request = {"structure": name, "numbers": atoms.numbers.tolist(),
                       "positions": np.round(atoms.positions, 6).tolist(),
                       "calculator": calc_settings, "md": asdict(settings), "run": run}
            run_key = settings_key(request)
            segment = store.find_segment(run_key=run_key)
            if segment is None:
                segment = store.new_segment(
                    "md", {"run_key": run_key, "name": f"{name}/run{run}",
                           "run": {k: v for k, v in request.items()
                                   if k not in ("numbers", "positions")}},
                    with_momenta=True)
            plans.append({"name": name, "run": run, "atoms": atoms, "segment": segment})
    return plans


def sample(store_path: str | os.PathLike, structures: str | list[tuple[str, Atoms]],
           calculator: str, params: dict, settings: MDSettings, runs: int, client) -> dict:
    """Run ``runs`` MD runs per structure as Dask tasks; returns a summary dict."""
    settings.validate()
    if runs < 1:
        raise InputError("sample: --runs must be >= 1")
    if isinstance(structures, str):
        structures = parse_structures(structures)
    store = Store.create(store_path, exist_ok=True)
    # One sampler at a time: a run (and its segment) must have a single writer.
    with writer_lock(store.path, "sample"):
        return _run_plans(store, plan_runs(store, structures, calculator, params, settings,
                                           runs), calculator, params, settings, client)


def _run_plans(store: Store, plans: list[dict], calculator: str, params: dict,
               settings: MDSettings, client) -> dict:
    from distributed import as_completed, progress

    futures = []
    for plan in plans:
        if plan["segment"].attrs.get("complete"):
            continue
        futures.append(client.submit(
            run_md, str(store.path), plan["segment"].id, plan["atoms"], calculator, params,
            settings, plan["run"], key=f"md-{plan['name']}-run{plan['run']}-"
            f"{plan['segment'].attrs['run_key']}-{task_token(store.path)}",
            resources={FINE_RESOURCE: 1}, retries=2, pure=False))
    if futures:
        progress(futures)
    results = [future.result() for future in as_completed(futures)]
    reopened = Store.open(store.path)  # the tasks' commits, as written by the workers
    segments = [reopened.segment(p["segment"].id) for p in plans]
    return {"runs": len(plans), "ran": len(results),
            "frames": sum(segment.n_frames for segment in segments),
            "segments": [p["segment"].id for p in plans], "store": str(store.path),
            "stopped": {segment.attrs["name"]: segment.attrs["stopped"]
                        for segment in segments if "stopped" in segment.attrs}}
