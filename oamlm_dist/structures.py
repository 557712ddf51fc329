"""Starting structures: gold-thiolate rings, linear alkanes, random displacements.

All builders return new, non-periodic :class:`ase.Atoms` without a cell, centred at
the origin (Å). Fine calculators that need a box (GPAW) add one themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import InputError

__all__ = [
    "AU_S",
    "C_C",
    "C_H",
    "S_C",
    "alkane",
    "gold_thiolate_ring",
    "parse_structures",
    "perturb",
    "rattle",
]

AU_S = 2.32  # Au-S bond in Au(I) thiolates (Å)
S_C = 1.82  # S-C single bond (Å)
C_C = 1.53  # C-C single bond (Å)
C_H = 1.09  # C-H bond (Å)
RING_SULFUR_LIFT = 1.0  # S out-of-plane displacement of the primary source (Å)
TETRAHEDRAL = np.arccos(-1.0 / 3.0)  # 109.47°

RING_SIZES = range(3, 9)
ALKANE_SIZES = range(2, 11)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _methyl_hydrogens(carbon: np.ndarray, axis: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Three tetrahedral H positions on ``carbon`` whose bond partner lies along ``-axis``.

    ``axis`` is the unit vector partner→C; one H lies in the plane of ``axis`` and
    ``ref`` (on the ``ref`` side), the other two are rotated by ±120° about ``axis``.
    """
    e2 = _unit(ref - np.dot(ref, axis) * axis)
    e3 = np.cross(axis, e2)
    phi = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    # angle partner-C-H is tetrahedral: component along axis is -cos(109.47°) = +1/3
    side = np.cos(phi)[:, None] * e2 + np.sin(phi)[:, None] * e3
    dirs = np.cos(np.pi - TETRAHEDRAL) * axis + np.sin(np.pi - TETRAHEDRAL) * side
    return carbon + C_H * dirs


def gold_thiolate_ring(n: int) -> Atoms:
    """Build a planar-like Au_n(SCH3)_n ring as in the primary source's ring tests.

    Following the source ("even geometric shapes, where sulfur atoms lie in the
    corners", S displaced 1.0 Å up and down in turns), the S atoms sit on the corners
    of a regular n-gon, lifted alternately +1.0/-1.0 Å out of the z = 0 plane, and
    each Au sits in the plane at the midpoint of an edge, so every Au-S bond is
    :data:`AU_S` and S-Au-S is linear whenever its two S alternate. Each S carries a
    methyl group on the side it is lifted to (away from the ring plane), with the two
    Au-S-C angles equal and tetrahedral (sp3 sulfur), S-C = 1.82 Å and tetrahedral
    C-H = 1.09 Å with one H of each methyl pointing toward the ring axis. For odd n
    the alternation breaks once (S_{n-1} and S_0 share a side). For n = 3 the short
    edges give Au-Au ≈ 2.1 Å, a strained start (GFN2-xTB max force ≈ 25 eV/Å against
    0.4-1.2 eV/Å for n = 4..8); the source optimised n = 4..6.

    Parameters
    ----------
    n : int
        Number of Au atoms (and thiolates), 3 to 8.

    Returns
    -------
    ase.Atoms
        Order: Au_0..Au_{n-1}, then per thiolate k: S_k, C_k, H, H, H. Au_k lies
        between S_k and S_{k+1}. No cell, no periodicity, centred at the origin.

    Raises
    ------
    InputError
        If n is not an integer in 3..8.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n not in RING_SIZES:
        raise InputError(f"gold-thiolate ring size must be an integer in 3..8, got {n!r}")
    n = int(n)
    half_edge = np.sqrt(AU_S**2 - RING_SULFUR_LIFT**2)  # in-plane Au-S projection
    r_s = half_edge / np.sin(np.pi / n)  # circumradius of the S n-gon
    k = np.arange(n)
    ang = 2.0 * np.pi * k / n
    lift = RING_SULFUR_LIFT * np.where(k % 2 == 0, 1.0, -1.0)
    s_pos = np.column_stack([r_s * np.cos(ang), r_s * np.sin(ang), lift])
    au_pos = 0.5 * (s_pos + np.roll(s_pos, -1, axis=0))
    au_pos[:, 2] = 0.0

    symbols = ["Au"] * n
    positions = [au_pos]
    for i in range(n):
        s = s_pos[i]
        a1 = _unit(au_pos[i] - s)
        a2 = _unit(au_pos[i - 1] - s)
        bis = _unit(a1 + a2)
        # normal to the Au-S-Au plane, oriented to the side S is lifted to
        normal = _unit(np.cross(a1, a2))
        if np.dot(normal, [0.0, 0.0, np.sign(lift[i])]) < 0:
            normal = -normal
        # C equidistant in angle from both Au, with Au-S-C tetrahedral
        cos_beta = np.cos(TETRAHEDRAL) / np.dot(a1, bis)
        c_dir = cos_beta * bis + np.sqrt(1.0 - cos_beta**2) * normal
        c = s + S_C * c_dir
        # one H toward the ring axis keeps same-side neighbours (odd n) >= 2.5 Å apart
        inward = -np.array([s[0], s[1], 0.0])
        h = _methyl_hydrogens(c, c_dir, inward)
        symbols += ["S", "C", "H", "H", "H"]
        positions += [s[None], c[None], h]
    atoms = Atoms(symbols=symbols, positions=np.concatenate(positions))
    atoms.positions -= atoms.positions.mean(axis=0)
    return atoms


def alkane(n: int) -> Atoms:
    """Build linear, all-trans C_nH_{2n+2} with ideal tetrahedral geometry.

    The carbon zig-zag lies in the xy plane (C-C = 1.53 Å, C-C-C = 109.47°); every
    carbon gets two H above and below that plane and each terminal carbon a third
    H in the plane, continuing the zig-zag (C-H = 1.09 Å). Both ends are staggered.

    Parameters
    ----------
    n : int
        Number of carbon atoms, 2 to 10.

    Returns
    -------
    ase.Atoms
        Carbons first (chain order), then hydrogens. No cell, centred at the origin.

    Raises
    ------
    InputError
        If n is not an integer in 2..10.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n not in ALKANE_SIZES:
        raise InputError(f"alkane length must be an integer in 2..10 carbons, got {n!r}")
    n = int(n)
    # backbone including one virtual carbon beyond each end (indices -1 and n)
    i = np.arange(-1, n + 1)
    dx = C_C * np.sin(TETRAHEDRAL / 2.0)
    dy = C_C * np.cos(TETRAHEDRAL / 2.0)
    chain = np.column_stack([i * dx, np.where(i % 2 == 0, 0.0, dy), np.zeros_like(i, float)])
    carbons = chain[1:-1]
    hydrogens = []
    zhat = np.array([0.0, 0.0, 1.0])
    for j in range(n):
        c = chain[j + 1]
        a = _unit(chain[j] - c)
        b = _unit(chain[j + 2] - c)
        m = -_unit(a + b)
        half = TETRAHEDRAL / 2.0
        hydrogens += [c + C_H * (np.cos(half) * m + s * np.sin(half) * zhat) for s in (1, -1)]
    # terminal H toward the virtual neighbours
    hydrogens.append(carbons[0] + C_H * _unit(chain[0] - carbons[0]))
    hydrogens.append(carbons[-1] + C_H * _unit(chain[-1] - carbons[-1]))
    atoms = Atoms(
        symbols=["C"] * n + ["H"] * len(hydrogens),
        positions=np.concatenate([carbons, np.array(hydrogens)]),
    )
    atoms.positions -= atoms.positions.mean(axis=0)
    return atoms


def rattle(atoms: Atoms, stdev: float, seed: int) -> Atoms:
    """Return a copy with Gaussian displacements of every Cartesian coordinate.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure to displace; it is not modified.
    stdev : float
        Standard deviation of each coordinate's displacement (Å), >= 0.
    seed : int
        Seed of :func:`numpy.random.default_rng`; equal seeds give equal results.

    Returns
    -------
    ase.Atoms
        The displaced copy (calculator detached).
    """
    if not np.isfinite(stdev) or stdev < 0:
        raise InputError(f"rattle stdev must be a finite number >= 0 Å, got {stdev!r}")
    out = atoms.copy()
    out.calc = None
    rng = np.random.default_rng(seed)
    out.positions = out.positions + rng.normal(0.0, stdev, size=out.positions.shape)
    return out


def perturb(
    atoms: Atoms,
    amplitude: float,
    seed: int,
    indices: list[int] | np.ndarray | None = None,
) -> Atoms:
    """Return a copy in which selected atoms move by exactly ``amplitude`` in random directions.

    Unlike :func:`rattle` every selected atom moves by the same distance, which gives
    a controlled distance from a (relaxed) reference, e.g. to test an optimiser.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure to displace; it is not modified.
    amplitude : float
        Displacement length per atom (Å), >= 0.
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    indices : sequence of int, optional
        Atoms to move; all atoms by default.

    Returns
    -------
    ase.Atoms
        The displaced copy (calculator detached).
    """
    if not np.isfinite(amplitude) or amplitude < 0:
        raise InputError(f"perturb amplitude must be a finite number >= 0 Å, got {amplitude!r}")
    out = atoms.copy()
    out.calc = None
    idx = np.arange(len(out)) if indices is None else np.asarray(indices, dtype=int)
    if idx.size and (idx.min() < -len(out) or idx.max() >= len(out)):
        raise InputError(f"perturb indices out of range for {len(out)} atoms: {idx.tolist()}")
    rng = np.random.default_rng(seed)
    pos = out.positions
    pos[idx] += amplitude * _unit(rng.normal(size=(idx.size, 3)))
    out.positions = pos
    return out


_FAMILIES = {
    "ring": ("ring-Au{}", gold_thiolate_ring, RING_SIZES),
    "rings": ("ring-Au{}", gold_thiolate_ring, RING_SIZES),
    "alkane": ("alkane-C{}", alkane, ALKANE_SIZES),
    "alkanes": ("alkane-C{}", alkane, ALKANE_SIZES),
}
_ITEM = re.compile(r"^(?:(?P<family>[A-Za-z]+):)?(?P<lo>\d+)(?:-(?P<hi>\d+))?$")


def _read_file(path: Path) -> list[tuple[str, Atoms]]:
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read structures from {path}: {msg}") from exc
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"no structures in {path}")
    if len(frames) == 1:
        return [(path.stem, frames[0])]
    width = len(str(len(frames) - 1))
    return [(f"{path.stem}-{i:0{width}d}", a) for i, a in enumerate(frames)]


def parse_structures(spec: str) -> list[tuple[str, Atoms]]:
    """Turn a structure specification into named structures.

    Parameters
    ----------
    spec : str
        Comma-separated items, each one of

        - ``rings:N`` or ``rings:A-B`` — gold-thiolate rings (N in 3..8), names ``ring-AuN``;
        - ``alkanes:N`` or ``alkanes:A-B`` — linear alkanes (N in 2..10), names ``alkane-CN``;
        - a bare ``N`` or ``A-B`` continuing the previous family (``rings:4,6``);
        - a path to any ASE-readable file; its stem is the name (``stem-i`` per frame
          if the file holds several frames).

        A spec that is itself an existing path is read as a file even if it contains
        commas. Ranges are inclusive; repeated names are kept once.

    Returns
    -------
    list of (str, ase.Atoms)
        Names and structures in the order given.

    Raises
    ------
    InputError
        On an empty spec, an unknown family, a size out of range, a reversed range,
        or a path that does not exist or cannot be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty structure spec: give e.g. 'rings:4-6', 'alkanes:2-3' or a file")
    if Path(spec.strip()).is_file():
        return _read_file(Path(spec.strip()))
    out: dict[str, Atoms] = {}
    family: str | None = None
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise InputError(f"empty item in structure spec {spec!r}")
        m = _ITEM.match(item)
        if m is None:
            path = Path(item)
            if path.is_file():
                for name, atoms in _read_file(path):
                    out.setdefault(name, atoms)
                family = None
                continue
            raise InputError(
                f"bad structure spec item {item!r} in {spec!r}: expected 'rings:A-B', "
                "'alkanes:A-B' or an existing ASE-readable file"
            )
        fam = m["family"].lower() if m["family"] else family
        if fam is None:
            raise InputError(
                f"structure spec item {item!r} has no family: write e.g. 'rings:{item}'"
            )
        if fam not in _FAMILIES:
            raise InputError(
                f"unknown structure family {m['family']!r} in {spec!r}: known are rings, alkanes"
            )
        family = fam
        template, build, sizes = _FAMILIES[fam]
        lo = int(m["lo"])
        hi = int(m["hi"]) if m["hi"] is not None else lo
        if hi < lo:
            raise InputError(f"reversed range {item!r} in structure spec {spec!r}")
        if lo < sizes.start or hi > sizes.stop - 1:
            raise InputError(
                f"{fam} size out of range in {item!r}: allowed {sizes.start}..{sizes.stop - 1}"
            )
        for size in range(lo, hi + 1):
            out.setdefault(template.format(size), build(size))
    return list(out.items())
