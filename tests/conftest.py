"""Shared fixtures: small frames with real (EMT) forces and a Dask cluster for stage tests."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT


def emt_frames(n: int = 4, name: str = "CH4", seed: int = 0):
    """Rattled copies of a molecule with EMT energies and forces attached."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


def tree_checksum(path: str | os.PathLike) -> str:
    """Checksum of every file (name and bytes) under ``path``: 'unchanged' means equal.

    Writer-lock files (``locks/``: who last wrote, no data) are left out.
    """
    digest = hashlib.sha256()
    root = Path(path)
    if not root.exists():
        return "absent"
    for file in sorted(p for p in root.rglob("*")
                       if p.is_file() and p.relative_to(root).parts[0] != "locks"):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def record_md(atoms, dynamics, n: int, every: int = 1) -> list:
    """``n`` frames of ``dynamics`` on ``atoms`` (one every ``every`` steps), each a copy with
    the energy and forces of its step attached."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for _ in range(n):
        dynamics.run(every)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(frame)
    return frames


def md_frames(n: int, seed: int, name: str = "C3H8", every: int = 2) -> list:
    """``n`` frames of EMT MD (every ``every`` steps of 1 fs), forces and energies attached."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = molecule(name)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    atoms.set_momenta(rng.normal(scale=0.3, size=(len(atoms), 3)))
    return record_md(atoms, VelocityVerlet(atoms, timestep=1.0 * units.fs), n, every)


def two_worker_client():
    """A client of a two-worker local cluster, closed when the generator is resumed."""
    from distributed import Client

    from oamlm_dist.cluster import local_cluster

    cluster = local_cluster(n_workers=2)
    client = Client(cluster)
    yield client
    # Shutdown chatter would be logged after pytest has closed its capture streams.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def dask_client():
    """A two-worker local cluster shared by the stage tests (starting one costs seconds)."""
    yield from two_worker_client()
