"""Ingest ASE-readable trajectories with forces into the store's ``frames/``.

Every file is read and validated completely before anything is written, so bad input
never leaves a partial segment behind. A file is identified by the sha256 of its bytes:
ingesting it again is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from oamlm_dist.errors import InputError
from oamlm_dist.store import FrameBatch, Store, sha256_of

MIN_DISTANCE = 0.5  # Å; closer atoms mean a broken frame (or wrong units), never chemistry
MAX_FORCE = 1000.0  # eV/Å; larger means wrong units (e.g. kcal/mol/Å) or an exploded SCF
MAX_CELL = 1.0e4  # Å; a larger cell edge is a units or format error


@dataclass
class IngestReport:
    path: str
    sha256: str
    frames: int = 0
    skipped: int = 0
    segment: int | None = None
    already_present: bool = False
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.already_present:
            return f"{self.path}: already ingested as segment {self.segment} (no change)"
        skipped = f", skipped {self.skipped} bad" if self.skipped else ""
        return f"{self.path}: {self.frames} frames -> segment {self.segment}{skipped}"


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """Read all frames of an ASE-readable file (extxyz incl. .gz/.xz, .traj, ASE db)."""
    path = Path(path)
    if not path.is_file():
        reason = "not a regular file" if path.exists() else "no such file"
        raise InputError(f"{path}: {reason}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # ASE raises many types for malformed files
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read as an ASE trajectory ({message})") from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise InputError(f"{path}: no frames")
    return frames


def _forces(atoms: Atoms) -> np.ndarray | None:
    if atoms.calc is not None and "forces" in getattr(atoms.calc, "results", {}):
        return np.asarray(atoms.calc.results["forces"], dtype=float)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=float)
    return None


def frame_problem(atoms: Atoms, reference_elements: set[str] | None = None) -> str | None:
    """Why a frame cannot be learned from, or None. The text names the atom if one is at fault."""
    if len(atoms) == 0:
        return "no atoms"
    forces = _forces(atoms)
    if forces is None:
        return "no forces (oamlm-dist learns from forces: write them with the frame)"
    if forces.shape != (len(atoms), 3):
        return f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
    for name, values in (("position", atoms.positions), ("force", forces)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            return f"atom {bad[0]} ({atoms[bad[0]].symbol}): non-finite {name}"
    if atoms.calc is not None and "energy" in atoms.calc.results:
        if not np.isfinite(atoms.calc.results["energy"]):
            return "non-finite energy"
    norms = np.linalg.norm(forces, axis=1)
    if norms.max() > MAX_FORCE:
        i = int(norms.argmax())
        return (f"atom {i} ({atoms[i].symbol}): force {norms[i]:.3g} eV/Å exceeds "
                f"{MAX_FORCE:g} eV/Å (wrong units?)")
    lengths = atoms.cell.lengths()
    if atoms.pbc.any() and (lengths[atoms.pbc] <= 0).any():
        return "periodic along an axis with a zero-length cell vector"
    if lengths.max() > MAX_CELL:
        return f"cell edge {lengths.max():.3g} Å exceeds {MAX_CELL:g} Å (wrong units?)"
    pair = closest_pair(atoms)
    if pair is not None and pair[2] < MIN_DISTANCE:
        i, j, d = pair
        return (f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å "
                f"apart (< {MIN_DISTANCE} Å)")
    if reference_elements is not None:
        elements = set(atoms.get_chemical_symbols())
        if elements != reference_elements:
            return (f"elements {sorted(elements)} differ from the file's first frame "
                    f"{sorted(reference_elements)} (mixed element sets)")
    return None


def closest_pair(atoms: Atoms) -> tuple[int, int, float] | None:
    """The closest pair of atoms (minimum image), or None for a single atom."""
    if len(atoms) < 2:
        return None
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE * 2)
    if len(d):
        k = int(np.argmin(d))
        return int(i[k]), int(j[k]), float(d[k])
    return (0, 1, float("inf"))


def validate_file(path: str | os.PathLike, skip_bad: bool) -> tuple[list[Atoms], IngestReport]:
    """Read and validate a file; bad frames raise (one line) unless ``skip_bad``."""
    frames = read_frames(path)
    report = IngestReport(path=str(path), sha256=sha256_of(path))
    reference = None
    good = []
    for index, atoms in enumerate(frames):
        problem = frame_problem(atoms, reference)
        if problem is None:
            if reference is None:
                reference = set(atoms.get_chemical_symbols())
            good.append(atoms)
            continue
        message = f"{path}, frame {index}: {problem}"
        if not skip_bad:
            raise InputError(message + " (use --skip-bad to skip such frames)")
        report.skipped += 1
        report.problems.append(message)
    if not good:
        raise InputError(f"{path}: no usable frames ({report.skipped} bad)")
    report.frames = len(good)
    return good, report


def ingest(store_path: str | os.PathLike, files: list[str], skip_bad: bool = False) -> list[
        IngestReport]:
    """Validate all ``files`` first, then write each as one segment of ``store_path``.

    The store is created if missing. Files already present (same sha256) are skipped.
    """
    validated = [validate_file(path, skip_bad) for path in files]
    store = Store.create(store_path, exist_ok=True)
    # Only complete segments count: an interrupted earlier ingest is redone, not trusted.
    known = {s.attrs["source"]["sha256"]: s.id for s in store.segments("ingest")
             if s.attrs.get("complete")}
    reports = []
    for frames, report in validated:
        if report.sha256 in known:
            report.segment = known[report.sha256]
            report.already_present = True
            reports.append(report)
            continue
        source = {"path": os.path.abspath(report.path), "sha256": report.sha256,
                  "frames_read": report.frames + report.skipped, "skipped": report.skipped}
        segment = store.new_segment("ingest", {"source": source})
        segment.append(FrameBatch.from_atoms(frames))
        segment.mark_complete()
        report.segment = segment.id
        known[report.sha256] = segment.id
        reports.append(report)
    return reports
