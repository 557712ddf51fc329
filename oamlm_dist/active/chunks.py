"""Nearsighted chunks: the atoms around one atom of a large structure, cut out in vacuum.

A chunk holds every atom within ``cutoff`` of its central atom (minimum-image distances in
periodic cells) at its minimum-image position relative to the centre, so the centre sees
exactly the neighbourhood it has in the full structure up to ``cutoff``. The chunk is
translated into an orthorhombic, non-periodic box with ``vacuum`` on every side
(cell = extent + 2·vacuum). Its fine calculation is trusted for the central atom only;
training keeps that atom's row and discards the others (:func:`central_rows`), whose
environments are truncated by the cut.

Group rule (``keep_groups``, the default for thiolate systems): a cut never splits a
methyl or thiolate group. Closure is taken over the covalent C–H (≤ ``C_H_BOND``) and S–C
(≤ ``S_C_BOND``) bonds only: an included H brings its C, an included C brings its H and its
S, an included S brings its C (and so that C's H), repeated until nothing is added. Then every
included S brings its two nearest Au, the neighbours the thiolate scheme aligns an S with, so
each S of a chunk can be described. C–C bonds are not followed and Au is otherwise cut by
distance: a thiolate keeps its S–CH3 whole, and an alkane chunk is cut at C–C bonds (whole
CH2/CH3 units, no capping hydrogens). Atoms added by the rule only extend the chunk beyond
the cutoff; the centre's environment within the cutoff is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list

from oamlm_dist.environments import C_H_BOND, S_C_BOND
from oamlm_dist.errors import InputError

DEFAULT_CUTOFF = 6.0  # Å; the sources use 6-8 Å for DFT force locality
DEFAULT_VACUUM = 6.0  # Å


@dataclass
class Chunk:
    """A cut-out chunk: ``atoms`` (non-periodic, vacuum-padded), the index of the central
    atom in it, and the indices of its atoms in the full structure (``indices[centre]`` is
    the full structure's central atom)."""

    atoms: Atoms
    centre: int
    indices: np.ndarray


def _relative(atoms: Atoms, centre: int) -> np.ndarray:
    vectors = atoms.positions - atoms.positions[centre]
    if atoms.pbc.any():
        vectors, _ = find_mic(vectors, atoms.cell, atoms.pbc)
    return vectors


def _group_closure(atoms: Atoms, chosen: np.ndarray) -> np.ndarray:
    """Extend ``chosen`` (bool per atom) by the group rule of the module docstring."""
    symbols = set(atoms.get_chemical_symbols())
    if "C" not in symbols:
        return chosen
    cutoffs = {("C", "H"): C_H_BOND, ("C", "S"): S_C_BOND}
    first, second = neighbor_list("ij", atoms, cutoffs)
    chosen = chosen.copy()
    while True:
        # Bonds are symmetric: one pass over (i, j) adds j for every chosen i.
        grow = np.zeros_like(chosen)
        grow[second[chosen[first]]] = True
        grow &= ~chosen
        if not grow.any():
            break
        chosen |= grow
    gold = np.flatnonzero(atoms.numbers == 79)
    if gold.size:
        for sulfur in np.flatnonzero(chosen & (atoms.numbers == 16)):
            distances = atoms.get_distances(int(sulfur), gold, mic=bool(atoms.pbc.any()))
            chosen[gold[np.argsort(distances, kind="stable")[:2]]] = True
    return chosen


def cut_chunk(atoms: Atoms, centre: int, cutoff: float = DEFAULT_CUTOFF,
              vacuum: float = DEFAULT_VACUUM, keep_groups: bool | None = None) -> Chunk:
    """Cut the chunk around atom ``centre``.

    Parameters
    ----------
    atoms : ase.Atoms
        The full structure (periodic or not); it is not modified.
    centre : int
        Index of the central atom.
    cutoff : float
        Atoms with a (minimum-image) distance ``<= cutoff`` Å from the centre are kept.
    vacuum : float
        Vacuum in Å between the chunk's extent and each cell face.
    keep_groups : bool, optional
        Apply the group rule (whole CH3/SCH3 groups); default: when the structure has C.

    Returns
    -------
    Chunk
        Atoms ordered as in the full structure; no calculator, no constraints.
    """
    if not 0 <= centre < len(atoms):
        raise InputError(f"chunk centre {centre} is not an atom index (structure has "
                         f"{len(atoms)} atoms)")
    if not cutoff > 0 or not vacuum >= 0:
        raise InputError(f"chunk cutoff must be > 0 and vacuum >= 0 Å, got {cutoff}, {vacuum}")
    vectors = _relative(atoms, centre)
    chosen = np.linalg.norm(vectors, axis=1) <= cutoff
    if keep_groups is None:
        keep_groups = "C" in atoms.get_chemical_symbols()
    if keep_groups:
        chosen = _group_closure(atoms, chosen)
    indices = np.flatnonzero(chosen)
    positions = vectors[indices]
    low, high = positions.min(axis=0), positions.max(axis=0)
    chunk = Atoms(numbers=atoms.numbers[indices], positions=positions - low + vacuum,
                  cell=np.diag(high - low + 2 * vacuum), pbc=False)
    chunk.info.update({"chunk_centre": int(centre), "chunk_cutoff": float(cutoff)})
    return Chunk(chunk, int(np.searchsorted(indices, centre)), indices)


def central_rows(rows: dict[str, dict], centres: list[int | None]) -> dict[str, dict]:
    """Keep only the central atom's rows of chunk frames.

    Parameters
    ----------
    rows : dict
        ``{class: {field: array}}`` from :func:`~oamlm_dist.describe.describe_frames` of a
        list of frames (the ``frame`` field indexes that list).
    centres : list
        Per frame: the central atom's index (a chunk: only its row is kept) or None (a full
        structure: every row is kept).

    Returns
    -------
    dict
        The same layout; classes left without rows are dropped.
    """
    lookup = np.array([-1 if c is None else c for c in centres], dtype=np.int64)
    out = {}
    for class_name, fields in rows.items():
        wanted = lookup[fields["frame"]]
        keep = (wanted < 0) | (fields["atom"] == wanted)
        if keep.any():
            out[class_name] = {k: v[keep] for k, v in fields.items()}
    return out
