"""Atom classes and alignment neighbourhoods (oamlm_dist.environments)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.cluster import Icosahedron

from oamlm_dist.environments import (
    class_names,
    class_permutations,
    class_width,
    classify,
    describe_environments,
    permutation_mask,
)
from oamlm_dist.errors import InputError, SchemeError

AU_S = 2.35
S_C = 1.82
C_H = 1.09


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _methyl(s: np.ndarray, direction: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """CH3 on a sulfur at ``s``: C along ``direction``, three H tetrahedral around the C."""
    axis = _unit(direction)
    c = s + S_C * axis
    u = _unit(np.cross(axis, [0.3, 0.5, 0.8]))
    w = np.cross(axis, u)
    cos_t = -np.cos(np.radians(109.47))  # H–C–S angle 109.47°
    sin_t = np.sqrt(1 - cos_t**2)
    hs = [
        c + C_H * (cos_t * axis + sin_t * (np.cos(phi) * u + np.sin(phi) * w))
        for phi in np.radians([0.0, 120.0, 240.0])
    ]
    return [("C", c)] + [("H", h) for h in hs]


def _atoms(parts: list[tuple[str, np.ndarray]]) -> Atoms:
    return Atoms([s for s, _ in parts], positions=[p for _, p in parts])


def ring(n_sulfur: int = 4) -> Atoms:
    """Au4(SCH3)4: Au on a square of side 3.4 Å, each S above the midpoint of an edge,
    1.18 Å outwards and alternately ±1 Å off the plane; CH3 pointing outwards from S.

    ``n_sulfur < 4`` leaves the last edges without S (an open Au4(SCH3)3 chain for 3).
    """
    half_diag = 3.4 / np.sqrt(2)
    parts = [
        ("Au", half_diag * np.array([np.cos(a), np.sin(a), 0.0]))
        for a in np.radians([0.0, 90.0, 180.0, 270.0])
    ]
    for k in range(n_sulfur):
        a = np.radians(45.0 + 90.0 * k)
        radial = np.array([np.cos(a), np.sin(a), 0.0])
        z = 1.0 if k % 2 == 0 else -1.0
        s = (1.7 + 1.18) * radial + [0.0, 0.0, z]
        parts.append(("S", s))
        parts += _methyl(s, radial + [0.0, 0.0, z])
    return _atoms(parts)


def staple_on_core() -> tuple[Atoms, list[int]]:
    """Au13 icosahedron carrying one RS–Au–SR–Au–SR staple; returns the staple Au indices.

    The end S sit 2.40 Å radially above two neighbouring vertex Au; the middle S lies further
    out on the bisector; each staple Au is 2.35 Å from its two S on the outer side.
    """
    core = Icosahedron("Au", 2)
    pos = core.positions - core.positions.mean(axis=0)
    radius = np.linalg.norm(pos, axis=1)
    a, b = 1, next(j for j in range(2, 13) if np.linalg.norm(pos[j] - pos[1]) < 3.1)
    ua, ub = pos[a] / radius[a], pos[b] / radius[b]
    out = _unit(ua + ub)
    normal = _unit(np.cross(ua, ub))
    s1, s3 = pos[a] + 2.40 * ua, pos[b] + 2.40 * ub
    s2 = (s1 + s3) / 2 + 2.6 * out

    def bridge(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        mid, half = (p + q) / 2, np.linalg.norm(q - p) / 2
        away = _unit(np.cross(q - p, normal))
        away = away if np.dot(away, mid) > 0 else -away
        return mid + np.sqrt(AU_S**2 - half**2) * away

    au1, au2 = bridge(s1, s2), bridge(s2, s3)
    parts = [("Au", p) for p in pos] + [("Au", au1), ("Au", au2)]
    # Each methyl points away from the two Au of its S and off the staple plane.
    for s, gold, side in ((s1, (pos[a], au1), 1), (s2, (au1, au2), -1), (s3, (au2, pos[b]), 1)):
        parts.append(("S", s))
        parts += _methyl(s, -sum(_unit(g - s) for g in gold) + side * normal)
    return _atoms(parts), [13, 14]


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _min_distance(atoms: Atoms, i: int, element: str) -> float:
    others = [j for j, s in enumerate(atoms.get_chemical_symbols()) if s == element and j != i]
    return float(atoms.get_distances(i, others).min())


# --------------------------------------------------------------------------- classification


def test_ring_gold_is_all_unit():
    atoms = ring()
    classes = classify(atoms)
    symbols = np.array(atoms.get_chemical_symbols())
    assert list(classes[symbols == "Au"]) == ["Au_unit"] * 4
    assert list(classes[symbols != "Au"]) == list(symbols[symbols != "Au"])

    env = describe_environments(atoms)
    assert list(env) == ["Au_core", "Au_unit", "S", "C", "H"]
    assert env["Au_core"].P.shape == (0, 12, 3) and env["Au_core"].Z.shape == (0, 12)
    unit = env["Au_unit"]
    assert unit.P.shape == (4, 6, 3)
    assert np.isfinite(unit.P).all()
    assert (unit.Z == [16, 6, 79, 16, 6, 79]).all()
    # Each block: S at an Au–S bond, C bonded to that S, the other Au across the S.
    for k in (0, 3):
        assert np.allclose(np.linalg.norm(unit.P[:, k], axis=1), 2.298, atol=1e-3)
        assert np.allclose(np.linalg.norm(unit.P[:, k + 1] - unit.P[:, k], axis=1), S_C)
        assert np.allclose(np.linalg.norm(unit.P[:, k + 2], axis=1), 3.4)


def test_ring_gold_at_aurophilic_distance_stays_unit():
    atoms = ring()
    gold = [a.index for a in atoms if a.symbol == "Au"]
    atoms.positions[gold] *= 2.9 / 3.4  # Au–Au 2.9 Å, each Au still between two S
    assert list(classify(atoms)[gold]) == ["Au_unit"] * 4


def test_staple_on_core():
    atoms, staple = staple_on_core()
    gold = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Au"]
    # The geometry really is a staple: its Au bound to two S, away from all other Au.
    for i in staple:
        assert _min_distance(atoms, i, "Au") > 3.2
        assert np.sort(atoms.get_distances(i, range(len(atoms))))[2] < 2.4
    classes = classify(atoms)
    for i in gold:
        assert classes[i] == ("Au_unit" if i in staple else "Au_core")

    env = describe_environments(atoms, frame=3)
    assert list(env) == ["Au_core", "Au_unit", "S", "C", "H"]
    core = env["Au_core"]
    assert list(core.atom) == [i for i in gold if i not in staple]
    assert core.P.shape == (13, 12, 3)
    # The two vertices carrying an end S list it first, then Au nearest first.
    bound = core.Z[:, 0] == 16
    assert bound.sum() == 2
    assert np.allclose(np.linalg.norm(core.P[bound, 0], axis=1), 2.40)
    assert (core.Z[bound, 1:] == 79).all()
    assert np.isin(core.Z[~bound], [0, 79]).all()
    d = np.linalg.norm(core.P, axis=2)
    for row_d, row_z in zip(d, core.Z, strict=True):
        au = row_d[row_z == 79]
        assert (np.diff(au) >= 0).all() and (au <= 5.0).all()
        assert np.isnan(row_d[row_z == 0]).all()
    # The centre atom of the icosahedron sees its 12 vertices at 2.885 Å.
    assert np.allclose(d[0], 2.885, atol=1e-3)

    unit = env["Au_unit"]
    assert list(unit.atom) == staple
    assert np.isfinite(unit.P).all()
    # Both S are 2.35 Å away, so blocks follow S index: (end S, its C, the core vertex under
    # it) and (middle S, its C, the other staple Au), and mirrored for the second staple Au.
    pos, numbers = atoms.positions, atoms.numbers
    sulfur = np.flatnonzero(numbers == 16)
    vertex = [int(np.argmin(np.linalg.norm(pos[:13] - pos[s], axis=1))) for s in sulfur[[0, 2]]]
    expected = {
        staple[0]: [sulfur[0], sulfur[0] + 1, vertex[0], sulfur[1], sulfur[1] + 1, staple[1]],
        staple[1]: [sulfur[1], sulfur[1] + 1, staple[0], sulfur[2], sulfur[2] + 1, vertex[1]],
    }
    for row, i in enumerate(unit.atom):
        assert np.allclose(unit.P[row], pos[expected[i]] - pos[i], atol=1e-12)
    s = env["S"]
    assert s.P.shape == (3, 3, 3) and (s.Z == [6, 79, 79]).all()


def test_half_unit_has_one_block():
    atoms = ring(n_sulfur=3)  # the S between Au 3 and Au 0 is missing
    classes = classify(atoms)
    assert list(classes[:4]) == ["Au_unit"] * 4
    unit = describe_environments(atoms)["Au_unit"]
    half = [0, 3]
    assert np.isfinite(unit.P[1:3]).all()
    assert np.isfinite(unit.P[half, :3]).all()
    assert np.isnan(unit.P[half, 3:]).all()
    assert (unit.Z[half, 3:] == 0).all() and (unit.Z[half, :3] == [16, 6, 79]).all()
    # The block swap would put the missing block in place of the present one.
    mask = permutation_mask(unit.Z, class_permutations("thiolate", "Au_unit"))
    assert mask.tolist() == [[True, False], [True, True], [True, True], [True, False]]


def test_small_neighbourhoods_follow_the_rules():
    atoms = ring()
    env = describe_environments(atoms)
    h, c, s = env["H"], env["C"], env["S"]
    assert (h.Z == [6, 1, 1]).all() and (c.Z == [16, 1, 1, 1]).all()
    assert np.allclose(np.linalg.norm(h.P[:, 0], axis=1), C_H)
    # The two other H are on the same C: C–H bonds from the carbon point.
    for k in (1, 2):
        assert np.allclose(np.linalg.norm(h.P[:, k] - h.P[:, 0], axis=1), C_H)
    assert np.allclose(np.linalg.norm(c.P[:, 0], axis=1), S_C)
    assert np.allclose(np.linalg.norm(c.P[:, 1:], axis=2), C_H)
    assert np.allclose(np.linalg.norm(s.P[:, 0], axis=1), S_C)
    assert np.allclose(np.linalg.norm(s.P[:, 1:], axis=2), 2.298, atol=1e-3)


def test_class_tables():
    assert class_names("thiolate", ["H", "C", "S", "Au", "H"]) == [
        "Au_core",
        "Au_unit",
        "S",
        "C",
        "H",
    ]
    assert class_names("thiolate", [79]) == ["Au_core", "Au_unit"]
    assert class_names("element", ["S", "H", 6]) == ["H", "C", "S"]
    with pytest.raises(SchemeError, match="element O"):
        class_names("thiolate", ["Au", "O"])
    with pytest.raises(InputError, match="scheme"):
        class_names("soap", ["H"])

    widths = {
        name: class_width("thiolate", name) for name in class_names("thiolate", [79, 1, 6, 16])
    }
    assert widths == {"Au_core": 12, "Au_unit": 6, "S": 3, "C": 4, "H": 3}
    assert class_permutations("thiolate", "H").tolist() == [[0, 1, 2], [0, 2, 1]]
    assert class_permutations("thiolate", "S").tolist() == [[0, 1, 2], [0, 2, 1]]
    carbon = class_permutations("thiolate", "C")
    assert carbon.shape == (6, 4) and (carbon[:, 0] == 0).all()
    assert list(map(tuple, carbon[:, 1:])) == [
        (1, 2, 3),
        (1, 3, 2),
        (2, 1, 3),
        (2, 3, 1),
        (3, 1, 2),
        (3, 2, 1),
    ]
    assert class_permutations("thiolate", "Au_unit").tolist() == [
        [0, 1, 2, 3, 4, 5],
        [3, 4, 5, 0, 1, 2],
    ]
    assert class_permutations("thiolate", "Au_core").tolist() == [list(range(12))]
    for name in widths:
        perms = class_permutations("thiolate", name)
        assert perms.shape[1] == widths[name] and (perms[0] == np.arange(widths[name])).all()


# ------------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("scheme", ["thiolate", "element"])
def test_rotated_translated_copy(scheme):
    atoms, _ = staple_on_core()
    rotation = _random_rotation(7)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + [3.1, -7.4, 12.9]
    env, env_moved = describe_environments(atoms, scheme), describe_environments(moved, scheme)
    assert list(env) == list(env_moved)
    for name in env:
        a, b = env[name], env_moved[name]
        assert (a.atom == b.atom).all() and (a.Z == b.Z).all()
        assert np.array_equal(np.isnan(a.P), np.isnan(b.P))
        assert np.allclose(b.P, a.P @ rotation.T, atol=1e-10, equal_nan=True)
    assert (classify(atoms, scheme) == classify(moved, scheme)).all()


# --------------------------------------------------------------------------------- periodic


@pytest.mark.parametrize("scheme", ["thiolate", "element"])
def test_structure_across_a_periodic_boundary(scheme):
    atoms = ring()
    cell = np.array([[16.0, 0.0, 0.0], [4.0, 15.0, 0.0], [1.0, 2.0, 14.0]])
    wrapped = atoms.copy()
    wrapped.set_cell(cell)
    wrapped.set_pbc(True)
    wrapped.positions += 0.02 * cell.sum(axis=0)  # the ring now straddles all three faces
    wrapped.wrap()
    assert np.ptp(wrapped.positions[:, 0]) > 10  # really split by the boundary
    env, env_wrapped = describe_environments(atoms, scheme), describe_environments(wrapped, scheme)
    for name in env:
        assert np.allclose(env[name].P, env_wrapped[name].P, atol=1e-10, equal_nan=True)
        assert (env[name].Z == env_wrapped[name].Z).all()


def test_minimum_image_neighbour():
    atoms = Atoms("HHC", positions=[[0.3, 5, 5], [5, 5, 5], [9.7, 5, 5]], cell=[10, 10, 10])
    atoms.pbc = [True, False, False]
    h = describe_environments(atoms, "element", neighbours=2)["H"]
    assert np.allclose(h.P[0], [[-0.6, 0, 0], [4.7, 0, 0]])
    assert (h.Z[0] == [6, 1]).all()
    atoms.pbc = False
    h = describe_environments(atoms, "element", neighbours=2)["H"]
    assert np.allclose(h.P[0], [[4.7, 0, 0], [9.4, 0, 0]])


@pytest.mark.parametrize(
    "pbc", [(True, True, True), (True, True, False), (False, True, False)], ids=["3d", "2d", "1d"]
)
def test_minimum_image_matches_brute_force(pbc):
    # A skewed cell whose aperiodic vector is not orthogonal to the periodic ones.
    cell = np.array([[6.0, 0.0, 0.0], [4.5, 5.0, 0.0], [2.0, -3.0, 6.5]])
    rng = np.random.default_rng(3)
    atoms = Atoms("H12", positions=rng.uniform(-3, 9, size=(12, 3)), cell=cell, pbc=pbc)
    env = describe_environments(atoms, "element", neighbours=5)["H"]
    ranges = [range(-3, 4) if p else (0,) for p in pbc]
    shifts = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T @ cell
    for row, i in enumerate(env.atom):
        vectors = atoms.positions[None, :] - atoms.positions[i] + shifts[:, None]
        shortest = np.linalg.norm(vectors, axis=2).min(axis=0)
        expected = np.sort(np.delete(shortest, i))[:5]
        assert np.allclose(np.linalg.norm(env.P[row], axis=1), expected, atol=1e-10)


# ---------------------------------------------------------------------------------- errors


def _without(atoms: Atoms, indices: list[int]) -> Atoms:
    keep = [i for i in range(len(atoms)) if i not in indices]
    return atoms[keep]


def test_unknown_element():
    atoms = ring() + Atoms("O", positions=[[0, 0, 8]])
    with pytest.raises(SchemeError, match=r"^frame 12, atom 24 \(O\): element O .*--scheme"):
        describe_environments(atoms, frame=12)
    with pytest.raises(SchemeError, match=r"atom 24 \(O\)"):
        classify(atoms)


def test_methyl_missing_a_hydrogen():
    atoms = ring()
    carbon = atoms.get_chemical_symbols().index("C")
    broken = _without(atoms, [carbon + 1])
    message = rf"^frame 7, atom {carbon} \(C\): expected 3 H within 1.5 Å, found 2; .*Au–SCH3"
    with pytest.raises(SchemeError, match=message):
        describe_environments(broken, frame=7)
    assert classify(broken)[carbon] == "C"  # classification alone does not need the methyl


def test_sulfur_without_carbon_and_lonely_hydrogen():
    atoms = ring()
    sulfur = atoms.get_chemical_symbols().index("S")
    with pytest.raises(SchemeError, match=rf"atom {sulfur} \(S\): expected a C within 2.2 Å"):
        describe_environments(_without(atoms, [sulfur + 1 + k for k in range(4)]))
    stray = atoms + Atoms("H", positions=[[0, 0, 9]])
    with pytest.raises(SchemeError, match=rf"atom {len(atoms)} \(H\): expected a C within 1.5"):
        describe_environments(stray)


def test_core_gold_needs_two_gold_neighbours():
    with pytest.raises(SchemeError, match=r"atom 0 \(Au\): expected at least 2 Au within 5.0"):
        describe_environments(Atoms("Au2", positions=[[0, 0, 0], [2.5, 0, 0]]))


# --------------------------------------------------------------------------- element scheme


def test_element_scheme_on_propane():
    atoms = molecule("C3H8")
    env = describe_environments(atoms, "element")
    assert list(env) == ["H", "C"]
    assert env["H"].P.shape == (8, 4, 3) and env["C"].P.shape == (3, 4, 3)
    carbons = list(env["C"].atom)
    assert carbons == [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "C"]
    d = np.linalg.norm(env["C"].P, axis=2)
    assert (np.diff(d, axis=1) >= 0).all()
    z = {tuple(row) for row in env["C"].Z.tolist()}
    assert z == {(1, 1, 1, 6), (1, 1, 6, 6)}  # terminal and central carbon
    assert (env["H"].Z[:, 0] == 6).all()

    perms = class_permutations("element", "C", neighbours=4)
    assert perms.shape == (24, 4) and len({tuple(p) for p in perms}) == 24
    assert (perms[0] == np.arange(4)).all()
    assert permutation_mask(env["C"].Z, perms).all()


def test_capped_element_respecting_permutations():
    perms = class_permutations("element", "C", neighbours=4)
    Z = np.array([[1, 1, 1, 6], [1, 1, 6, 6], [6, 6, 6, 6]])
    mask = permutation_mask(Z, perms, max_permutations=100)
    assert mask.sum(axis=1).tolist() == [6, 4, 24]
    for row, keep in zip(Z, mask, strict=True):
        assert (row[perms[keep]] == row).all()
    capped = permutation_mask(Z, perms, max_permutations=3)
    assert capped.sum(axis=1).tolist() == [3, 3, 3]
    assert capped[:, 0].all() and (capped <= mask).all()
    # Kept in table order: the first admissible permutations.
    first = np.flatnonzero(mask[0])[:3]
    assert np.flatnonzero(capped[0]).tolist() == first.tolist()


def test_element_scheme_pads_small_frames():
    env = describe_environments(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), "element")
    h = env["H"]
    assert np.allclose(h.P[:, 0], [[0, 0, 0.74], [0, 0, -0.74]])
    assert np.isnan(h.P[:, 1:]).all() and (h.Z == [1, 0, 0, 0]).all()
    perms = class_permutations("element", "H")
    mask = permutation_mask(h.Z, perms)
    assert (mask.sum(axis=1) == 6).all() and (perms[mask[0], 0] == 0).all()
    with pytest.raises(InputError, match="neighbours"):
        describe_environments(Atoms("H2"), "element", neighbours=9)
