"""Particle swarm optimisation (seed 004, eq. 14-16) with a serialisable state.

Each particle starts uniformly inside the bounds with zero velocity (eq. 14). After every
iteration the velocity is (eq. 15, plus an optional inertia term that the seed leaves out)::

    v ← w·v + c1·R1·(x_local − x)/Δt + c2·R2·(x_global − x)/Δt,   x ← x + v·Δt   (eq. 16)

with R1, R2 uniform in [0, 1), drawn per particle and coordinate, ``c1 = 1`` (self
confidence), ``c2 = 2`` (swarm confidence), ``Δt = 1`` and ``w = 0`` by default.

Beyond the seed:

* a coordinate that leaves its bounds is re-drawn uniformly inside them and its velocity
  component reset to 0 (``redraw="coordinates"``; ``"particle"`` re-draws the whole particle);
* a particle whose evaluation failed (non-finite score: error, NaN, timeout) is re-drawn
  uniformly with zero velocity, so it never steers the swarm;
* positions are continuous; integer parameters are rounded when a position is turned into
  parameters (so a particle can drift across an integer step over several iterations) and
  log-scale parameters move in ``ln(value)`` (see :mod:`oamlm_dist.hpo.space`);
* optionally (``restart > 0``), a swarm that has collapsed onto its global best (every
  coordinate within ``restart`` × its range) is re-drawn, personal bests forgotten, global
  best kept. Off by default, as in the seed.

The swarm is an ask/tell object: :meth:`Swarm.candidates` gives the positions awaiting
evaluation, :meth:`Swarm.tell` takes their scores, updates the bests and moves the particles.
Its whole state, random generator included, round-trips through :meth:`Swarm.state_dict`,
so a run restored from a stored state continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from oamlm_dist.errors import InputError
from oamlm_dist.hpo.space import SearchSpace

REDRAW_MODES = ("coordinates", "particle")


class Swarm:
    """A particle swarm over a :class:`SearchSpace` (minimisation).

    Parameters
    ----------
    space : SearchSpace
        Parameters and bounds.
    particles : int
        Swarm size P (one evaluation per particle and iteration).
    seed : int
        Seed of the random generator: equal seeds give equal runs.
    c1, c2 : float
        Self and swarm confidence factors.
    dt : float
        Time step Δt.
    inertia : float
        Weight w of the previous velocity (0: the seed's update).
    redraw : {"coordinates", "particle"}
        What is re-drawn when a particle leaves the bounds.
    restart : float
        Collapse threshold (fraction of each range) for a re-draw of the swarm; 0: never.
    """

    def __init__(self, space: SearchSpace, particles: int, seed: int = 0, c1: float = 1.0,
                 c2: float = 2.0, dt: float = 1.0, inertia: float = 0.0,
                 redraw: str = "coordinates", restart: float = 0.0):
        if particles < 1:
            raise InputError(f"swarm: particles must be >= 1, got {particles}")
        if space.dim < 1:
            raise InputError("swarm: the search space has no free parameter")
        if redraw not in REDRAW_MODES:
            raise InputError(f"swarm: redraw must be one of {REDRAW_MODES}, not {redraw!r}")
        if not dt > 0:
            raise InputError(f"swarm: dt must be > 0, got {dt}")
        self.space = space
        self.particles = particles
        self.seed = seed
        self.c1, self.c2, self.dt, self.inertia = float(c1), float(c2), float(dt), float(inertia)
        self.redraw = redraw
        self.restart = float(restart)
        self.restarts = 0
        self.rng = np.random.default_rng(seed)
        self.lower, self.upper = space.lower, space.upper
        shape = (particles, space.dim)
        self.iteration = 0  # completed (evaluated and told) iterations
        self.x = self._uniform(shape)
        self.v = np.zeros(shape)
        self.local_x = self.x.copy()
        self.local_f = np.full(particles, np.inf)
        self.global_x = self.x[0].copy()
        self.global_f = np.inf
        self.evaluations = 0

    # ---- settings ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that determines the run besides the objective (stored with it)."""
        return {"space": self.space.to_dict(), "particles": self.particles, "seed": self.seed,
                "c1": self.c1, "c2": self.c2, "dt": self.dt, "inertia": self.inertia,
                "redraw": self.redraw, "restart": self.restart}

    # ---- ask / tell ----------------------------------------------------------------------------
    def candidates(self) -> list[dict[str, Any]]:
        """Parameter dicts of the positions awaiting evaluation, one per particle."""
        return [self.space.values(x) for x in self.x]

    def tell(self, scores: np.ndarray | list[float]) -> None:
        """Record the scores of :meth:`candidates` (non-finite = failed) and move the swarm."""
        f = np.asarray(scores, dtype=np.float64).copy()
        if f.shape != (self.particles,):
            raise ValueError(f"expected {self.particles} scores, got shape {f.shape}")
        failed = ~np.isfinite(f)
        f[failed] = np.inf
        # Personal and global bests (strictly better only: ties keep the older point, and
        # the lowest particle index wins among equal new scores).
        better = f < self.local_f
        self.local_x[better] = self.x[better]
        self.local_f[better] = f[better]
        best = int(np.argmin(self.local_f))
        if self.local_f[best] < self.global_f:
            self.global_f = float(self.local_f[best])
            self.global_x = self.local_x[best].copy()
        self.evaluations += self.particles
        self.iteration += 1
        self._move(failed)

    def _move(self, failed: np.ndarray) -> None:
        shape = self.x.shape
        # Every draw happens every iteration, used or not, so the generator's sequence does
        # not depend on which particles failed or left the bounds.
        r1, r2 = self.rng.random(shape), self.rng.random(shape)
        fresh = self._uniform(shape)
        # A particle without a personal best (or a swarm without a global best) is not pulled.
        local = np.where(np.isfinite(self.local_f)[:, None], self.local_x, self.x)
        target = self.global_x if np.isfinite(self.global_f) else self.x
        v = (self.inertia * self.v + self.c1 * r1 * (local - self.x) / self.dt
             + self.c2 * r2 * (target - self.x) / self.dt)
        x = self.x + v * self.dt
        outside = (x < self.lower) | (x > self.upper)
        if self.redraw == "particle":
            outside = np.repeat(outside.any(axis=1, keepdims=True), shape[1], axis=1)
        outside |= failed[:, None]
        x = np.where(outside, fresh, x)
        v = np.where(outside, 0.0, v)
        if self.restart > 0 and np.isfinite(self.global_f):
            # A collapsed swarm no longer explores (without inertia the velocities vanish at
            # the global best): re-draw every particle and forget the personal bests, keeping
            # the global best as the swarm's memory.
            spread = np.abs(x - self.global_x) / (self.upper - self.lower)
            if spread.max() < self.restart:
                x, v = self._uniform(shape), np.zeros(shape)
                self.local_f[:] = np.inf
                self.local_x = x.copy()
                self.restarts += 1
        self.x = x
        self.v = v

    def _uniform(self, shape: tuple[int, int]) -> np.ndarray:
        """Eq. 14: x_min + R (x_max − x_min)."""
        return self.lower + self.rng.random(shape) * (self.upper - self.lower)

    # ---- results -------------------------------------------------------------------------------
    @property
    def best(self) -> dict[str, Any]:
        """Best parameters found so far (with the fixed values)."""
        return self.space.values(self.global_x)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The complete dynamic state, JSON-serialisable (non-finite floats as strings)."""
        return {"iteration": self.iteration, "evaluations": self.evaluations,
                "restarts": self.restarts, "x": self.x.tolist(), "v": self.v.tolist(),
                "local_x": self.local_x.tolist(),
                "local_f": [_float_out(f) for f in self.local_f],
                "global_x": self.global_x.tolist(), "global_f": _float_out(self.global_f),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (same settings)."""
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise InputError(f"swarm state has shape {x.shape}, this swarm {self.x.shape}")
        self.iteration = int(state["iteration"])
        self.evaluations = int(state["evaluations"])
        self.restarts = int(state["restarts"])
        self.x = x
        self.v = np.asarray(state["v"], dtype=np.float64)
        self.local_x = np.asarray(state["local_x"], dtype=np.float64)
        self.local_f = np.array([_float_in(f) for f in state["local_f"]])
        self.global_x = np.asarray(state["global_x"], dtype=np.float64)
        self.global_f = _float_in(state["global_f"])
        self.rng.bit_generator.state = state["rng"]

    def state_json(self) -> str:
        return json.dumps(self.state_dict())

    def load_state_json(self, text: str) -> None:
        self.load_state_dict(json.loads(text))


def _float_out(value: float) -> float | str:
    return float(value) if np.isfinite(value) else repr(float(value))


def _float_in(value: float | str) -> float:
    return float(value)
