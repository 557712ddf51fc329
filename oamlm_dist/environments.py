"""Atom classes and the neighbourhoods that force-direction alignment superimposes.

Every atom gets a *class* (one EMLM and one OAMLM are trained per class) and an *alignment
neighbourhood*: a fixed-width list of neighbour positions relative to the atom, which the
alignment kernels superimpose (Arun/Kabsch SVD) over a small set of permutations.

Two schemes are available:

``"thiolate"``
    Au–SCH3 systems (thiolate-protected gold clusters, gold-thiolate rings), following
    Pihlajamäki et al., "Orientation Adaptive Minimal Learning Machine: Application to
    Thiolate-Protected Gold Nanoclusters and Gold-Thiolate Rings", sec. II C. Classes and
    neighbourhoods (width in brackets):

    ========  ====================================================================  =========
    class     neighbours, in stored order                                           perms
    ========  ====================================================================  =========
    H  (3)    its C (within 1.5 Å), then the two other H on that C (nearest first)  swap H
    C  (4)    its S (within 2.2 Å), then its three H (within 1.5 Å, nearest first) all 3! H
    S  (3)    its C (within 2.2 Å), then the two nearest Au (at any distance)       swap Au
    Au_unit   per S within 3.0 Å (nearest two, nearest first) a block (S, the C of  swap the
    (6)       that S, the Au nearest to that S other than the centre); a half-unit  blocks
              has one block, the second is padding
    Au_core   every S within 3.0 Å (nearest first), then Au within 5.0 Å            identity
    (12)      (nearest first), at most 12
    ========  ====================================================================  =========

    A gold atom is a *unit* Au when it sits in an S–Au–S unit: at least two S within
    ``AU_S_BOND`` (3.0 Å), whatever its Au neighbours (ring and staple Au approach other Au
    to aurophilic distances below 3.0 Å in hot MD and in small rings). With exactly one such
    S and no Au within ``AU_AU_BOND`` (3.0 Å) it is a *half-unit* (a unit with a broken Au–S
    bond), stored in the ``Au_unit`` class with one block. Every other Au is a *core* Au,
    including core-surface Au bound to one S (they have Au neighbours at 2.8-2.9 Å).
    Core Au are aligned later by the three-point scheme of the paper (S + nearest Au when both
    environments have an S, else ordered Au pairs); ``Z[:, 0] == 16`` tells that a core row has
    an S, and the Au points follow the S points in order of distance.

    Bonds use the cut-offs ``C_H_BOND`` (1.5 Å), ``S_C_BOND`` (2.2 Å), ``AU_S_BOND`` and
    ``AU_AU_BOND``; they are loose enough for hot MD frames. Chemistry outside these rules
    raises :class:`~oamlm_dist.errors.SchemeError` naming the frame and the atom.

``"element"``
    Any chemistry (Pihlajamäki et al., "Orientation Adaptive Minimal Learning Machine for
    Directions of Atomic Forces", sec. 2.1): class = element symbol,
    neighbourhood = the ``M`` nearest atoms of any element (nearest first, default ``M = 4``),
    permutations = all ``M!`` reorderings, optionally restricted per row to element-respecting
    ones and capped (:func:`permutation_mask`).

Conventions shared by both schemes (and relied on by the alignment kernels and the store):

* The centre atom is the origin and is not stored. ``P`` holds neighbour positions minus the
  centre position under the minimum-image convention; multi-bond vectors (e.g. H to the other
  H of its methyl) are chained from bond vectors, so molecules crossing a periodic boundary
  stay whole.
* Padding is ``NaN`` in ``P`` and ``0`` in ``Z``. Alignments use only points present in both
  environments.
* A permutation ``p`` (a row of :func:`class_permutations`) reorders the *reference*
  neighbours: reference point ``p[k]`` is matched with query point ``k``. Row 0 of every
  table is the identity and tables are in lexicographic order.
* Neighbours at equal distance (within 1e-8 Å) are ordered by atom index, so symmetric
  structures and their rotated copies give identical orderings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.geometry import complete_cell, minkowski_reduce

from oamlm_dist.errors import InputError, SchemeError

SCHEMES = ("thiolate", "element")

#: Thiolate-scheme bond cut-offs in Å (equilibrium: C–H 1.09, S–C 1.82, Au–S 2.3-2.5).
C_H_BOND = 1.5
S_C_BOND = 2.2
AU_S_BOND = 3.0
AU_AU_BOND = 3.0
#: Core-Au neighbourhood: Au within this radius (Å), at most ``CORE_WIDTH`` points in all.
CORE_RADIUS = 5.0
CORE_WIDTH = 12

#: Largest ``M`` of the element scheme; its permutation table has ``M!`` rows (8! = 40320).
MAX_NEIGHBOURS = 8

THIOLATE_CLASSES = ("Au_core", "Au_unit", "S", "C", "H")
_THIOLATE_Z = {"Au_core": 79, "Au_unit": 79, "S": 16, "C": 6, "H": 1}
_THIOLATE_WIDTH = {"Au_core": CORE_WIDTH, "Au_unit": 6, "S": 3, "C": 4, "H": 3}
_THIOLATE_HINT = ("the thiolate scheme covers intact Au–SCH3 systems only (use --scheme element "
                  "for other chemistry or for dissociating structures)")

# Centre-candidate pairs per distance block: bounds memory on large frames.
_PAIR_BLOCK = 1 << 20
# Distances are compared after rounding so that ties break by atom index, not by noise.
_TIE_DECIMALS = 8


@dataclass(frozen=True)
class ClassEnvironments:
    """Alignment neighbourhoods of the atoms of one class in one frame.

    Attributes
    ----------
    atom : numpy.ndarray
        ``(n,)`` int64, indices of the centre atoms in the frame, ascending.
    P : numpy.ndarray
        ``(n, width, 3)`` float64, neighbour positions relative to the centre (minimum
        image), ``NaN`` where padded.
    Z : numpy.ndarray
        ``(n, width)`` int16, neighbour atomic numbers, ``0`` where padded.
    """

    atom: np.ndarray
    P: np.ndarray
    Z: np.ndarray

    def __len__(self) -> int:
        return len(self.atom)

    @property
    def width(self) -> int:
        """Number of neighbour slots per row (fixed per scheme and class)."""
        return self.P.shape[1]


@dataclass(frozen=True)
class _Nearest:
    """Sorted neighbour lists: ``idx`` (-1), ``vec`` (NaN) and ``dist`` (inf) when absent."""

    idx: np.ndarray
    vec: np.ndarray
    dist: np.ndarray

    @property
    def count(self) -> np.ndarray:
        return (self.idx >= 0).sum(axis=1)


def _periodic_axes(atoms: Atoms) -> np.ndarray:
    # A periodic axis without a cell vector is not periodic (as in ase.geometry.find_mic).
    return atoms.cell.array.any(axis=1) & atoms.pbc


class _Frame:
    """Positions, minimum-image neighbour search and error messages of a stack of frames.

    The frames share their atomic numbers (in order), cell and pbc; atom ``i`` of frame ``b``
    is atom ``b * n + i`` of the stack, and neighbour searches never cross frames. Stacking
    turns many numpy calls on tiny frames into a few on larger arrays; every distance is
    computed exactly as for the frame alone, so results do not depend on the stacking.
    """

    def __init__(self, frames: Sequence[Atoms], label: object | None):
        atoms = frames[0]
        self.n_frames = len(frames)
        self.positions = np.concatenate([a.get_positions() for a in frames])
        self.numbers = np.tile(atoms.get_atomic_numbers(), self.n_frames)
        self.label = label
        self.pbc = _periodic_axes(atoms)
        self.lattice = np.zeros((0, 3))  # reduced basis of the periodic directions
        self.coordinates = np.zeros((3, 0))  # vector -> coordinates in that basis (projected)
        self.images = np.zeros((0, 3))  # neighbouring images to search after wrapping
        if self.pbc.any():
            # Only the component of a vector in the span of the periodic cell vectors can
            # change. Wrapped in a Minkowski-reduced basis of that span, its shortest image is
            # itself or a {-1, 0, 1} combination away; an orthogonal basis needs no search.
            reduced, _ = minkowski_reduce(complete_cell(atoms.cell.array), pbc=self.pbc)
            self.lattice = reduced[self.pbc]
            self.coordinates = np.linalg.pinv(self.lattice)
            gram = self.lattice @ self.lattice.T
            if not np.allclose(gram, np.diag(np.diag(gram))):
                shifts = np.array(list(product((-1, 0, 1), repeat=len(self.lattice))))
                self.images = shifts[shifts.any(axis=1)] @ self.lattice

    def minimum_image(self, D: np.ndarray) -> np.ndarray:
        """Shortest periodic images of difference vectors ``D`` (..., 3)."""
        if not len(self.lattice):
            return D
        D = D - np.round(D @ self.coordinates) @ self.lattice
        best, best_d2 = D, np.einsum("...i,...i->...", D, D)
        for image in self.images:
            shifted = D + image
            d2 = np.einsum("...i,...i->...", shifted, shifted)
            shorter = d2 < best_d2
            best = np.where(shorter[..., None], shifted, best)
            best_d2 = np.minimum(d2, best_d2)
        return best

    def of_element(self, z: int) -> np.ndarray:
        return np.flatnonzero(self.numbers == z)

    def nearest(
        self, centres: np.ndarray, candidates: np.ndarray, k: int, cutoff: float = np.inf
    ) -> _Nearest:
        """The ``k`` nearest ``candidates`` (ascending indices) within ``cutoff`` of each centre.

        ``centres`` and ``candidates`` hold the same atoms of every frame, frame by frame (as
        :meth:`of_element` gives them). An atom is never its own neighbour. Rows are sorted by
        distance, ties by atom index.
        """
        n_frames = self.n_frames
        C = centres.reshape(n_frames, -1)
        K = candidates.reshape(n_frames, -1)
        n, m = C.shape[1], K.shape[1]
        idx = np.full((n_frames, n, k), -1, dtype=np.int64)
        vec = np.full((n_frames, n, k, 3), np.nan)
        dist = np.full((n_frames, n, k), np.inf)
        kk = min(k, m)
        if n and kk:
            # Whole frames per distance block when they fit, else row blocks of one frame.
            rows = max(1, _PAIR_BLOCK // m)
            frames_per, rows_per = (max(1, rows // n), n) if rows >= n else (1, rows)
            for f0 in range(0, n_frames, frames_per):
                fs = slice(f0, f0 + frames_per)
                cand = K[fs][:, None, :]
                for r0 in range(0, n, rows_per):
                    rs = slice(r0, r0 + rows_per)
                    c = C[fs, rs][:, :, None]
                    D = self.minimum_image(self.positions[cand] - self.positions[c])
                    d = np.linalg.norm(D, axis=-1)
                    d[(c == cand) | (d > cutoff)] = np.inf
                    order = np.argsort(np.round(d, _TIE_DECIMALS), axis=-1, kind="stable")
                    order = order[..., :kk]
                    dd = np.take_along_axis(d, order, axis=-1)
                    found = np.isfinite(dd)
                    idx[fs, rs, :kk] = np.where(found, np.take_along_axis(cand, order, -1), -1)
                    vec[fs, rs, :kk] = np.where(
                        found[..., None], np.take_along_axis(D, order[..., None], axis=-2), np.nan
                    )
                    dist[fs, rs, :kk] = dd
        return _Nearest(idx.reshape(-1, k), vec.reshape(-1, k, 3), dist.reshape(-1, k))

    def require(self, atoms: np.ndarray, ok: np.ndarray, expected: Callable[[int], str]) -> None:
        """Raise :class:`SchemeError` for the first ``atoms[j]`` with ``ok[j]`` false.

        ``expected(j)`` describes what was expected and found for that row.
        """
        bad = np.flatnonzero(~ok)
        if len(bad):
            j = bad[0]
            raise self.error(int(atoms[j]), f"{expected(j)}; {_THIOLATE_HINT}")

    def error(self, atom: int, message: str) -> SchemeError:
        # A text label names its frame itself ("segment 3 frame 5"); a number is an index.
        where = ("" if self.label is None else f"{self.label}, " if isinstance(self.label, str)
                 else f"frame {self.label}, ")
        symbol = chemical_symbols[self.numbers[atom]]
        return SchemeError(f"{where}atom {atom} ({symbol}): {message}")


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise InputError(f"unknown atom-class scheme {scheme!r}; expected one of {SCHEMES}")


def _check_neighbours(neighbours: int) -> None:
    if not 1 <= neighbours <= MAX_NEIGHBOURS:
        raise InputError(
            f"the element scheme needs 1 to {MAX_NEIGHBOURS} alignment neighbours, got {neighbours}"
        )


def _atomic_number(element: str | int) -> int:
    if isinstance(element, str):
        if element not in atomic_numbers:
            raise InputError(f"unknown element symbol {element!r}")
        return atomic_numbers[element]
    return int(element)


def class_names(scheme: str, elements: Iterable[str | int]) -> list[str]:
    """Deterministic class order of a scheme for the given elements.

    Parameters
    ----------
    scheme : {"thiolate", "element"}
        Atom-class scheme.
    elements : iterable of str or int
        Element symbols or atomic numbers present in the data (duplicates allowed).

    Returns
    -------
    list of str
        ``thiolate``: the subset of ``Au_core, Au_unit, S, C, H`` whose element is present, in
        that order. ``element``: element symbols in ascending atomic number.

    Raises
    ------
    SchemeError
        ``thiolate`` and an element other than Au, S, C, H.
    """
    _check_scheme(scheme)
    present = {_atomic_number(e) for e in elements}
    if scheme == "element":
        return [chemical_symbols[z] for z in sorted(present)]
    unknown = sorted(present - set(_THIOLATE_Z.values()))
    if unknown:
        raise SchemeError(
            f"element {chemical_symbols[unknown[0]]} is not in the thiolate scheme "
            f"(Au, S, C, H); {_THIOLATE_HINT}"
        )
    return [name for name in THIOLATE_CLASSES if _THIOLATE_Z[name] in present]


def class_width(scheme: str, class_name: str, neighbours: int = 4) -> int:
    """Number of neighbour slots ``M_class`` of a class (the second axis of ``P`` and ``Z``)."""
    _check_scheme(scheme)
    if scheme == "element":
        _check_neighbours(neighbours)
        return neighbours
    if class_name not in _THIOLATE_WIDTH:
        raise InputError(f"unknown thiolate class {class_name!r}; expected {THIOLATE_CLASSES}")
    return _THIOLATE_WIDTH[class_name]


def _permuting(positions: tuple[int, ...], width: int) -> np.ndarray:
    """All orderings of ``positions`` with the other slots fixed, lexicographic."""
    orderings = list(permutations(positions))
    table = np.tile(np.arange(width, dtype=np.int64), (len(orderings), 1))
    table[:, list(positions)] = orderings
    return table


def class_permutations(scheme: str, class_name: str, neighbours: int = 4) -> np.ndarray:
    """Permutation table of a class.

    Parameters
    ----------
    scheme : {"thiolate", "element"}
        Atom-class scheme.
    class_name : str
        A class of the scheme (for ``element`` any element symbol).
    neighbours : int
        ``M`` of the element scheme (1 to ``MAX_NEIGHBOURS``).

    Returns
    -------
    numpy.ndarray
        ``(n_perm, width)`` int64; row 0 is the identity, rows in lexicographic order. Row ``p``
        matches reference point ``p[k]`` with query point ``k``. ``H``/``S``: swap of points 1
        and 2; ``C``: the 6 orderings of points 1-3; ``Au_unit``: identity and the block swap
        ``[3, 4, 5, 0, 1, 2]``; ``Au_core``: identity only (core Au use the three-point
        scheme); ``element``: all ``M!`` permutations. Which rows a given environment may use
        is decided by :func:`permutation_mask`.
    """
    width = class_width(scheme, class_name, neighbours)
    if scheme == "element":
        return np.array(list(permutations(range(width))), dtype=np.int64).reshape(-1, width)
    if class_name in ("H", "S"):
        return _permuting((1, 2), width)
    if class_name == "C":
        return _permuting((1, 2, 3), width)
    if class_name == "Au_unit":
        return np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 0, 1, 2]], dtype=np.int64)
    return np.arange(width, dtype=np.int64)[None, :]


def permutation_mask(
    Z: np.ndarray, perms: np.ndarray, max_permutations: int | None = None
) -> np.ndarray:
    """Which permutations each (reference) environment may use.

    A permutation is admissible for a row when it maps padding onto padding (so a half-unit
    Au keeps its single block in place). With ``max_permutations`` it must also exchange only
    neighbours of the same element, and only the first ``max_permutations`` admissible rows of
    ``perms`` are kept (the identity always; lexicographic order keeps the nearest neighbours
    fixed longest).

    Parameters
    ----------
    Z : numpy.ndarray
        ``(n, width)`` neighbour atomic numbers of the environments (0 = padding).
    perms : numpy.ndarray
        ``(n_perm, width)`` table from :func:`class_permutations`.
    max_permutations : int, optional
        Cap per row; ``None`` admits every permutation that respects padding (all ``M!`` for
        the element scheme).

    Returns
    -------
    numpy.ndarray
        ``(n, n_perm)`` bool. Memory is ``n * n_perm * width``: call it per block of rows.
    """
    Z = np.asarray(Z)
    permuted = Z[:, np.asarray(perms)]  # (n, n_perm, width): Z of reference point p[k] at k
    if max_permutations is None:
        return ((permuted == 0) == (Z[:, None, :] == 0)).all(axis=-1)
    if max_permutations < 1:
        raise InputError(f"max_permutations must be at least 1, got {max_permutations}")
    ok = (permuted == Z[:, None, :]).all(axis=-1)
    return ok & (np.cumsum(ok, axis=1) <= max_permutations)


def _check_thiolate_elements(frame: _Frame) -> None:
    unknown = np.flatnonzero(~np.isin(frame.numbers, list(_THIOLATE_Z.values())))
    if len(unknown):
        atom = int(unknown[0])
        symbol = chemical_symbols[frame.numbers[atom]]
        raise frame.error(
            atom, f"element {symbol} is not in the thiolate scheme (Au, S, C, H); {_THIOLATE_HINT}"
        )


def _gold(frame: _Frame, gold: np.ndarray) -> tuple[np.ndarray, _Nearest, _Nearest]:
    """Unit mask of the gold atoms with their S (within 3.0 Å) and Au (within 5.0 Å) lists."""
    au_s = frame.nearest(gold, frame.of_element(16), CORE_WIDTH, AU_S_BOND)
    au_au = frame.nearest(gold, gold, CORE_WIDTH, CORE_RADIUS)
    half_unit = (au_s.count == 1) & (au_au.dist[:, 0] > AU_AU_BOND)
    unit = (au_s.count >= 2) | half_unit
    return unit, au_s, au_au


def classify(atoms: Atoms, scheme: str = "thiolate", frame: object | None = None) -> np.ndarray:
    """Class name of every atom.

    Only the elements and the gold classification are checked here;
    :func:`describe_environments` validates the full neighbourhoods.

    Parameters
    ----------
    atoms : ase.Atoms
        One frame.
    scheme : {"thiolate", "element"}
        Atom-class scheme.
    frame : optional
        Frame label used in error messages.

    Returns
    -------
    numpy.ndarray
        ``(n_atoms,)`` array of class names (str).
    """
    _check_scheme(scheme)
    f = _Frame([atoms], frame)
    symbols = np.array([chemical_symbols[z] for z in f.numbers], dtype="<U7")
    if scheme == "element":
        return symbols
    _check_thiolate_elements(f)
    gold = f.of_element(79)
    unit, _, _ = _gold(f, gold)
    symbols[gold] = np.where(unit, "Au_unit", "Au_core")
    return symbols


def describe_environments(
    atoms: Atoms, scheme: str = "thiolate", *, neighbours: int = 4, frame: object | None = None
) -> dict[str, ClassEnvironments]:
    """Alignment neighbourhoods of every atom of a frame, grouped by class.

    Parameters
    ----------
    atoms : ase.Atoms
        One frame; ``cell`` and ``pbc`` are honoured (minimum image).
    scheme : {"thiolate", "element"}
        Atom-class scheme.
    neighbours : int
        ``M`` of the element scheme (ignored by ``thiolate``).
    frame : optional
        Frame label used in error messages.

    Returns
    -------
    dict of str to ClassEnvironments
        One entry per class of :func:`class_names` for the elements of the frame, in that
        order; a class without atoms in this frame has zero rows. Widths are fixed per scheme
        and class (:func:`class_width`), so rows of different frames stack.

    Raises
    ------
    SchemeError
        Chemistry the scheme does not cover; the message names the frame and the atom.
    """
    _check_scheme(scheme)
    f = _Frame([atoms], frame)
    if scheme == "element":
        _check_neighbours(neighbours)
        return _element_environments(f, neighbours)
    _check_thiolate_elements(f)
    return _thiolate_environments(f)


def describe_environments_many(
    frames: Sequence[Atoms],
    scheme: str = "thiolate",
    *,
    neighbours: int = 4,
    labels: Sequence[object] | None = None,
) -> dict[str, tuple[np.ndarray, ClassEnvironments]]:
    """Alignment neighbourhoods of many frames, per class with the frame of every row.

    The rows are those of :func:`describe_environments` frame by frame, but frames with equal
    atomic numbers, cell and pbc (as in an MD trajectory) are computed together, which is
    much faster for small frames.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The frames.
    scheme : {"thiolate", "element"}
        Atom-class scheme.
    neighbours : int
        ``M`` of the element scheme (ignored by ``thiolate``).
    labels : sequence, optional
        Frame labels used in error messages, one per frame.

    Returns
    -------
    dict of str to (numpy.ndarray, ClassEnvironments)
        Per class with at least one row, in :func:`class_names` order: the position in
        ``frames`` of each row (int64) and the rows, ordered by frame, then by atom;
        ``atom`` is the index within the frame.

    Raises
    ------
    SchemeError
        The error :func:`describe_environments` raises for the first frame it rejects.
    """
    _check_scheme(scheme)
    if scheme == "element":
        _check_neighbours(neighbours)
    if not len(frames):
        return {}
    stacks: dict[tuple, list[int]] = {}
    for position, atoms in enumerate(frames):
        pbc = _periodic_axes(atoms)
        cell = atoms.cell.array.tobytes() if pbc.any() else b""
        stacks.setdefault((atoms.numbers.tobytes(), pbc.tobytes(), cell), []).append(position)
    parts: dict[str, list[tuple]] = {}
    for members in stacks.values():
        n_atoms = len(frames[members[0]])
        if n_atoms == 0:
            continue
        try:
            stack = _Frame([frames[i] for i in members], None)
            if scheme == "element":
                found = _element_environments(stack, neighbours)
            else:
                _check_thiolate_elements(stack)
                found = _thiolate_environments(stack)
        except SchemeError:
            # Frame by frame, in order, for the error that names the first bad frame.
            for position, atoms in enumerate(frames):
                describe_environments(
                    atoms, scheme, neighbours=neighbours,
                    frame=None if labels is None else labels[position],
                )
            raise
        for name, env in found.items():
            stacked, atom = np.divmod(env.atom, n_atoms)
            parts.setdefault(name, []).append((np.asarray(members)[stacked], atom, env.P, env.Z))
    out = {}
    for name in class_names(scheme, np.unique(np.concatenate([a.numbers for a in frames]))):
        pieces = [p for p in parts.get(name, ()) if len(p[0])]
        if not pieces:
            continue
        frame, atom, P, Z = (np.concatenate(column) for column in zip(*pieces, strict=True))
        # Stacks are frame-major with ascending atoms: a stable sort by frame orders all rows.
        order = np.argsort(frame, kind="stable")
        out[name] = (frame[order], _environments(atom[order], P[order], Z[order]))
    return out


def _environments(atom: np.ndarray, P: np.ndarray, Z: np.ndarray) -> ClassEnvironments:
    return ClassEnvironments(
        atom=np.asarray(atom, dtype=np.int64),
        P=np.ascontiguousarray(P, dtype=np.float64),
        Z=np.ascontiguousarray(Z, dtype=np.int16),
    )


def _element_environments(frame: _Frame, neighbours: int) -> dict[str, ClassEnvironments]:
    everyone = np.arange(len(frame.numbers))
    near = frame.nearest(everyone, everyone, neighbours)
    Z = np.where(near.idx >= 0, frame.numbers[near.idx], 0)
    out = {}
    for name in class_names("element", np.unique(frame.numbers)):
        rows = frame.numbers == atomic_numbers[name]
        out[name] = _environments(everyone[rows], near.vec[rows], Z[rows])
    return out


def _by_distance(vec: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort the points of each row by distance from the origin, ties by atom index."""
    key = np.round(np.linalg.norm(vec, axis=-1), _TIE_DECIMALS)
    order = np.lexsort((idx, key), axis=-1)
    return np.take_along_axis(vec, order[..., None], axis=1), np.take_along_axis(idx, order, 1)


def _thiolate_environments(frame: _Frame) -> dict[str, ClassEnvironments]:
    hydrogen, carbon, sulfur, gold = (frame.of_element(z) for z in (1, 6, 16, 79))
    # Row of every atom within its element's index array, to look up per-element tables.
    row = np.zeros(len(frame.numbers), dtype=np.int64)
    for group in (hydrogen, carbon, sulfur, gold):
        row[group] = np.arange(len(group))
    out: dict[str, ClassEnvironments] = {}

    # C: its S and exactly three H (the fourth nearest H is fetched to detect a fifth bond).
    c_s = frame.nearest(carbon, sulfur, 1, S_C_BOND)
    c_h = frame.nearest(carbon, hydrogen, 4, C_H_BOND)
    frame.require(carbon, c_s.count == 1, lambda j: f"expected an S within {S_C_BOND} Å")
    frame.require(
        carbon,
        c_h.count == 3,
        lambda j: f"expected 3 H within {C_H_BOND} Å, found {c_h.count[j]}",
    )
    c_h_idx, c_h_vec = c_h.idx[:, :3], c_h.vec[:, :3]
    out["C"] = _environments(
        carbon,
        np.concatenate([c_s.vec, c_h_vec], axis=1),
        np.broadcast_to([16, 1, 1, 1], (len(carbon), 4)),
    )

    # H: its C, then the two other H of that C (this H is one of the C's three).
    h_c = frame.nearest(hydrogen, carbon, 1, C_H_BOND)
    frame.require(hydrogen, h_c.count == 1, lambda j: f"expected a C within {C_H_BOND} Å")
    methyl = row[h_c.idx[:, 0]]
    others = c_h_idx[methyl] != hydrogen[:, None]
    other_vec = h_c.vec + c_h_vec[methyl][others].reshape(-1, 2, 3)
    other_vec, _ = _by_distance(other_vec, c_h_idx[methyl][others].reshape(-1, 2))
    out["H"] = _environments(
        hydrogen,
        np.concatenate([h_c.vec, other_vec], axis=1),
        np.broadcast_to([6, 1, 1], (len(hydrogen), 3)),
    )

    # S: its C and the two nearest Au, however far (bonds stretch in hot MD).
    s_c = frame.nearest(sulfur, carbon, 1, S_C_BOND)
    s_au = frame.nearest(sulfur, gold, 2)
    frame.require(sulfur, s_c.count == 1, lambda j: f"expected a C within {S_C_BOND} Å")
    frame.require(
        sulfur, s_au.count == 2, lambda j: f"expected 2 Au in the frame, found {s_au.count[j]}"
    )
    out["S"] = _environments(
        sulfur,
        np.concatenate([s_c.vec, s_au.vec], axis=1),
        np.broadcast_to([6, 79, 79], (len(sulfur), 3)),
    )

    if len(gold):
        unit, au_s, au_au = _gold(frame, gold)
        out["Au_core"] = _core_gold(frame, gold[~unit], au_s, au_au, ~unit)
        out["Au_unit"] = _unit_gold(gold[unit], au_s, unit, s_c, s_au, row)
    names = class_names("thiolate", np.unique(frame.numbers))
    return {name: out[name] for name in names}


def _unit_gold(
    centres: np.ndarray,
    au_s: _Nearest,
    unit: np.ndarray,
    s_c: _Nearest,
    s_au: _Nearest,
    row: np.ndarray,
) -> ClassEnvironments:
    """Blocks (S, C of that S, other Au of that S) for the nearest two S of each unit Au."""
    n = len(centres)
    P = np.full((n, 6, 3), np.nan)
    Z = np.zeros((n, 6), dtype=np.int16)
    s_idx, s_vec = au_s.idx[unit], au_s.vec[unit]
    for block in range(2):
        has = s_idx[:, block] >= 0
        s = row[s_idx[has, block]]
        to_s = s_vec[has, block]
        # The S's nearest Au unless that is the centre itself, then its second nearest.
        other = (s_au.idx[s, 0] == centres[has]).astype(np.int64)
        to_au = s_au.vec[s, other]
        cols = slice(3 * block, 3 * block + 3)
        P[has, cols] = np.stack([to_s, to_s + s_c.vec[s, 0], to_s + to_au], axis=1)
        Z[has, cols] = (16, 6, 79)
    return _environments(centres, P, Z)


def _core_gold(
    frame: _Frame, centres: np.ndarray, au_s: _Nearest, au_au: _Nearest, core: np.ndarray
) -> ClassEnvironments:
    """S within 3.0 Å, then Au within 5.0 Å, nearest first, at most ``CORE_WIDTH`` points."""
    idx = np.concatenate([au_s.idx[core], au_au.idx[core]], axis=1)
    vec = np.concatenate([au_s.vec[core], au_au.vec[core]], axis=1)
    # A stable sort on "absent" moves present points forward and keeps S before Au.
    order = np.argsort(idx < 0, axis=1, kind="stable")[:, :CORE_WIDTH]
    idx = np.take_along_axis(idx, order, axis=1)
    vec = np.take_along_axis(vec, order[..., None], axis=1)
    n_au = au_au.count[core]
    frame.require(
        centres,
        n_au >= 2,
        lambda j: f"expected at least 2 Au within {CORE_RADIUS} Å of a core Au, found {n_au[j]}",
    )
    return _environments(centres, vec, np.where(idx >= 0, frame.numbers[idx], 0))
