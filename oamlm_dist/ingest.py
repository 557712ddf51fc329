"""Ingest ASE-readable trajectories with forces into the store's ``frames/``.

Every file is read and validated completely before anything is written, so bad input
never leaves a partial segment behind. A file is identified by the sha256 of its bytes:
ingesting it again is a no-op.

Besides per-frame checks, a whole file is checked for forces in the wrong units
(:func:`units_problem`), the usual mistake being Hartree/Bohr (1 Ha/Bohr = 51.42 eV/Å):

1. *Energy consistency*, when consecutive frames are steps of a trajectory (same atoms, every
   atom moved less than 0.5 Å) and carry energies: the energy change of a step equals the
   work of the forces, ``ΔE ≈ -½ (F_i + F_i+1)·(x_i+1 - x_i)``. The least-squares slope of ΔE
   on that work is 1 in consistent units, 51.4 for Ha/Bohr forces with eV energies and 0.043
   for kcal/mol/Å. It is used only when it explains the energy changes (R² ≥ 0.9 over at
   least 9 steps) and flags a slope outside [0.5, 2].
2. Otherwise (no energies, or frames that are not steps of one trajectory) the *magnitude*:
   a file of at least 10 frames whose RMS force per atom is below 0.05 eV/Å. Thermal MD has
   about ``sqrt(3 k_B T k)`` per atom; xTB MD of gold-thiolate rings and alkanes at 300-750 K
   gives 0.6-1.5 eV/Å, also in its first femtoseconds from a relaxed start (the same forces
   in Ha/Bohr: 0.012-0.03), so real MD is never flagged. Heavy-atom MD started at a minimum
   has smaller forces in its first femtoseconds (EMT Au13 at 300 K: 0.03 eV/Å over the first
   5 fs); with energies such a file is judged by the consistency test. A file of only
   tightly relaxed structures without energies is flagged: it has no force information to
   learn from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from oamlm_dist.errors import InputError
from oamlm_dist.locks import writer_lock
from oamlm_dist.store import FrameBatch, Store, sha256_of

MIN_DISTANCE = 0.5  # Å; closer atoms mean a broken frame (or wrong units), never chemistry
MAX_FORCE = 1000.0  # eV/Å; larger means wrong units (e.g. kcal/mol/Å) or an exploded SCF
MAX_CELL = 1.0e4  # Å; a larger cell edge is a units or format error
HARTREE_PER_BOHR = 51.42208  # eV/Å
UNITS_SLOPE = (0.5, 2.0)  # accepted energy/force-work slope (see the module docstring)
UNITS_MIN_R2 = 0.9
UNITS_MIN_STEPS = 9
UNITS_MAX_STEP = 0.5  # Å; larger moves are not trajectory steps
MIN_FORCE_RMS = 0.05  # eV/Å, over a file of at least UNITS_MIN_FRAMES frames
UNITS_MIN_FRAMES = 10


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


def _energy(atoms: Atoms) -> float:
    if atoms.calc is not None and "energy" in getattr(atoms.calc, "results", {}):
        return float(atoms.calc.results["energy"])
    return float(atoms.info.get("energy", np.nan))


def units_problem(frames: list[Atoms]) -> str | None:
    """Why the forces of a file (validated frames) look like they are not in eV/Å, or None.

    See the module docstring for the two tests and their thresholds.
    """
    from ase.geometry import find_mic

    forces = [_forces(atoms) for atoms in frames]
    work, change = [], []
    for i in range(len(frames) - 1):
        a, b = frames[i], frames[i + 1]
        e_a, e_b = _energy(a), _energy(b)
        if len(a) != len(b) or (a.numbers != b.numbers).any() or not np.isfinite(e_a + e_b):
            continue
        step = b.positions - a.positions
        if a.pbc.any():
            step = find_mic(step, a.cell, a.pbc)[0]
        if np.abs(step).max(initial=0.0) >= UNITS_MAX_STEP:
            continue
        work.append(-0.5 * float(np.sum((forces[i] + forces[i + 1]) * step)))
        change.append(e_b - e_a)
    if len(work) >= UNITS_MIN_STEPS:
        w, d = np.array(work), np.array(change)
        if w @ w > 0 and d @ d > 0:
            slope = float(w @ d / (w @ w))
            r2 = 1.0 - float(np.sum((d - slope * w) ** 2) / (d @ d))
            if r2 >= UNITS_MIN_R2:
                if UNITS_SLOPE[0] <= slope <= UNITS_SLOPE[1]:
                    return None
                hint = ("forces in Hartree/Bohr? multiply them by 51.42"
                        if abs(np.log(slope / HARTREE_PER_BOHR)) < 0.5 else
                        "forces and energies in different units?")
                return (f"energy changes along the trajectory are {slope:.3g} times the work "
                        f"of the forces over {len(w)} steps (1 in eV and eV/Å): {hint}")
    if len(frames) >= UNITS_MIN_FRAMES:
        rms = float(np.sqrt(np.mean(np.concatenate([np.sum(f ** 2, axis=1) for f in forces]))))
        if rms < MIN_FORCE_RMS:
            return (f"force RMS {rms:.3g} eV/Å over {len(frames)} frames is implausibly small "
                    f"(< {MIN_FORCE_RMS} eV/Å; thermal MD has 0.5-2 eV/Å): forces in "
                    "Hartree/Bohr? multiply them by 51.42 (tightly relaxed structures alone "
                    "carry no force information to learn from)")
    return None


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
    problem = units_problem(good)
    if problem is not None:
        raise InputError(f"{path}: {problem}")
    report.frames = len(good)
    return good, report


def ingest(store_path: str | os.PathLike, files: list[str], skip_bad: bool = False) -> list[
        IngestReport]:
    """Validate all ``files`` first, then write each as one segment of ``store_path``.

    The store is created if missing. Files already present (same sha256) are skipped.
    """
    validated = [validate_file(path, skip_bad) for path in files]
    store = Store.create(store_path, exist_ok=True)
    # One ingest at a time: two at once could both miss the other's copy of a file.
    with writer_lock(store.path, "ingest"):
        return _write_validated(store, validated)


def _write_validated(store: Store, validated: list[tuple[list[Atoms], IngestReport]]
                     ) -> list[IngestReport]:
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
