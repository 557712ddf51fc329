"""The ``describe`` stage: atom classes, alignment neighbourhoods and SOAP rows per class.

One Dask task per frame block; each task reads its frames from the store, computes its
rows (DScribe serially inside the task) and writes them to the group
``classes/<set>/<class>/<block>`` (fields ``X, P, Z, Y, norm, segment, frame, atom``, stored
as two arrays: :func:`read_block`), then marks the block done. Blocks are fixed
``block_frames``-frame windows of a segment, so a block's rows never change once written; a
rerun after a kill computes only blocks without a marker. A descriptor set is keyed by its
settings: other settings make another set.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr
from ase import Atoms
from ase.data import chemical_symbols
from dscribe.utils.species import get_atomic_numbers
from zarr.storage import MemoryStore

from oamlm_dist.descriptors import SoapSettings, make_soap, soap_rows
from oamlm_dist.environments import (
    class_names,
    class_permutations,
    describe_environments,
    describe_environments_many,
)
from oamlm_dist.errors import InputError, OamlmError, SchemeError, StoreError
from oamlm_dist.locks import writer_lock
from oamlm_dist.store import Segment, Store, now_iso, settings_key, task_token

STAGE = "describe"
ROW_FIELDS = ("X", "P", "Z", "Y", "norm", "segment", "frame", "atom")
SCHEMES = ("thiolate", "element")
# SOAP rows are cast and stored in batches of frames of at most this many bytes (float32):
# few large writes per class instead of one small write per frame.
_BATCH_BYTES = 4 << 20


@dataclass(frozen=True)
class DescriptorSpec:
    """Everything that determines a class row: the scheme, SOAP and neighbourhood settings."""

    scheme: str
    soap: SoapSettings
    neighbours: int = 4
    max_permutations: int | None = None
    block_frames: int = 100

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "soap": self.soap.to_dict(), "neighbours": self.neighbours,
                "max_permutations": self.max_permutations, "block_frames": self.block_frames}

    @classmethod
    def from_dict(cls, data: dict) -> DescriptorSpec:
        return cls(scheme=data["scheme"], soap=SoapSettings.from_dict(data["soap"]),
                   neighbours=data["neighbours"], max_permutations=data["max_permutations"],
                   block_frames=data["block_frames"])

    @property
    def name(self) -> str:
        return f"{self.scheme}-{settings_key(self.to_dict())}"

    def classes(self) -> list[str]:
        return class_names(self.scheme, list(self.soap.species))


def describe_frames(frames: list[Atoms], spec: DescriptorSpec,
                    frame_ids: list[tuple[int, int]] | None = None) -> dict[str, dict]:
    """Class rows of ``frames``, in memory: ``{class: {field: array}}``.

    ``frame_ids`` gives (segment, frame) per frame for the bookkeeping columns. Rows are
    ordered by frame, then atom; classes by the first frame that has rows of them.
    """
    forces = np.concatenate([_forces_or_nan(atoms) for atoms in frames] or [np.zeros((0, 3))])
    return _describe(frames, forces, spec, frame_ids, _InMemory())


def _describe(frames: list[Atoms], forces: np.ndarray, spec: DescriptorSpec,
              frame_ids: list[tuple[int, int]] | None, sink: _InMemory | _BlockWriter) -> dict:
    """Class rows of ``frames`` (whose ``forces`` are stacked) into ``sink``."""
    soap = make_soap(spec.soap)
    ids = list(frame_ids) if frame_ids else [(-1, index) for index in range(len(frames))]
    labels = ([f"segment {segment} frame {frame}" for segment, frame in ids] if frame_ids
              else [f"frame {frame}" for _, frame in ids])
    try:
        return _class_rows(frames, forces, spec, soap, ids, labels, sink)
    except (InputError, SchemeError):
        # The rows are computed class by class over all frames; checking frame by frame
        # raises the error of the first bad frame, as the user expects.
        _check_frames(frames, spec, soap, labels)
        raise
    finally:
        sink.close()


def _class_rows(frames: list[Atoms], forces: np.ndarray, spec: DescriptorSpec, soap,
                ids: list[tuple[int, int]], labels: list[str],
                sink: _InMemory | _BlockWriter) -> dict:
    """Every field but ``X`` of every class first, then the SOAP rows into ``sink``."""
    environments = describe_environments_many(frames, spec.scheme, neighbours=spec.neighbours,
                                              labels=labels)
    # Classes in the order of the first frame that has rows of them (stable: class order).
    environments = dict(sorted(environments.items(), key=lambda item: item[1][0][0]))
    offsets = np.concatenate([[0], np.cumsum([len(atoms) for atoms in frames], dtype=np.int64)])
    sink.start(_row_fields(forces, environments, offsets, ids), soap.get_number_of_features())
    _soap_rows_in_batches(frames, offsets, environments, soap, sink)
    return sink.finish()


def _soap_rows_in_batches(frames: list[Atoms], offsets: np.ndarray, environments: dict, soap,
                          sink: _InMemory | _BlockWriter) -> None:
    """The SOAP rows of all atoms as float32 into ``sink``, per class a batch of frames at a
    time."""
    plain = _plain_soap_frames(frames, soap)
    n_features = soap.get_number_of_features()
    # Per-frame arrays are reused: in Dask workers whose glibc mmap threshold is frozen at
    # 128 kB (see cluster.WORKER_MALLOC) every new larger array is a fresh mapping, whose
    # page faults cost a third as much as the SOAP itself.
    if soap.average == "off":
        soap.init_descriptor_array = _ReusedRows(n_features)
    # In memory all frames are one batch, whose array is the result: no rows are copied.
    capacity = (offsets[-1] if sink.batch_bytes is None
                else max(sink.batch_bytes // (4 * n_features), np.diff(offsets).max(initial=0)))
    batches = _batches(offsets, capacity)
    slot, ranges = _class_order(environments, offsets, batches)
    batch32 = np.empty((min(capacity, offsets[-1]), n_features), np.float32)
    for (first, stop), class_ranges in zip(itertools.pairwise(batches), ranges, strict=True):
        for index in range(first, stop):
            lo, hi = offsets[index], offsets[index + 1]
            if hi == lo:
                continue
            # Every atom has a class, so the SOAP rows of all atoms are computed, once per
            # frame.
            atoms = frames[index]
            rows = (soap.create_single(atoms) if plain[index]
                    else soap_rows(soap, atoms, np.arange(hi - lo)))
            # One pass casts the rows to float32 in the batch's class order.
            batch32[slot[lo:hi]] = rows
        for cls, (start, end) in zip(environments, class_ranges, strict=True):
            if end > start:
                sink.add_rows(cls, batch32[start:end])


def _batches(offsets: np.ndarray, capacity: int) -> list[int]:
    """Frame bounds of consecutive batches of frames of at most ``capacity`` atoms (a frame
    of more atoms than that is a batch alone)."""
    bounds = [0]
    while bounds[-1] < len(offsets) - 1:
        stop = int(np.searchsorted(offsets, offsets[bounds[-1]] + capacity, side="right")) - 1
        bounds.append(max(stop, bounds[-1] + 1))
    return bounds


def _row_fields(forces: np.ndarray, environments: dict, offsets: np.ndarray,
                ids: list[tuple[int, int]]) -> dict[str, dict]:
    """Every field but ``X`` of every class."""
    segment_of = np.array([segment for segment, _ in ids], dtype=np.int32)
    frame_of = np.array([frame for _, frame in ids], dtype=np.int32)
    fields = {}
    for cls, (frame, env) in environments.items():
        F = forces[offsets[frame] + env.atom]
        norm = np.linalg.norm(F, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            Y = np.where(norm[:, None] > 0, F / norm[:, None], 0.0)
        fields[cls] = {"P": env.P, "Z": env.Z.astype(np.int16), "Y": Y, "norm": norm,
                       "segment": segment_of[frame], "frame": frame_of[frame],
                       "atom": env.atom.astype(np.int32)}
    return fields


def _class_order(environments: dict, offsets: np.ndarray,
                 batches: list[int]) -> tuple[np.ndarray, list]:
    """A batch's rows ordered by class, then frame and atom (a class's rows of the batch are
    then one slice, written at once): the position there of every atom's row (indexed like
    the stacked atoms of all frames), and per batch the (start, stop) of each class (in
    ``environments`` order)."""
    n_batches = len(batches) - 1
    batch_of = [np.searchsorted(batches, frame, side="right") - 1
                for frame, _ in environments.values()]
    counts = np.array([np.bincount(batch, minlength=n_batches) for batch in batch_of],
                      dtype=np.int64).reshape(len(batch_of), n_batches)
    starts = np.zeros((len(counts) + 1, n_batches), dtype=np.int64)
    np.cumsum(counts, axis=0, out=starts[1:])
    slot = np.empty(offsets[-1], dtype=np.int64)
    for c, ((frame, env), batch) in enumerate(zip(environments.values(), batch_of,
                                                  strict=True)):
        # A class's rows are frame-major: row j is the (j - first row of its batch)-th of
        # the class in its batch.
        first_row = np.concatenate([[0], np.cumsum(counts[c])])[batch]
        slot[offsets[frame] + env.atom] = starts[c, batch] + np.arange(len(frame)) - first_row
    ranges = np.stack([starts[:-1].T, starts[1:].T], axis=-1)  # (batch, class, start/stop)
    return slot, ranges.tolist()


class _InMemory:
    """Collects the class rows as arrays (:func:`describe_frames`)."""

    batch_bytes = None  # one batch: add_rows gets all rows of a class at once

    def start(self, fields: dict[str, dict], n_features: int) -> None:
        self.rows = fields

    def add_rows(self, cls: str, rows: np.ndarray) -> None:
        """Keep the SOAP rows of class ``cls`` (all of them), without copying."""
        self.rows[cls]["X"] = rows

    def finish(self) -> dict[str, dict]:
        return {cls: {f: fields[f] for f in ROW_FIELDS} for cls, fields in self.rows.items()}

    def close(self) -> None:
        pass


class _ReusedRows:
    """``SOAP.init_descriptor_array`` handing out one zeroed array, grown as needed, so that
    DScribe fills the same memory frame after frame (its rows are copied out at once)."""

    def __init__(self, n_features: int):
        self.array = np.empty((0, n_features))

    def __call__(self, n_centers: int) -> np.ndarray:
        if len(self.array) < n_centers:
            self.array = np.empty((n_centers, self.array.shape[1]))
        out = self.array[:n_centers]
        out.fill(0.0)
        return out


def _plain_soap_frames(frames: list[Atoms], soap) -> np.ndarray:
    """Which frames ``soap.create_single(atoms)`` describes exactly as :func:`soap_rows` does
    (no error, no placeholder cell); the others go through :func:`soap_rows`."""
    if not frames:
        return np.zeros(0, dtype=bool)
    known = get_atomic_numbers(soap.species)
    numbers = np.concatenate([atoms.numbers for atoms in frames])
    positions = np.concatenate([atoms.positions for atoms in frames])
    if not (np.isin(numbers, known).all() and np.isfinite(positions).all()):
        return np.zeros(len(frames), dtype=bool)
    if not soap.periodic:
        return np.array([not atoms.pbc.any() for atoms in frames])
    return np.array([atoms.cell.volume != 0.0 for atoms in frames])


def _check_frames(frames: list[Atoms], spec: DescriptorSpec, soap, labels: list[str]) -> None:
    """Raise the first error of ``frames`` taken one by one (neighbourhoods, then SOAP)."""
    for atoms, label in zip(frames, labels, strict=True):
        environments = describe_environments(atoms, spec.scheme, neighbours=spec.neighbours,
                                             frame=label)
        centres = np.concatenate([env.atom for env in environments.values()] or [[]])
        if centres.size:
            soap_rows(soap, atoms, centres.astype(np.int64))


def _forces_or_nan(atoms: Atoms) -> np.ndarray:
    """Reference forces when the frame has them; NaN rows for structures to predict."""
    if atoms.calc is not None and "forces" in atoms.calc.results:
        return np.asarray(atoms.calc.results["forces"], dtype=float)
    return np.full((len(atoms), 3), np.nan)


def _read_frames(segment: Segment, start: int, stop: int) -> tuple[list[Atoms], np.ndarray]:
    """Frames ``start:stop`` of a segment as bare Atoms, and their forces stacked: what
    :meth:`Segment.read` gives, without its per-frame calculators (a quarter of its time)."""
    offsets = segment.offsets()[start:stop + 1]
    a0, a1 = int(offsets[0]), int(offsets[-1])
    group = segment.group
    numbers, positions = group["numbers"][a0:a1], group["positions"][a0:a1]
    cell, pbc = group["cell"][start:stop], group["pbc"][start:stop]
    frames = [Atoms(numbers=numbers[lo:hi], positions=positions[lo:hi], cell=cell[i], pbc=pbc[i])
              for i, (lo, hi) in enumerate(itertools.pairwise((offsets - a0).tolist()))]
    return frames, np.asarray(group["forces"][a0:a1], dtype=float)


def block_key(segment: int, block: int) -> str:
    return f"s{segment:06d}-b{block:06d}"


def describe_block(store_path: str, set_name: str, segment_id: int, block: int) -> dict:
    """Dask task: compute and write one block's class rows, then its done-marker.

    The result gives the rows per class and the task's wall time, split into reading the
    frames, computing and writing the rows, and writing the marker.
    """
    start = time.perf_counter()
    store = Store.open(store_path, mode="a")
    spec = DescriptorSpec.from_dict(store.root[f"classes/{set_name}"].attrs["spec"])
    first = block * spec.block_frames
    frames, forces = _read_frames(store.segment(segment_id), first, first + spec.block_frames)
    read = time.perf_counter()
    key = block_key(segment_id, block)
    try:
        counts = _describe(frames, forces, spec,
                           [(segment_id, first + i) for i in range(len(frames))],
                           _BlockWriter(store.path / "classes" / set_name, key))
        rows = time.perf_counter()
        store.mark_done(f"{STAGE}/{set_name}", key, {"rows": counts, "frames": len(frames)})
    except OSError as exc:  # disk full, quota, I/O error: the block stays without a marker
        raise StoreError(
            f"{store.path}: cannot write describe block {key} (segment {segment_id}, frames "
            f"{first}-{first + len(frames) - 1}): {exc.strerror or exc}; the block is not "
            "marked done, fix the file system and rerun to resume") from exc
    end = time.perf_counter()
    return {"key": key, "rows": counts, "wall_s": end - start, "read_s": read - start,
            "rows_s": rows - read, "mark_s": end - rows}


# A stored block of one class's rows is a Zarr group ``classes/<set>/<class>/<block>`` with two
# uncompressed one-chunk arrays: ``X`` (float32 SOAP rows) and ``rows`` (float64, the other
# fields side by side, integers exact), whose column ranges the group attribute ``columns``
# gives. Two arrays rather than one per field, because creating a Zarr node costs a few
# milliseconds, as much as describing a frame; uncompressed, because SOAP rows shrink by
# only about 10 % for three times the write time.
_PACKED = ("P", "Y", "norm", "Z", "segment", "frame", "atom")


class _BlockWriter:
    """Writes a block's class rows as it goes: ``X`` is streamed to its chunk file batch by
    batch, so a task holds a batch of SOAP rows, not the block's."""

    batch_bytes = _BATCH_BYTES

    def __init__(self, set_path: Path, key: str):
        self.set_path = set_path
        self.key = key
        self.files: dict = {}

    def start(self, fields: dict[str, dict], n_features: int) -> None:
        self.counts = {cls: len(f["atom"]) for cls, f in fields.items()}
        self.n_features = n_features
        self.columns, self.files = {}, {}
        for cls, f in fields.items():
            path = self.set_path / cls / self.key
            if path.exists():  # left by a killed task: no marker, so never read
                shutil.rmtree(path)
            columns, width = {}, 0
            for name in _PACKED:
                tail = f[name].shape[1:]
                size = int(np.prod(tail, dtype=np.int64))
                columns[name] = [width, width + size, f[name].dtype.name, list(tail)]
                width += size
            packed = np.empty((len(f["atom"]), width))
            for name, (lo, hi, _, _) in columns.items():
                packed[:, lo:hi] = f[name].reshape(len(packed), -1)
            _write_array(path / "rows", packed)
            self.columns[cls] = columns
            chunk = _chunk_path(path / "X", 2)
            chunk.parent.mkdir(parents=True)
            self.files[cls] = open(chunk, "wb", buffering=0)  # noqa: SIM115 (closed in finish)

    def add_rows(self, cls: str, rows: np.ndarray) -> None:
        """Append SOAP rows (float32, C-contiguous) to class ``cls``, in order."""
        self.files[cls].write(memoryview(rows).cast("B"))

    def finish(self) -> dict[str, int]:
        """Complete the groups (metadata last); returns the rows per class."""
        self.close()
        for cls in self.files:
            path = self.set_path / cls / self.key
            shape = (self.counts[cls], self.n_features)
            (path / "X" / "zarr.json").write_bytes(_array_document(np.float32, shape))
            _write_document(path, {**_GROUP_DOCUMENT, "attributes": {"columns": self.columns[cls]}})
        return self.counts

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def read_block(group: zarr.Group, fields: tuple[str, ...] = ROW_FIELDS) -> dict[str, np.ndarray]:
    """The ``fields`` of one stored block of class rows."""
    columns = group.attrs.get("columns")
    if columns is None:  # one array per field, as written by earlier versions
        return {f: group[f][:] for f in fields}
    packed = group["rows"][:] if set(fields) - {"X"} else None
    out = {}
    for f in fields:
        if f == "X":
            out[f] = group["X"][:]
        else:
            lo, hi, dtype, tail = columns[f]
            out[f] = packed[:, lo:hi].astype(dtype).reshape(-1, *tail)
    return out


# Zarr writes a node with about a dozen store round trips (parent checks, atomic renames);
# these helpers write the same files directly: the metadata documents come from Zarr, the
# chunks are the raw bytes of the ``bytes`` codec in the host's byte order. Group documents
# are written last, so a killed writer leaves no readable group (and no done-marker).
_GROUP_DOCUMENT = {"zarr_format": 3, "node_type": "group"}


def _write_array(path: Path, values: np.ndarray) -> None:
    chunk = _chunk_path(path, values.ndim)
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(memoryview(np.ascontiguousarray(values)).cast("B"))
    (path / "zarr.json").write_bytes(_array_document(values.dtype, values.shape))


def _write_document(path: Path, document: dict) -> None:
    """Write a node's metadata document atomically (as Zarr does): never half a document."""
    partial = path / f".zarr.json.{os.getpid()}"
    partial.write_bytes(json.dumps(document).encode())
    os.replace(partial, path / "zarr.json")


def _attributes(path: Path) -> dict:
    """The attributes of the node at ``path`` (none if there is no node)."""
    try:
        return json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
    except FileNotFoundError:
        return {}


def _chunk_path(path: Path, ndim: int) -> Path:
    """The file of chunk (0, ..., 0) of the array at ``path`` (default chunk key encoding)."""
    return path.joinpath("c", *["0"] * ndim)


def _array_document(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """Zarr's metadata document of an uncompressed one-chunk array."""
    document = {**_array_template(np.dtype(dtype).str, len(shape)), "shape": list(shape),
                "chunk_grid": {"name": "regular", "configuration": {
                    "chunk_shape": [max(shape[0], 1), *shape[1:]]}}}
    return json.dumps(document).encode()


@functools.cache
def _array_template(dtype: str, ndim: int) -> dict:
    files: dict = {}
    zarr.create_array(MemoryStore(files), shape=(1,) * ndim, dtype=dtype, compressors=None)
    document = json.loads(files["zarr.json"].to_bytes())
    codecs = [codec["name"] for codec in document["codecs"]]
    if codecs != ["bytes"] or document["chunk_key_encoding"] != {
            "name": "default", "configuration": {"separator": "/"}}:
        raise StoreError(f"unexpected Zarr defaults: codecs {codecs}, chunk keys "
                         f"{document['chunk_key_encoding']}")
    if np.dtype(dtype).itemsize > 1:
        document["codecs"] = [{"name": "bytes", "configuration": {"endian": sys.byteorder}}]
    return document


def plan_blocks(store: Store, block_frames: int) -> list[tuple[int, int]]:
    """(segment, block) pairs whose frames are final: full windows, or the tail of a
    complete segment (a growing segment's tail waits until it is complete)."""
    blocks = []
    for segment in store.segments():
        n = segment.n_frames
        full, tail = divmod(n, block_frames)
        last = full + (1 if tail and segment.attrs.get("complete") else 0)
        blocks.extend((segment.id, b) for b in range(last))
    return blocks


def prepare_set(store: Store, spec: DescriptorSpec) -> str:
    """Create (or reuse) the descriptor set's group with its class groups and permutations.

    Written directly like the blocks (a dozen Zarr node creations cost as much as
    describing 50 frames), the set's document with its spec last: a set whose preparation
    was interrupted has none and is prepared again.
    """
    name = spec.name
    set_path = store.path / "classes" / name
    if "spec" in _attributes(set_path):
        return name
    store.group("classes", create=True)  # raises on a read-only store
    shutil.rmtree(set_path, ignore_errors=True)
    for cls in spec.classes():
        perms = class_permutations(spec.scheme, cls, neighbours=spec.neighbours)
        _write_array(set_path / cls / "permutations", np.asarray(perms, dtype=np.int16))
        _write_document(set_path / cls, _GROUP_DOCUMENT)
    _write_document(set_path, {**_GROUP_DOCUMENT,
                               "attributes": {"spec": spec.to_dict(), "created": now_iso()}})
    return name


def describe(store_path: str | os.PathLike, scheme: str, soap: str | SoapSettings | None,
             client, neighbours: int = 4, max_permutations: int | None = None,
             block_frames: int = 100) -> dict:
    """Run the describe stage over all final frames of the store; returns a summary.

    ``block_frames`` sets the work per task. Besides its SOAP rows (about 0.02 ms of CPU per
    atom at the default SOAP settings) a block costs about 20 ms: opening the store, reading
    its frames, the done-marker and the task's round trip. Blocks of 10 000 atoms or more
    keep that near 10 % (the default, 100 frames, is 4000 atoms of Au_n(SCH3)_n rings, about
    25 %, and 16 000 atoms of Au38(SR)24 clusters, about 6 %); there should still be several
    blocks per worker, so that the workers finish together. The block size is part of the
    descriptor set's key: another size makes another set.
    """
    if scheme not in SCHEMES:
        raise InputError(f"describe: unknown scheme {scheme!r} (choose from {SCHEMES})")
    if block_frames < 1 or neighbours < 1:
        raise InputError("describe: --block-frames and --neighbours must be >= 1")
    store = Store.open(store_path, mode="a")
    if store.n_frames() == 0:
        raise StoreError(f"{store.path}: no frames to describe (ingest or sample first)")
    species = tuple(store.elements())
    periodic = any(bool(np.any(s.group["pbc"][: s.n_frames])) for s in store.segments()
                   if s.n_frames)
    settings = soap if isinstance(soap, SoapSettings) else (
        SoapSettings.parse(soap) if soap else SoapSettings())
    # Species and periodicity come from the store unless given explicitly.
    settings = replace(settings, species=settings.species or species,
                       periodic=settings.periodic or periodic)
    spec = DescriptorSpec(scheme, settings, neighbours, max_permutations, block_frames)
    if scheme == "thiolate":
        check_thiolate_elements(store)
    with writer_lock(store.path, f"describe-{spec.name}"):
        return _describe_set(store, spec, client)


def _describe_set(store: Store, spec: DescriptorSpec, client) -> dict:
    """Compute the set's blocks that have no done-marker yet."""
    new_set = f"classes/{spec.name}" not in store.root
    name = prepare_set(store, spec)
    stage = f"{STAGE}/{name}"
    done = store.done_keys(stage)
    todo = [(s, b) for s, b in plan_blocks(store, spec.block_frames) if block_key(s, b) not in done]
    token = task_token(store.path)
    futures = [client.submit(describe_block, str(store.path), name, s, b,
                             key=f"describe-{name}-{token}-{block_key(s, b)}", retries=2,
                             pure=False)
               for s, b in todo]
    if futures:
        from distributed import progress

        progress(futures)
    try:
        results = client.gather(futures)
    except OamlmError:
        if new_set:
            _withdraw_set(client, store, name, futures, f"describe-{name}-{token}-")
        raise
    return {"set": name, "blocks_computed": len(results), "blocks_done_before": len(done),
            "rows": class_row_counts(store, name), "store": str(store.path)}


def check_thiolate_elements(store: Store) -> None:
    """Raise :class:`SchemeError` naming the first stored atom whose element the thiolate
    scheme does not know (checked on the element arrays, before any task is started)."""
    allowed = [1, 6, 16, 79]
    for segment in store.segments():
        numbers = segment.group["numbers"][: segment.n_atoms]
        bad = np.flatnonzero(~np.isin(numbers, allowed))
        if bad.size:
            offsets = segment.offsets()
            frame = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            atom = int(bad[0] - offsets[frame])
            symbol = chemical_symbols[int(numbers[bad[0]])]
            origin = segment.attrs.get("source", {}).get("path") or segment.attrs.get("name")
            where = f"segment {segment.id}" + (f" ({origin})" if origin else "")
            raise SchemeError(f"{where} frame {frame}, atom {atom} ({symbol}): element "
                              f"{symbol} is not in the thiolate scheme (Au, S, C, H); use "
                              "--scheme element")


def _withdraw_set(client, store: Store, name: str, futures: list, prefix: str) -> None:
    """After an error in the first run of a descriptor set: stop its blocks and, if none of
    them was completed, remove the set again, so a rejected request leaves no trace.

    A cancelled task that is already running cannot be interrupted, so the set is removed
    only once no worker runs one of its blocks any more (checked twice, 0.2 s apart).
    """
    client.cancel(futures)

    def running(dask_worker) -> bool:
        return any(str(ts.key).startswith(prefix) for ts in dask_worker.state.executing)

    deadline, quiet = time.monotonic() + 60.0, 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            busy = any(client.run(running).values())
        except Exception:  # the cluster is going away: keep the set, it is harmless
            return
        quiet = 0 if busy else quiet + 1
    if quiet >= 2 and not store.done_keys(f"{STAGE}/{name}"):
        shutil.rmtree(store.path / "classes" / name, ignore_errors=True)


def class_row_counts(store: Store, set_name: str) -> dict[str, int]:
    """Rows per class over completed blocks (read from the done-markers)."""
    counts: dict[str, int] = {}
    stage_group = f"done/{STAGE}/{set_name}"
    for key in sorted(store.done_keys(f"{STAGE}/{set_name}")):
        for cls, n in store.root[f"{stage_group}/{key}"].attrs["rows"].items():
            counts[cls] = counts.get(cls, 0) + n
    return counts


def done_blocks(store: Store, set_name: str, cls: str) -> list[str]:
    """Completed blocks that hold rows of ``cls``, in order.

    Found from the done-markers rather than by listing the class group, which would also meet
    blocks that are being written (and make Zarr warn about them).
    """
    base = store.path / "classes" / set_name / cls
    return sorted(k for k in store.done_keys(f"{STAGE}/{set_name}")
                  if (base / k / "zarr.json").exists())


def load_class_rows(store: Store, set_name: str, cls: str,
                    fields: tuple[str, ...] = ROW_FIELDS) -> dict[str, np.ndarray]:
    """All completed rows of one class, concatenated in block order."""
    group = store.group(f"classes/{set_name}/{cls}")
    keys = done_blocks(store, set_name, cls)
    if not keys:
        raise StoreError(f"{store.path}: no described rows for class {cls} in set {set_name}")
    parts = [read_block(group[k], fields) for k in keys]
    return {f: np.concatenate([p[f] for p in parts]) for f in fields}
