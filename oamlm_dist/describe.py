"""The ``describe`` stage: atom classes, alignment neighbourhoods and SOAP rows per class.

One Dask task per frame block; each task reads its frames from the store, computes its
rows (DScribe serially inside the task) and writes them to
``classes/<set>/<class>/<block>/{X,P,Z,Y,norm,segment,frame,atom}``, then marks the block
done. Blocks are fixed ``block_frames``-frame windows of a segment, so a block's rows
never change once written; a rerun after a kill computes only blocks without a marker.
A descriptor set is keyed by its settings: other settings make another set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms

from oamlm_dist.descriptors import SoapSettings, make_soap, soap_rows
from oamlm_dist.environments import class_names, class_permutations, describe_environments
from oamlm_dist.errors import InputError, StoreError
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

    ``frame_ids`` gives (segment, frame) per frame for the bookkeeping columns.
    """
    soap = make_soap(spec.soap)
    parts: dict[str, list[dict]] = {}
    for index, atoms in enumerate(frames):
        segment, frame = frame_ids[index] if frame_ids else (-1, index)
        label = f"segment {segment} frame {frame}" if frame_ids else f"frame {frame}"
        environments = describe_environments(atoms, spec.scheme, neighbours=spec.neighbours,
                                             frame=label)
        centres = np.concatenate([env.atom for env in environments.values()])
        if centres.size == 0:
            continue
        X_all = soap_rows(soap, atoms, centres)
        row_of = {int(atom): row for row, atom in enumerate(centres)}
        forces = _forces_or_nan(atoms)
        for cls, env in environments.items():
            if len(env.atom) == 0:
                continue
            F = forces[env.atom]
            norm = np.linalg.norm(F, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                Y = np.where(norm[:, None] > 0, F / norm[:, None], 0.0)
            parts.setdefault(cls, []).append({
                "X": X_all[[row_of[int(a)] for a in env.atom]].astype(np.float32),
                "P": env.P, "Z": env.Z.astype(np.int16), "Y": Y, "norm": norm,
                "segment": np.full(len(env.atom), segment, np.int32),
                "frame": np.full(len(env.atom), frame, np.int32),
                "atom": env.atom.astype(np.int32),
            })
    return {cls: {f: np.concatenate([p[f] for p in rows]) for f in ROW_FIELDS}
            for cls, rows in parts.items()}


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
    set_group = store.group(f"classes/{set_name}")
    spec = DescriptorSpec.from_dict(set_group.attrs["spec"])
    segment = store.segment(segment_id)
    first = block * spec.block_frames
    frames = segment.read(first, first + spec.block_frames)
    rows = describe_frames(frames, spec, [(segment_id, first + i) for i in range(len(frames))])
    key = block_key(segment_id, block)
    counts = {}
    for cls, fields in rows.items():
        group = set_group[cls].create_group(key, overwrite=True)
        for name, values in fields.items():
            group.create_array(name, data=values, chunks=(max(len(values), 1),
                                                           *values.shape[1:]))
        counts[cls] = len(fields["atom"])
    store.mark_done(f"{STAGE}/{set_name}", key, {"rows": counts, "frames": len(frames)})
    return {"key": key, "rows": counts, "wall_s": time.perf_counter() - start}


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
    return {f: np.concatenate([group[k][f][:] for k in keys]) for f in fields}
