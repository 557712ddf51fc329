"""The ``describe`` stage: atom classes, alignment neighbourhoods and SOAP rows per class.

One Dask task per frame block; each task reads its frames from the store, computes its
rows (DScribe serially inside the task) and writes them to
``classes/<set>/<class>/<block>/{X,P,Z,Y,norm,segment,frame,atom}``, then marks the block
done. Blocks are fixed ``block_frames``-frame windows of a segment, so a block's rows
never change once written; a rerun after a kill computes only blocks without a marker.
A descriptor set is keyed by its settings: other settings make another set.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr
from ase import Atoms
from dscribe.utils.species import get_atomic_numbers
from zarr.storage import MemoryStore

from oamlm_dist.descriptors import SoapSettings, make_soap, soap_rows
from oamlm_dist.environments import (
    class_names,
    class_permutations,
    describe_environments,
    describe_environments_many,
)
from oamlm_dist.errors import InputError, SchemeError, StoreError
from oamlm_dist.store import Store, now_iso, settings_key

STAGE = "describe"
ROW_FIELDS = ("X", "P", "Z", "Y", "norm", "segment", "frame", "atom")
SCHEMES = ("thiolate", "element")


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
    soap = make_soap(spec.soap)
    ids = list(frame_ids) if frame_ids else [(-1, index) for index in range(len(frames))]
    labels = ([f"segment {segment} frame {frame}" for segment, frame in ids] if frame_ids
              else [f"frame {frame}" for _, frame in ids])
    try:
        return _class_rows(frames, spec, soap, ids, labels)
    except (InputError, SchemeError):
        # The rows are computed class by class over all frames; checking frame by frame
        # raises the error of the first bad frame, as the user expects.
        _check_frames(frames, spec, soap, labels)
        raise


def _class_rows(frames: list[Atoms], spec: DescriptorSpec, soap, ids: list[tuple[int, int]],
                labels: list[str]) -> dict[str, dict]:
    environments = describe_environments_many(frames, spec.scheme, neighbours=spec.neighbours,
                                              labels=labels)
    if not environments:
        return {}
    # Classes in the order of the first frame that has rows of them (stable: class order).
    environments = dict(sorted(environments.items(), key=lambda item: item[1][0][0]))
    n_atoms = np.array([len(atoms) for atoms in frames])
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    n_features = soap.get_number_of_features()
    X = {cls: np.empty((len(env.atom), n_features), np.float32)
         for cls, (_, env) in environments.items()}
    # Rows of frame i of a class: bounds[cls][i]:bounds[cls][i + 1] (rows are frame-major).
    bounds = {cls: np.searchsorted(frame, np.arange(len(frames) + 1))
              for cls, (frame, _) in environments.items()}
    plain = _plain_soap_frames(frames, soap)
    # Per-frame arrays are reused: in Dask workers (whose nanny sets MALLOC_TRIM_THRESHOLD_)
    # every new array above 128 kB is a fresh mapping, and its page faults cost a third as
    # much as the SOAP itself.
    if soap.average == "off":
        soap.init_descriptor_array = _ReusedRows(n_features)
    frame32 = np.empty((max(n_atoms, default=0), n_features), np.float32)
    for index, atoms in enumerate(frames):
        n = n_atoms[index]
        if not n:
            continue
        # Every atom has a class, so the SOAP rows of all atoms are computed, once per frame.
        rows = (soap.create_single(atoms) if plain[index]
                else soap_rows(soap, atoms, np.arange(n)))
        np.copyto(frame32[:n], rows, casting="same_kind")
        for cls, (_, env) in environments.items():
            lo, hi = bounds[cls][index], bounds[cls][index + 1]
            if hi > lo:
                # mode="clip" (the atoms are valid) lets take write straight into X.
                np.take(frame32[:n], env.atom[lo:hi], axis=0, out=X[cls][lo:hi], mode="clip")
    forces = np.concatenate([_forces_or_nan(atoms) for atoms in frames])
    segment_of = np.array([segment for segment, _ in ids], dtype=np.int32)
    frame_of = np.array([frame for _, frame in ids], dtype=np.int32)
    out = {}
    for cls, (frame, env) in environments.items():
        F = forces[offsets[frame] + env.atom]
        norm = np.linalg.norm(F, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            Y = np.where(norm[:, None] > 0, F / norm[:, None], 0.0)
        out[cls] = {"X": X[cls], "P": env.P, "Z": env.Z.astype(np.int16), "Y": Y, "norm": norm,
                    "segment": segment_of[frame], "frame": frame_of[frame],
                    "atom": env.atom.astype(np.int32)}
    return out


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


def block_key(segment: int, block: int) -> str:
    return f"s{segment:06d}-b{block:06d}"


def describe_block(store_path: str, set_name: str, segment_id: int, block: int) -> dict:
    """Dask task: compute and write one block's class rows, then its done-marker."""
    start = time.perf_counter()
    store = Store.open(store_path, mode="a")
    spec = DescriptorSpec.from_dict(store.root[f"classes/{set_name}"].attrs["spec"])
    segment = store.segment(segment_id)
    first = block * spec.block_frames
    frames = segment.read(first, first + spec.block_frames)
    rows = describe_frames(frames, spec, [(segment_id, first + i) for i in range(len(frames))])
    key = block_key(segment_id, block)
    counts = {}
    for cls, fields in rows.items():
        write_block(store.path / "classes" / set_name / cls / key, fields)
        counts[cls] = len(fields["atom"])
    store.mark_done(f"{STAGE}/{set_name}", key, {"rows": counts, "frames": len(frames)})
    return {"key": key, "rows": counts, "wall_s": time.perf_counter() - start}


# Stored block of class rows: a Zarr group with two uncompressed one-chunk arrays, ``X``
# (float32 SOAP rows) and ``rows`` (float64: the other fields side by side, integers exact),
# whose column ranges the group's ``columns`` attribute gives. Few, uncompressed arrays
# because every Zarr node costs milliseconds to create, as much as describing ten frames,
# and SOAP rows compress by only about 10 %.
_PACKED = ("P", "Y", "norm", "Z", "segment", "frame", "atom")


def write_block(path: Path, fields: dict[str, np.ndarray]) -> None:
    """Write one class's rows of one block as the Zarr group ``path`` (replacing it)."""
    columns, start = {}, 0
    for name in _PACKED:
        values = fields[name]
        width = int(np.prod(values.shape[1:], dtype=np.int64))
        columns[name] = [start, start + width, values.dtype.name, list(values.shape[1:])]
        start += width
    n = len(fields["atom"])
    packed = np.empty((n, start))
    for name in _PACKED:
        lo, hi = columns[name][:2]
        packed[:, lo:hi] = fields[name].reshape(n, -1)
    _write_group(path, {"X": fields["X"], "rows": packed}, {"columns": columns})


def read_block(group: zarr.Group, fields: tuple[str, ...] = ROW_FIELDS) -> dict[str, np.ndarray]:
    """The ``fields`` of one stored block of class rows (see :func:`write_block`)."""
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


def _write_group(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """A Zarr v3 group of uncompressed one-chunk arrays, written as files.

    Zarr itself writes a node with a dozen store round trips (parent checks, atomic renames);
    here the metadata documents come from Zarr (:func:`_array_document`) and the chunks are
    the raw bytes of the ``bytes`` codec. The group document is written last, so a killed
    writer leaves no readable group; the block's done-marker comes after it anyway.
    """
    if path.exists():
        shutil.rmtree(path)
    for name, values in arrays.items():
        doc = _array_document(values.dtype.str, values.shape[1:])
        endian = doc["codecs"][0]["configuration"]["endian"]
        values = np.ascontiguousarray(
            values, dtype=values.dtype.newbyteorder("<" if endian == "little" else ">"))
        doc = {**doc, "shape": list(values.shape),
               "chunk_grid": {"name": "regular",
                              "configuration": {"chunk_shape": [max(len(values), 1),
                                                                *values.shape[1:]]}}}
        separator = doc["chunk_key_encoding"]["configuration"]["separator"]
        chunk = path / name / separator.join(["c"] + ["0"] * values.ndim)
        chunk.parent.mkdir(parents=True)
        chunk.write_bytes(memoryview(values).cast("B"))
        (path / name / "zarr.json").write_bytes(json.dumps(doc).encode())
    (path / "zarr.json").write_bytes(json.dumps({**_GROUP_DOCUMENT, "attributes": attrs}).encode())


@functools.cache
def _array_document(dtype: str, tail: tuple[int, ...]) -> dict:
    """Zarr's metadata document of an uncompressed array of rows of shape ``tail``."""
    files: dict = {}
    zarr.create_array(MemoryStore(files), shape=(1, *tail), dtype=dtype, compressors=None)
    doc = json.loads(files["zarr.json"].to_bytes())
    codecs = [codec["name"] for codec in doc["codecs"]]
    if codecs != ["bytes"] or doc["chunk_key_encoding"]["name"] != "default":
        raise StoreError(f"unexpected Zarr array defaults {codecs}, {doc['chunk_key_encoding']}")
    return doc


_GROUP_DOCUMENT = {"zarr_format": 3, "node_type": "group"}


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
    """Create (or reuse) the descriptor set's group with its class groups and permutations."""
    name = spec.name
    path = f"classes/{name}"
    if path in store.root:
        return name
    group = store.group(path, create=True)
    for cls in spec.classes():
        class_group = group.require_group(cls)
        perms = class_permutations(spec.scheme, cls, neighbours=spec.neighbours)
        class_group.create_array("permutations", data=np.asarray(perms, dtype=np.int16),
                                 overwrite=True)
    group.attrs.update({"spec": spec.to_dict(), "created": now_iso()})
    return name


def describe(store_path: str | os.PathLike, scheme: str, soap: str | SoapSettings | None,
             client, neighbours: int = 4, max_permutations: int | None = None,
             block_frames: int = 100) -> dict:
    """Run the describe stage over all final frames of the store; returns a summary."""
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
    name = prepare_set(store, spec)
    stage = f"{STAGE}/{name}"
    done = store.done_keys(stage)
    todo = [(s, b) for s, b in plan_blocks(store, block_frames) if block_key(s, b) not in done]
    futures = [client.submit(describe_block, str(store.path), name, s, b,
                             key=f"describe-{name}-{block_key(s, b)}", retries=2, pure=False)
               for s, b in todo]
    if futures:
        from distributed import progress

        progress(futures)
    results = client.gather(futures)
    return {"set": name, "blocks_computed": len(results), "blocks_done_before": len(done),
            "rows": class_row_counts(store, name), "store": str(store.path)}


def class_row_counts(store: Store, set_name: str) -> dict[str, int]:
    """Rows per class over completed blocks (read from the done-markers)."""
    counts: dict[str, int] = {}
    stage_group = f"done/{STAGE}/{set_name}"
    for key in sorted(store.done_keys(f"{STAGE}/{set_name}")):
        for cls, n in store.root[f"{stage_group}/{key}"].attrs["rows"].items():
            counts[cls] = counts.get(cls, 0) + n
    return counts


def load_class_rows(store: Store, set_name: str, cls: str,
                    fields: tuple[str, ...] = ROW_FIELDS) -> dict[str, np.ndarray]:
    """All completed rows of one class, concatenated in block order."""
    group = store.group(f"classes/{set_name}/{cls}")
    done = store.done_keys(f"{STAGE}/{set_name}")
    keys = sorted(k for k in group.group_keys() if k in done)
    if not keys:
        raise StoreError(f"{store.path}: no described rows for class {cls} in set {set_name}")
    parts = [read_block(group[k], fields) for k in keys]
    return {f: np.concatenate([p[f] for p in parts]) for f in fields}
