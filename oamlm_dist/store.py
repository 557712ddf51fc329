"""The project store: one Zarr v3 group per project directory, the single source of truth.

Layout (``LAYOUT_VERSION`` 1)::

    STORE/                      root attrs: layout_version, package_version, created
      frames/<seg>/             one *segment* per ingested file, MD run or fine-calculation batch
          numbers (A,) positions (A,3) forces (A,3) [momenta (A,3)]   atom rows, frames concatenated
          natoms (F,) cell (F,3,3) pbc (F,3) energy (F,)             frame rows (NaN: no energy)
          attrs: id, kind, source/run provenance, n_frames, n_atoms (the committed extent)
      classes/<set>/<class>/<block>/  per-class rows of one frame block: X (SOAP, float32) and
                                rows (P, Z, unit force Y, norm, segment, frame, atom side by
                                side; attr ``columns`` maps them; see describe.read_block)
      models/<name>/<class>/    trained models: v<n>/ arrays and equations of the version in
                                force (attr ``version``), train/<block>/ D matrices
      failures/, hpo/, active/  failed fine calculations, swarm runs, active-learning state
      done/<stage>/<key>        done-markers: a block of a stage is complete iff its marker exists
      locks/<target>.lock       writer locks of concurrent clients (see oamlm_dist.locks)

Segments are private to their writer, so workers never write the same Zarr chunk: a frame is
identified by ``(segment id, local index)``. A segment's arrays may run ahead of its committed
extent while it is being written; readers only see the extent recorded in its attrs, which is
updated after the arrays (and Zarr writes each file atomically), so a crash never exposes a
partial frame. The store lives on a (shared) file system path.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from zarr.errors import ContainsGroupError

from oamlm_dist import __version__
from oamlm_dist.errors import StoreError

LAYOUT_VERSION = 1
ATOM_CHUNK = 65536
FRAME_CHUNK = 4096
_KEY_OK = re.compile(r"^[A-Za-z0-9_.=+-]+$")


def now_iso() -> str:
    """UTC time stamp used in provenance attributes."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (identifies a source independent of its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def task_token(store_path: str | os.PathLike) -> str:
    """Short hash of a store's absolute path, part of the keys of its stages' Dask tasks.

    Keys are global on a scheduler: without it, stages of two stores sharing one scheduler
    (``--scheduler tcp://...``) would share tasks, and one store would miss their output.
    """
    return hashlib.sha256(os.path.abspath(store_path).encode()).hexdigest()[:8]


def settings_key(settings: dict) -> str:
    """Short stable hash of a JSON-able settings dict (names descriptor sets, runs, ...)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def version_in_force(class_group: zarr.Group, attrs: dict | None = None) -> zarr.Group:
    """The ``v<n>/`` group of a class model that its attributes put in force (``attrs``: the
    attributes already read, so that the version matches what else was taken from them).

    A model solved before solves were versioned keeps its arrays in the class group itself.
    """
    version = (attrs or class_group.attrs).get("version")
    return class_group if version is None else class_group[f"v{version}"]


@dataclass(frozen=True)
class FrameBatch:
    """Frames ready to be written: ragged atoms concatenated, one row per frame otherwise."""

    numbers: np.ndarray  # (A,) int
    positions: np.ndarray  # (A, 3)
    forces: np.ndarray  # (A, 3)
    natoms: np.ndarray  # (F,)
    cell: np.ndarray  # (F, 3, 3)
    pbc: np.ndarray  # (F, 3) bool
    energy: np.ndarray  # (F,) NaN where unknown
    momenta: np.ndarray | None = None  # (A, 3), kept for MD restarts

    @classmethod
    def from_atoms(cls, frames: Sequence[Atoms], with_momenta: bool = False) -> FrameBatch:
        """Collect energies and forces from each frame's calculator (or arrays)."""

        def forces_of(atoms: Atoms) -> np.ndarray:
            if atoms.calc is not None and "forces" in atoms.calc.results:
                return np.asarray(atoms.calc.results["forces"], dtype=float)
            return np.asarray(atoms.arrays["forces"], dtype=float)

        def energy_of(atoms: Atoms) -> float:
            if atoms.calc is not None and "energy" in atoms.calc.results:
                return float(atoms.calc.results["energy"])
            return float(atoms.info.get("energy", np.nan))

        return cls(
            numbers=np.concatenate([a.numbers for a in frames]).astype(np.int16),
            positions=np.concatenate([a.positions for a in frames]).astype(np.float64),
            forces=np.concatenate([forces_of(a) for a in frames]),
            natoms=np.array([len(a) for a in frames], dtype=np.int32),
            cell=np.array([a.cell.array for a in frames], dtype=np.float64).reshape(-1, 3, 3),
            pbc=np.array([a.pbc for a in frames], dtype=bool).reshape(-1, 3),
            energy=np.array([energy_of(a) for a in frames], dtype=np.float64),
            momenta=(
                np.concatenate([a.get_momenta() for a in frames]) if with_momenta else None
            ),
        )

    def __len__(self) -> int:
        return len(self.natoms)


_ATOM_ARRAYS = {"numbers": ("i2", ()), "positions": ("f8", (3,)), "forces": ("f8", (3,))}
_FRAME_ARRAYS = {
    "natoms": ("i4", ()),
    "cell": ("f8", (3, 3)),
    "pbc": ("bool", (3,)),
    "energy": ("f8", ()),
}


class Segment:
    """A growing, single-writer batch of frames under ``frames/<id>``."""

    def __init__(self, group: zarr.Group):
        self.group = group

    @property
    def id(self) -> int:
        return int(self.group.attrs["id"])

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def n_frames(self) -> int:
        return int(self.group.attrs.get("n_frames", 0))

    @property
    def n_atoms(self) -> int:
        return int(self.group.attrs.get("n_atoms", 0))

    @property
    def has_momenta(self) -> bool:
        return "momenta" in self.group.array_keys()

    def _create_arrays(self, with_momenta: bool) -> None:
        specs = dict(_ATOM_ARRAYS)
        if with_momenta:
            specs["momenta"] = ("f8", (3,))
        for name, (dtype, tail) in specs.items():
            self.group.create_array(
                name, shape=(0, *tail), dtype=dtype, chunks=(ATOM_CHUNK, *tail)
            )
        for name, (dtype, tail) in _FRAME_ARRAYS.items():
            self.group.create_array(
                name, shape=(0, *tail), dtype=dtype, chunks=(FRAME_CHUNK, *tail)
            )

    def append(self, batch: FrameBatch) -> None:
        """Append frames, then commit the new extent (arrays first, so readers never see
        a committed frame whose data is missing)."""
        if len(batch) == 0:
            return
        if (batch.momenta is not None) != self.has_momenta:
            raise StoreError(
                f"segment {self.id}: momenta given={batch.momenta is not None} but segment "
                f"stores momenta={self.has_momenta}"
            )
        n_frames, n_atoms = self.n_frames, self.n_atoms
        atom_rows = {"numbers": batch.numbers, "positions": batch.positions,
                     "forces": batch.forces}
        if batch.momenta is not None:
            atom_rows["momenta"] = batch.momenta
        frame_rows = {"natoms": batch.natoms, "cell": batch.cell, "pbc": batch.pbc,
                      "energy": batch.energy}
        for rows, start in ((atom_rows, n_atoms), (frame_rows, n_frames)):
            for name, values in rows.items():
                array = self.group[name]
                stop = start + len(values)
                # Drop rows a killed writer left beyond the committed extent.
                array.resize((stop, *array.shape[1:]))
                array[start:stop] = values
        self.group.update_attributes(
            {"n_frames": n_frames + len(batch), "n_atoms": n_atoms + int(batch.natoms.sum()),
             "updated": now_iso()}
        )

    def offsets(self) -> np.ndarray:
        """Start row of every committed frame in the atom arrays, plus the end."""
        natoms = self.group["natoms"][: self.n_frames]
        return np.concatenate([[0], np.cumsum(natoms, dtype=np.int64)])

    def read(self, start: int = 0, stop: int | None = None) -> list[Atoms]:
        """Committed frames ``start:stop`` as ASE Atoms with a SinglePointCalculator."""
        n = self.n_frames
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return []
        offsets = self.offsets()
        a0, a1 = int(offsets[start]), int(offsets[stop])
        numbers = self.group["numbers"][a0:a1]
        positions = self.group["positions"][a0:a1]
        forces = self.group["forces"][a0:a1]
        momenta = self.group["momenta"][a0:a1] if self.has_momenta else None
        cell = self.group["cell"][start:stop]
        pbc = self.group["pbc"][start:stop]
        energy = self.group["energy"][start:stop]
        frames = []
        for i, frame in enumerate(range(start, stop)):
            lo, hi = offsets[frame] - a0, offsets[frame + 1] - a0
            atoms = Atoms(numbers=numbers[lo:hi], positions=positions[lo:hi],
                          cell=cell[i], pbc=pbc[i])
            if momenta is not None:
                atoms.set_momenta(momenta[lo:hi])
            results = {"forces": forces[lo:hi]}
            if np.isfinite(energy[i]):
                results["energy"] = float(energy[i])
            atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info["segment"] = self.id
            atoms.info["frame"] = frame
            frames.append(atoms)
        return frames

    def mark_complete(self, stopped: str | None = None) -> None:
        """The segment will not grow any more; ``stopped`` says why it ended early."""
        attributes = {"complete": True, "updated": now_iso()}
        if stopped is not None:
            attributes["stopped"] = stopped
        self.group.update_attributes(attributes)


class Store:
    """A project store on disk. Open with :meth:`open` (existing) or :meth:`create`."""

    def __init__(self, path: Path, group: zarr.Group, read_only: bool):
        self.path = path
        self.root = group
        self.read_only = read_only

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, exist_ok: bool = True) -> Store:
        """Create a new store (or open an existing one when ``exist_ok``)."""
        path = Path(os.path.abspath(path))
        if (path / "zarr.json").exists():
            if not exist_ok:
                raise StoreError(f"{path}: a store already exists here")
            return cls.open(path, mode="a")
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path}: directory exists and is not an oamlm-dist store")
        # Built beside and renamed into place: readers and concurrent creators see either no
        # store or a complete one.
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        group = zarr.open_group(str(building), mode="w-")
        group.update_attributes(
            {"layout_version": LAYOUT_VERSION, "package_version": __version__,
             "created": now_iso(), "kind": "oamlm-dist store"}
        )
        for name in ("frames", "classes", "models", "done"):
            group.create_group(name)
        try:
            os.rename(building, path)  # replaces a missing or empty directory only
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
            if not exist_ok or not (path / "zarr.json").exists():
                raise StoreError(f"{path}: cannot create the store (another one was created "
                                 "here meanwhile, or the directory is not empty)") from None
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> Store:
        """Open an existing store; ``mode`` is ``"r"`` (read-only) or ``"a"``."""
        path = Path(os.path.abspath(path))
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: no oamlm-dist store here (create one with `ingest` or "
                             "`sample`)")
        try:
            group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
            attrs = dict(group.attrs)
        except Exception as exc:  # corrupted metadata: report, never overwrite
            raise StoreError(f"{path}: cannot read store metadata ({exc})") from exc
        version = attrs.get("layout_version")
        if not isinstance(version, int):
            raise StoreError(f"{path}: not an oamlm-dist store (no layout_version attribute)")
        if version > LAYOUT_VERSION:
            raise StoreError(
                f"{path}: store layout version {version} was written by a newer oamlm-dist "
                f"({attrs.get('package_version', '?')}); this version ({__version__}) reads "
                f"layout <= {LAYOUT_VERSION}: upgrade oamlm-dist"
            )
        return cls(path, group, read_only=(mode == "r"))

    # ---- segments --------------------------------------------------------------------------
    def new_segment(self, kind: str, attrs: dict, with_momenta: bool = False) -> Segment:
        """Create an empty segment with a fresh id. Ids are reserved with an atomic
        ``mkdir`` so concurrent writers (workers, campaigns) never share one."""
        self._require_writable()
        frames_dir = self.path / "frames"
        next_id = max(self._segment_ids(), default=-1) + 1
        while True:
            try:
                os.mkdir(frames_dir / f"{next_id:06d}")
                break
            except FileExistsError:
                next_id += 1
        group = self.root["frames"].create_group(f"{next_id:06d}", overwrite=True)
        group.update_attributes({"id": next_id, "kind": kind, "n_frames": 0, "n_atoms": 0,
                            "created": now_iso(), "complete": False, **attrs})
        segment = Segment(group)
        segment._create_arrays(with_momenta)
        return segment

    def _segment_ids(self) -> list[int]:
        frames_dir = self.path / "frames"
        return sorted(int(p.name) for p in frames_dir.iterdir()
                      if p.is_dir() and p.name.isdigit())

    def segment(self, seg_id: int) -> Segment:
        try:
            return Segment(self.root["frames"][f"{seg_id:06d}"])
        except KeyError as exc:
            raise StoreError(f"{self.path}: no frame segment {seg_id}") from exc

    def segments(self, kind: str | None = None) -> list[Segment]:
        """All segments that carry metadata (a reserved id without metadata is skipped)."""
        out = []
        for seg_id in self._segment_ids():
            if not (self.path / "frames" / f"{seg_id:06d}" / "zarr.json").exists():
                continue
            segment = self.segment(seg_id)
            if "id" in segment.group.attrs and (kind is None or segment.attrs["kind"] == kind):
                out.append(segment)
        return out

    def find_segment(self, **match) -> Segment | None:
        """The first segment whose attrs contain all ``match`` items (e.g. run_key=...)."""
        for segment in self.segments():
            attrs = segment.attrs
            if all(attrs.get(k) == v for k, v in match.items()):
                return segment
        return None

    def frame_index(self) -> list[tuple[int, int]]:
        """``(segment id, committed frame count)`` for every segment, in id order."""
        return [(s.id, s.n_frames) for s in self.segments()]

    def n_frames(self) -> int:
        return sum(n for _, n in self.frame_index())

    def iter_frames(self) -> Iterable[Atoms]:
        for segment in self.segments():
            yield from segment.read()

    def elements(self) -> list[str]:
        """Chemical symbols present in committed frames, sorted by atomic number."""
        from ase.data import chemical_symbols

        present: set[int] = set()
        for segment in self.segments():
            if segment.n_atoms:
                present.update(np.unique(segment.group["numbers"][: segment.n_atoms]).tolist())
        return [chemical_symbols[z] for z in sorted(present)]

    # ---- done-markers ------------------------------------------------------------------------
    def mark_done(self, stage: str, key: str, info: dict | None = None) -> None:
        """Record that block ``key`` of ``stage`` is completely written (call it last)."""
        self._require_writable()
        if not _KEY_OK.match(key):
            raise StoreError(f"invalid done-marker key {key!r}")
        # One metadata document with the attributes (written atomically by Zarr): a killed
        # writer never leaves a marker without its information (e.g. a block's row counts).
        self.group(f"done/{stage}", create=True).create_group(
            key, overwrite=True,
            attributes={"time": now_iso(), "host": socket.gethostname(), **(info or {})})

    def is_done(self, stage: str, key: str) -> bool:
        return (self.path / "done" / stage / key / "zarr.json").exists()

    def done_keys(self, stage: str) -> set[str]:
        stage_dir = self.path / "done" / stage
        if not stage_dir.is_dir():
            return set()
        return {p.name for p in stage_dir.iterdir() if (p / "zarr.json").exists()}

    def clear_done(self, stage: str) -> None:
        """Forget a stage's markers (its blocks will be recomputed)."""
        self._require_writable()
        if f"done/{stage}" in self.root:
            del self.root[f"done/{stage}"]

    # ---- misc ------------------------------------------------------------------------------
    def group(self, path: str, create: bool = False) -> zarr.Group:
        """The group at ``path``; with ``create``, made (with its parents) if missing.

        Creation tolerates a concurrent writer creating the same group: workers of one
        stage all ask for their stage's groups at once.
        """
        if create:
            self._require_writable()
            group = self.root
            for name in path.split("/"):
                try:
                    group = group.require_group(name)
                except ContainsGroupError:  # another writer made it between check and create
                    group = group[name]
            return group
        try:
            return self.root[path]
        except KeyError as exc:
            raise StoreError(f"{self.path}: nothing stored at {path}") from exc

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")

    def summary(self) -> dict:
        """Counts for `oamlm-dist info` and logs."""
        segments = self.segments()
        kinds: dict[str, int] = {}
        for s in segments:
            kinds[s.attrs["kind"]] = kinds.get(s.attrs["kind"], 0) + s.n_frames
        return {
            "path": str(self.path),
            "layout_version": self.root.attrs["layout_version"],
            "created": self.root.attrs.get("created"),
            "segments": len(segments),
            "frames": sum(s.n_frames for s in segments),
            "atoms": sum(s.n_atoms for s in segments),
            "frames_by_kind": kinds,
            "elements": self.elements(),
        }
