"""Starting structures: gold-thiolate rings, Au38(SCH3)24, linear alkanes, random displacements.

All builders return new, non-periodic :class:`ase.Atoms` without a cell, centred at
the origin (Å). Fine calculators that need a box (GPAW) add one themselves.
"""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import InputError

__all__ = [
    "AU_S",
    "AU_S_CORE",
    "C_C",
    "C_H",
    "S_C",
    "alkane",
    "au38_staples",
    "build_gold38_thiolate",
    "gold38_thiolate",
    "gold_thiolate_ring",
    "parse_structures",
    "perturb",
    "rattle",
    "relax_gold38_thiolate",
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
        # C equidistant in angle from both Au, with Au-S-C tetrahedral, on the side of the
        # Au-S-Au plane that S is lifted to
        c_dir = max(_methyl_directions(s, au_pos[i], au_pos[i - 1]),
                    key=lambda direction: direction[2] * np.sign(lift[i]))
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


# --- Au38(SCH3)24 -------------------------------------------------------------------------

AU_S_CORE = 2.40  # Au(core)-S bond of a staple's terminal S (Å)
AU38_CORE_RADIUS = 2.78  # centre-vertex distance of the Au13 icosahedra (Å); edges 2.92 Å
STAPLE_ANGLE = np.radians(100.0)  # Au-S-Au at every staple S
AU38_DATA = "au38_sch3_24.xyz"  # relaxed structure, in oamlm_dist/data/

_GOLDEN = (1.0 + np.sqrt(5.0)) / 2.0
# A unit-radius icosahedron seen along a 3-fold axis: four layers of three vertices at
# heights ±_ICO_FACE_Z (the two faces normal to the axis, radius _ICO_FACE_R) and
# ±_ICO_MID_Z (radius _ICO_MID_R); each layer is turned 60° against the next.
_ICO_FACE_Z = _GOLDEN**2 / np.sqrt(3.0 * (1.0 + _GOLDEN**2))
_ICO_MID_Z = (_GOLDEN - 1.0) / np.sqrt(3.0 * (1.0 + _GOLDEN**2))
_ICO_FACE_R = np.sqrt(1.0 - _ICO_FACE_Z**2)
_ICO_MID_R = np.sqrt(1.0 - _ICO_MID_Z**2)
_C2_X = np.diag([1.0, -1.0, -1.0])  # C2 about x, swaps the two icosahedra


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _d3_operations() -> list[np.ndarray]:
    """The six rotations of D3 (C3 about z, C2 about x): identity, C3, C3², then C2∘C3^k."""
    c3 = [_rot_z(2.0 * np.pi * k / 3.0) for k in range(3)]
    return c3 + [_C2_X @ r for r in c3]


def _cylindrical(radius: float, degrees: float, z: float) -> np.ndarray:
    phi = np.radians(degrees)
    return np.array([radius * np.cos(phi), radius * np.sin(phi), z])


def _bi_icosahedron(radius: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Face-fused Au23 bi-icosahedron (D3h) with the shared face in z = 0.

    Returns the 23 positions, ordered: the three shared-face ("waist") atoms at 0°,
    120°, 240°; the upper icosahedron (centre, near-waist layer at 60°/180°/300°,
    middle layer at 0°/120°/240°, end face at 60°/180°/300°); the lower icosahedron, the
    C2(x) image of the upper one in the same order. The dict names the upper sites
    (``centre`` (3,), ``near``, ``middle``, ``end`` (3, 3)).
    """
    h = _ICO_FACE_Z * radius  # centre height above the shared face
    sites = {
        "centre": np.array([0.0, 0.0, h]),
        "near": np.array([_cylindrical(_ICO_MID_R * radius, a, h - _ICO_MID_Z * radius)
                          for a in (60.0, 180.0, 300.0)]),
        "middle": np.array([_cylindrical(_ICO_MID_R * radius, a, h + _ICO_MID_Z * radius)
                            for a in (0.0, 120.0, 240.0)]),
        "end": np.array([_cylindrical(_ICO_FACE_R * radius, a, 2.0 * h)
                         for a in (60.0, 180.0, 300.0)]),
    }
    waist = np.array([_cylindrical(_ICO_FACE_R * radius, a, 0.0) for a in (0.0, 120.0, 240.0)])
    upper = np.vstack([sites["centre"][None], sites["near"], sites["middle"], sites["end"]])
    return np.vstack([waist, upper, upper @ _C2_X.T]), sites


def _angle(a: np.ndarray, vertex: np.ndarray, b: np.ndarray) -> float:
    u, v = _unit(a - vertex), _unit(b - vertex)
    return float(np.arccos(np.clip(np.dot(u, v), -1.0, 1.0)))


def _dimeric_staple(
    anchors: tuple[np.ndarray, np.ndarray],
    centre: np.ndarray,
    core: np.ndarray,
    others: np.ndarray,
    images: list[np.ndarray],
) -> np.ndarray:
    """S-Au-S-Au-S on two core Au ``anchors``; returns the (5, 3) positions in chain order.

    Exact by construction: Au(core)-S = :data:`AU_S_CORE`, linear S-Au-S with each Au
    midway between its S. Solved for (least squares, from a fixed start): S...S = 2
    :data:`AU_S` and all three Au-S-Au = :data:`STAPLE_ANGLE`; the staple kept clear of
    ``core`` Au other than its anchors (Au 3.0 Å, S 3.4 Å) and of ``others`` and its own
    symmetry ``images`` (rotation matrices) by 3.6 Å; with a weak pull of the staple Au
    towards ``centre`` so that they lie on the core at aurophilic distances.
    """
    from scipy.optimize import minimize

    p1, p2 = anchors
    # clearance (Å) of each chain atom from each core Au; none from its own anchor
    clear_core = np.where(np.arange(5)[:, None] % 2 == 0, 3.4, 3.0) * np.ones((5, len(core)))
    clear_core[0, np.linalg.norm(core - p1, axis=1) < 1e-6] = 0.0
    clear_core[4, np.linalg.norm(core - p2, axis=1) < 1e-6] = 0.0
    turns = np.array(images)

    def chain(x: np.ndarray) -> np.ndarray:
        s1 = p1 + AU_S_CORE * _unit(x[0:3])
        s3 = p2 + AU_S_CORE * _unit(x[3:6])
        s2 = x[6:9]
        return np.array([s1, 0.5 * (s1 + s2), s2, 0.5 * (s2 + s3), s3])

    def penalty(x: np.ndarray) -> float:
        st = chain(x)
        s1, au1, s2, au2, s3 = st
        err = 1e3 * ((np.linalg.norm(s1 - s2) - 2 * AU_S) ** 2
                     + (np.linalg.norm(s3 - s2) - 2 * AU_S) ** 2)
        for a, v, b in ((p1, s1, au1), (au1, s2, au2), (au2, s3, p2)):
            err += (_angle(a, v, b) - STAPLE_ANGLE) ** 2
        near = np.vstack([others, np.einsum("kij,aj->kai", turns, st).reshape(-1, 3)])
        d_core = np.linalg.norm(st[:, None] - core[None], axis=2)
        d_near = np.linalg.norm(st[:, None] - near[None], axis=2)
        err += 10.0 * np.sum(np.clip(clear_core - d_core, 0.0, None) ** 2)
        err += 10.0 * np.sum(np.clip(3.6 - d_near, 0.0, None) ** 2)
        return err + 0.02 * np.linalg.norm(st[1:4] - centre, axis=1).sum()

    mid = 0.5 * (p1 + p2)
    x0 = np.concatenate([_unit(p1 - centre), _unit(p2 - centre), mid + 3.0 * _unit(mid - centre)])
    return chain(minimize(penalty, x0, method="BFGS").x)


def _methyl_directions(s: np.ndarray, au_a: np.ndarray, au_b: np.ndarray) -> np.ndarray:
    """Both unit directions (2, 3) from an S bound to two Au to its C, with equal,
    tetrahedral Au-S-C angles (one on each side of the Au-S-Au plane)."""
    a1, a2 = _unit(au_a - s), _unit(au_b - s)
    bis = _unit(a1 + a2)
    normal = _unit(np.cross(a1, a2))
    cos_beta = np.cos(TETRAHEDRAL) / np.dot(a1, bis)
    side = np.sqrt(1.0 - cos_beta**2) * normal
    return np.array([cos_beta * bis + side, cos_beta * bis - side])


def _methyl_rotation(
    s: np.ndarray, c: np.ndarray, placed: np.ndarray, images: list[np.ndarray]
) -> np.ndarray:
    """The three H of the methyl on ``c`` (bound to ``s``), turned about S-C in 1° steps.

    The turn kept is the one whose H, and those of the methyl's symmetry ``images``
    (rotation matrices, identity first), stay farthest from the ``placed`` atoms of other
    thiolates and from the other images. Returns (3, 3).
    """
    axis = _unit(c - s)
    ref = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e2 = _unit(ref - np.dot(ref, axis) * axis)
    e3 = np.cross(axis, e2)
    best, best_h = -np.inf, None
    for t in np.radians(np.arange(0.0, 120.0, 1.0)):
        h = _methyl_hydrogens(c, axis, np.cos(t) * e2 + np.sin(t) * e3)
        group = np.vstack([s, c, h])
        copies = [group @ r.T for r in images]
        gap = min(np.linalg.norm(g[2:, None] - placed[None], axis=2).min() for g in copies)
        for i, gi in enumerate(copies):
            for gj in copies[:i]:
                gap = min(gap, np.linalg.norm(gi[2:, None] - gj[None], axis=2).min(),
                          np.linalg.norm(gj[2:, None] - gi[None], axis=2).min())
        if gap > best + 1e-9:
            best, best_h = gap, h
    return best_h


def build_gold38_thiolate() -> Atoms:
    """Build Au38(SCH3)24 (the Q isomer of Qian et al., JACS 2010) geometrically, unrelaxed.

    This is the starting point from which the packaged structure of
    :func:`gold38_thiolate` was relaxed (regenerate it with
    :func:`relax_gold38_thiolate`); most users want that one.

    The core is a face-fused bi-icosahedron Au23 (two Au13 icosahedra, centre-vertex
    :data:`AU38_CORE_RADIUS`, edges 2.92 Å, sharing one face) with its 3-fold axis along
    z and the shared ("waist") face in z = 0. Seen along the axis, the 18 other surface
    Au of the core form three layers of three per icosahedron: the end face, a middle
    layer and a layer next to the waist. They carry nine staples, each terminal S on one
    core Au (Au(core)-S = :data:`AU_S_CORE`), the waist Au carry none:

    - three monomeric staples S-Au-S ("short") round the waist, each joining the middle
      layers of the two icosahedra above and below a waist Au (lying parallel to z,
      Au-S-Au ≈ 100° at both S);
    - six dimeric staples S-Au-S-Au-S ("long"), three per icosahedron, each from an
      end-face Au to the near-waist Au turned 120° further about the axis, so the three
      of an icosahedron form a propeller and both propellers turn the same way.

    Every staple Au-S is :data:`AU_S` with linear S-Au-S and Au-S-Au near
    :data:`STAPLE_ANGLE`; the dimeric staples are solved for numerically, keeping their
    atoms clear of the core and of each other, their Au at 3.1-3.3 Å (aurophilic) from
    the core. Each S carries a methyl on its outer side with both Au-S-C tetrahedral,
    S-C = :data:`S_C`, tetrahedral C-H = :data:`C_H`, each methyl turned to keep its H
    farthest from other thiolates. The whole structure is D3 (the enantiomer is its
    mirror image); the result is deterministic.

    Returns
    -------
    ase.Atoms
        158 atoms in the order: 23 core Au (waist, upper icosahedron: centre, near-waist
        layer, middle layer, end face; lower icosahedron likewise), 15 staple Au (the
        three monomeric staples, then the dimeric staples two by two), then per thiolate
        S, C, H, H, H. No cell, no periodicity, centred at the origin.
    """
    ops = _d3_operations()
    core, sites = _bi_icosahedron(AU38_CORE_RADIUS)

    # monomeric staple on the C2(x) axis, over the waist Au at 0°, parallel to z
    anchor = sites["middle"][0]
    rho = anchor[0] + np.sqrt(AU_S_CORE**2 - (AU_S - anchor[2]) ** 2)
    mono_au = np.array([rho, 0.0, 0.0])
    mono_s = np.array([rho, 0.0, AU_S])  # its partner is the C2(x) image
    monomers = np.array([mono_au @ r.T for r in ops[:3]])
    mono_frame = np.vstack([monomers, np.array([mono_s @ r.T for r in ops])])

    # dimeric staple on the upper icosahedron: end face 60° -> near-waist 180°
    chain = _dimeric_staple(
        (sites["end"][0], sites["near"][1]), sites["centre"], core, mono_frame, ops[1:]
    )
    dimers = [chain @ r.T for r in ops]  # images: upper 0, 1, 2 then lower 0, 1, 2

    # thiolates of the asymmetric unit: S with its two Au neighbours
    asym = [
        (mono_s, anchor, mono_au),
        (chain[0], sites["end"][0], chain[1]),
        (chain[2], chain[1], chain[3]),
        (chain[4], sites["near"][1], chain[3]),
    ]
    gold = np.vstack([core, monomers] + [d[[1, 3]] for d in dimers])
    sulfur_all = np.array([t[0] @ r.T for t in asym for r in ops])
    # each C on the side of its S that keeps all C (and their images) farthest from the
    # other C and from the Au and S they are not bound to
    options = [t[0] + S_C * _methyl_directions(*t) for t in asym]
    best = -np.inf
    for sides in product((0, 1), repeat=len(asym)):
        trial = [opt[k] for opt, k in zip(options, sides, strict=True)]
        carbon_all = np.array([c @ r.T for c in trial for r in ops])
        gap = min(
            np.linalg.norm(carbon_all[:, None] - gold[None], axis=2).min(),
            np.sort(np.linalg.norm(carbon_all[:, None] - sulfur_all[None], axis=2), axis=1)[
                :, 1
            ].min(),
            np.linalg.norm(carbon_all[:, None] - carbon_all[None], axis=2)[
                ~np.eye(len(carbon_all), dtype=bool)
            ].min(),
        )
        if gap > best + 1e-9:
            best, carbons = gap, trial
    carbon_all = np.array([c @ r.T for c in carbons for r in ops])
    hydrogens: list[np.ndarray] = []
    placed_h = np.zeros((0, 3))
    for k, (t, c) in enumerate(zip(asym, carbons, strict=True)):
        others = np.ones(len(sulfur_all), dtype=bool)
        others[k * len(ops):(k + 1) * len(ops)] = False
        placed = np.vstack([gold, sulfur_all[others], carbon_all[others], placed_h])
        h = _methyl_rotation(t[0], c, placed, ops)
        hydrogens.append(h)
        placed_h = np.vstack([placed_h] + [h @ r.T for r in ops])

    # thiolates in staple order: monomeric (upper S, lower S), then each dimeric S1 S2 S3
    thiolates = []
    for k in range(3):  # the lower S of staple k is the image of the upper one under C2
        thiolates += [(0, ops[k]), (0, ops[3 + (-k) % 3])]
    for r in ops:
        thiolates += [(1, r), (2, r), (3, r)]
    symbols = ["Au"] * len(gold)
    positions = [gold]
    for k, r in thiolates:
        group = np.vstack([asym[k][0], carbons[k], hydrogens[k]]) @ r.T
        symbols += ["S", "C", "H", "H", "H"]
        positions.append(group)
    atoms = Atoms(symbols=symbols, positions=np.concatenate(positions))
    atoms.positions -= atoms.positions.mean(axis=0)
    return atoms


def gold38_thiolate() -> Atoms:
    """Au38(SCH3)24 (Q isomer), relaxed with GFN1-xTB; the packaged structure.

    :func:`build_gold38_thiolate` relaxed by :func:`relax_gold38_thiolate` (tblite
    GFN1-xTB, ASE BFGS to fmax 0.05 eV/Å), read from the package data file
    ``oamlm_dist/data/au38_sch3_24.xyz`` (its comment line records method, energy,
    fmax and steps: 83 steps to fmax 0.046 eV/Å, E = -8996.28 eV). GFN2-xTB does not
    converge its SCF on this cluster. The relaxation keeps D3 symmetry and the staple
    topology; it stretches the core (mean Au-Au 2.97 Å over contacts below 3.3 Å) and
    opens the shared face to 3.9 Å as each waist Au moves out to the monomeric-staple Au
    above it (2.9 Å); staple Au-S 2.35 Å, Au(core)-S 2.51 Å, S-Au-S 169-174°.

    Returns
    -------
    ase.Atoms
        158 atoms in the order of :func:`build_gold38_thiolate`; no calculator, no
        ``info``, no cell, no periodicity, centred at the origin.
    """
    from importlib.resources import as_file, files

    import ase.io

    resource = files("oamlm_dist") / "data" / AU38_DATA
    if not resource.is_file():
        raise FileNotFoundError(
            f"package data oamlm_dist/data/{AU38_DATA} is missing from this installation; "
            "write it with oamlm_dist.structures.relax_gold38_thiolate(path)"
        )
    with as_file(resource) as path:
        atoms = ase.io.read(path, format="extxyz")
    out = Atoms(symbols=atoms.get_chemical_symbols(), positions=atoms.positions)
    out.positions -= out.positions.mean(axis=0)
    return out


def relax_gold38_thiolate(
    path: str | Path | None = None,
    *,
    fmax: float = 0.05,
    steps: int = 300,
    logfile: str | None = None,
) -> Atoms:
    """Relax :func:`build_gold38_thiolate` with GFN1-xTB; how the package data was made.

    Runs tblite GFN1-xTB (``make_calculator("xtb", method="GFN1-xTB")``, one thread)
    under ASE BFGS from :func:`build_gold38_thiolate` (max force 1.5 eV/Å): 2-5 s per
    force call on 158 atoms; the package data took 83 steps, 3.5 min.

    Parameters
    ----------
    path : str or Path, optional
        Where to write the result as extended XYZ with the provenance in its comment
        line, e.g. ``oamlm_dist/data/au38_sch3_24.xyz`` to regenerate the package data.
    fmax : float
        Force convergence criterion (eV/Å).
    steps : int
        Most BFGS steps.
    logfile : str, optional
        BFGS log file (``"-"`` for stdout); none by default.

    Returns
    -------
    ase.Atoms
        The relaxed structure, no calculator; ``info`` holds ``method``, ``xtb_energy_eV``
        (total energy), ``fmax_eV_per_A`` (largest final force), ``converged``, ``steps``,
        ``wall_s`` and a one-line ``comment`` (all written to ``path``).

    Raises
    ------
    InputError
        If fmax is not positive or steps is not a positive integer.
    """
    import time

    import ase.io
    from ase.optimize import BFGS

    from .calculators import limit_threads, make_calculator

    if (isinstance(fmax, bool) or not isinstance(fmax, int | float | np.number)
            or not np.isfinite(fmax) or fmax <= 0):
        raise InputError(f"relaxation fmax must be a finite number > 0 eV/Å, got {fmax!r}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise InputError(f"relaxation steps must be a positive integer, got {steps!r}")
    atoms = build_gold38_thiolate()
    atoms.calc = make_calculator("xtb", method="GFN1-xTB")
    start = time.perf_counter()
    with limit_threads(1):
        opt = BFGS(atoms, logfile=logfile)
        converged = bool(opt.run(fmax=fmax, steps=int(steps)))
        energy = float(atoms.get_potential_energy())
        largest = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    out = Atoms(symbols=atoms.get_chemical_symbols(), positions=atoms.positions)
    out.info.update({
        "method": "GFN1-xTB (tblite), ASE BFGS",
        "xtb_energy_eV": energy,
        "fmax_eV_per_A": largest,
        "converged": converged,
        "steps": int(opt.nsteps),
        "wall_s": round(time.perf_counter() - start, 1),
    })
    out.info["comment"] = (
        f"Au38(SCH3)24 Q isomer from oamlm_dist.structures.build_gold38_thiolate relaxed with "
        f"GFN1-xTB (tblite) and ASE BFGS: {opt.nsteps} steps, final fmax {largest:.4f} eV/A "
        f"(criterion {fmax} eV/A{'' if converged else ', NOT converged'}), "
        f"energy {energy:.6f} eV"
    )
    if path is not None:
        ase.io.write(path, out, format="extxyz")
    return out


def au38_staples(atoms: Atoms) -> list[dict]:
    """The S-Au-S ("short") and S-Au-S-Au-S ("long") staples of a gold-thiolate cluster.

    Found from connectivity, not from atom order, so it works on any frame of
    :func:`gold38_thiolate` or :func:`build_gold38_thiolate` (and on other clusters
    protected by these two motifs): staple Au are the ``Au_unit`` atoms of the thiolate
    scheme (:func:`oamlm_dist.environments.classify`); a staple is a connected set of
    staple Au and S, bonded when closer than ``AU_S_BOND`` (3.0 Å); each S brings its C
    (within ``S_C_BOND``, 2.2 Å) and that C its H (within ``C_H_BOND``, 1.5 Å).
    Distances are minimum-image when the frame is periodic.

    Parameters
    ----------
    atoms : ase.Atoms
        One frame with Au, S, C and H only.

    Returns
    -------
    list of dict
        One dict per staple, short staples first, then long ones, each group ordered by
        its lowest staple-Au index. Keys: ``kind`` (``"short"`` or ``"long"``), ``atoms``
        (sorted indices of its Au, S, C and H), ``gold`` (staple Au, chain order),
        ``sulfur`` (S, chain order), ``anchors`` (sorted indices of the core Au within
        3.0 Å of its S). For Au38(SCH3)24: 3 short and 6 long, disjoint, covering all
        38 - 23 = 15 staple Au and all thiolates.

    Raises
    ------
    InputError
        If there are no staples, a staple is neither S-Au-S nor S-Au-S-Au-S, or an S
        lacks a methyl (C with three H); :class:`~oamlm_dist.errors.SchemeError` (an
        InputError) for elements outside Au, S, C, H.
    """
    from .environments import AU_S_BOND, C_H_BOND, S_C_BOND, classify

    classes = classify(atoms, "thiolate")
    symbols = np.array(atoms.get_chemical_symbols())
    dist = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    unit = np.flatnonzero(classes == "Au_unit")
    core = np.flatnonzero(classes == "Au_core")
    sulfur = np.flatnonzero(symbols == "S")
    bonded = dist[np.ix_(unit, sulfur)] < AU_S_BOND
    # connected components of the staple Au - S graph, grown from each staple Au
    seen = np.zeros(len(unit), dtype=bool)
    staples = []
    for start in range(len(unit)):
        if seen[start]:
            continue
        au_set, s_set, grow = {start}, set(), [start]
        seen[start] = True
        while grow:
            a = grow.pop()
            for s in np.flatnonzero(bonded[a]):
                if s in s_set:
                    continue
                s_set.add(int(s))
                for b in np.flatnonzero(bonded[:, s]):
                    if not seen[b]:
                        seen[b] = True
                        au_set.add(int(b))
                        grow.append(int(b))
        gold = [int(unit[a]) for a in sorted(au_set)]
        sul = [int(sulfur[s]) for s in sorted(s_set)]
        kind = {(1, 2): "short", (2, 3): "long"}.get((len(gold), len(sul)))
        if kind is None:
            raise InputError(
                f"staple of Au {gold} and S {sul} is neither S-Au-S nor S-Au-S-Au-S"
            )
        # chain order: terminal S, Au, (middle S, Au,) terminal S
        n_au = (dist[np.ix_(sul, gold)] < AU_S_BOND).sum(axis=1)
        middle = [s for s, n in zip(sul, n_au, strict=True) if n == 2]
        ends = [s for s, n in zip(sul, n_au, strict=True) if n == 1]
        if len(ends) != 2 or len(middle) != len(gold) - 1:
            raise InputError(f"staple of Au {gold} and S {sul} is not a chain S-Au-S(-Au-S)")
        if kind == "long":
            first = min(ends)
            g0 = min(gold, key=lambda g: dist[first, g])
            gold = [g0] + [g for g in gold if g != g0]
            ends = [first] + [s for s in ends if s != first]
        sul_chain = [ends[0]] + middle + [ends[1]]
        members = list(gold)
        for s in sul_chain:
            carbon = np.flatnonzero((symbols == "C") & (dist[s] < S_C_BOND))
            if len(carbon) != 1:
                raise InputError(f"S {s} of a staple has {len(carbon)} C within {S_C_BOND} Å, "
                                 "expected one (SCH3)")
            c = int(carbon[0])
            hydrogens = np.flatnonzero((symbols == "H") & (dist[c] < C_H_BOND))
            if len(hydrogens) != 3:
                raise InputError(f"C {c} on S {s} has {len(hydrogens)} H within {C_H_BOND} Å, "
                                 "expected three (SCH3)")
            members += [s, c] + hydrogens.tolist()
        anchors = core[(dist[np.ix_(core, sul_chain)] < AU_S_BOND).any(axis=1)]
        staples.append({
            "kind": kind,
            "atoms": sorted(members),
            "gold": gold,
            "sulfur": sul_chain,
            "anchors": anchors.tolist(),
        })
    if not staples:
        raise InputError("no S-Au-S staples found (no Au with two S within 3.0 Å)")
    staples.sort(key=lambda st: (st["kind"] != "short", min(st["gold"])))
    return staples


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
# Single structures by name (case-insensitive): spec item -> (structure name, builder).
_NAMED = {
    "au38": ("au38", gold38_thiolate),
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
        - ``au38`` — Au38(SCH3)24 relaxed with GFN1-xTB (:func:`gold38_thiolate`),
          name ``au38``;
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
        if item.lower() in _NAMED:
            name, build = _NAMED[item.lower()]
            if name not in out:
                out[name] = build()
            family = None
            continue
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
                "'alkanes:A-B', 'au38' or an existing ASE-readable file"
            )
        fam = m["family"].lower() if m["family"] else family
        if fam is None:
            raise InputError(
                f"structure spec item {item!r} has no family: write e.g. 'rings:{item}'"
            )
        if fam not in _FAMILIES:
            raise InputError(
                f"unknown structure family {m['family']!r} in {spec!r}: known are rings, "
                "alkanes (and the single structure au38)"
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
