"""Structure builders: composition, bond lengths, ring shape, specs, displacements."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from oamlm_dist.errors import InputError
from oamlm_dist.structures import (
    alkane,
    gold_thiolate_ring,
    parse_structures,
    perturb,
    rattle,
)


def _nearest(atoms: Atoms, a: str, b: str) -> np.ndarray:
    """Distance from every atom of element ``a`` to its nearest atom of element ``b``."""
    sym = np.array(atoms.get_chemical_symbols())
    d = atoms.get_all_distances()
    return d[np.ix_(sym == a, sym == b)].min(axis=1)


@pytest.mark.parametrize("n", range(3, 9))
def test_ring_composition_bonds_and_puckering(n):
    atoms = gold_thiolate_ring(n)
    assert atoms.get_chemical_formula(mode="hill") == f"C{n}H{3 * n}Au{n}S{n}"
    assert not atoms.pbc.any() and atoms.cell.rank == 0
    np.testing.assert_allclose(atoms.positions.mean(axis=0), 0.0, atol=1e-12)
    for a, b in (("S", "C"), ("C", "S"), ("Au", "S"), ("S", "Au")):
        d = _nearest(atoms, a, b)
        assert ((d > 1.7) & (d < 2.6)).all(), (a, b, d)
    np.testing.assert_allclose(_nearest(atoms, "Au", "S"), 2.32, atol=1e-9)
    np.testing.assert_allclose(_nearest(atoms, "S", "C"), 1.82, atol=1e-9)
    np.testing.assert_allclose(_nearest(atoms, "H", "C"), 1.09, atol=1e-9)
    # every Au has exactly two S at bonding distance, every S two Au
    sym = np.array(atoms.get_chemical_symbols())
    d = atoms.get_all_distances()
    au_s = d[np.ix_(sym == "Au", sym == "S")] < 2.6
    assert (au_s.sum(axis=1) == 2).all() and (au_s.sum(axis=0) == 2).all()
    # Au in the ring plane, S 1.0 Å above/below in turns (about the Au plane)
    z_au = atoms.positions[sym == "Au", 2]
    z_s = atoms.positions[sym == "S", 2] - z_au.mean()
    np.testing.assert_allclose(z_au, z_au.mean(), atol=1e-12)
    np.testing.assert_allclose(np.abs(z_s), 1.0, atol=1e-12)
    signs = np.sign(z_s)
    assert (signs[: 2 * (n // 2)] == np.tile([1.0, -1.0], n // 2)).all()
    # no clashes between different thiolates: nothing but bonds below 1.5 Å
    np.fill_diagonal(d, np.inf)
    assert d.min() > 1.0
    assert (np.sort(d, axis=1)[sym == "H", 1] > 1.7).all()  # an H has one close partner


def test_ring_methyl_points_away_from_plane():
    atoms = gold_thiolate_ring(6)
    sym = np.array(atoms.get_chemical_symbols())
    z_s = atoms.positions[sym == "S", 2]
    z_c = atoms.positions[sym == "C", 2]
    assert (np.sign(z_c) == np.sign(z_s)).all() and (np.abs(z_c) > np.abs(z_s)).all()


@pytest.mark.parametrize("n", [2, 0, 9, 4.0, "5", True])
def test_ring_size_validation(n):
    with pytest.raises(InputError, match="3..8"):
        gold_thiolate_ring(n)


@pytest.mark.parametrize("n", range(2, 11))
def test_alkane_composition_and_geometry(n):
    atoms = alkane(n)
    assert atoms.get_chemical_formula(mode="hill") == f"C{n}H{2 * n + 2}"
    sym = np.array(atoms.get_chemical_symbols())
    d = atoms.get_all_distances()
    cc = d[np.ix_(sym == "C", sym == "C")]
    np.testing.assert_allclose(np.diag(cc, 1), 1.53, atol=1e-9)
    np.testing.assert_allclose(_nearest(atoms, "H", "C"), 1.09, atol=1e-9)
    # carbon valence 4: C neighbours + H neighbours
    bonded = (d < 1.6) & (d > 0)
    np.testing.assert_array_equal(bonded[sym == "C"].sum(axis=1), 4)
    np.testing.assert_array_equal(bonded[sym == "H"].sum(axis=1), 1)
    # all bond angles at carbon tetrahedral
    for c in np.flatnonzero(sym == "C"):
        nb = np.flatnonzero(bonded[c])
        for i in range(len(nb)):
            for j in range(i + 1, len(nb)):
                assert abs(atoms.get_angle(nb[i], c, nb[j]) - 109.4712) < 1e-3
    np.fill_diagonal(d, np.inf)
    assert d.min() > 1.0


@pytest.mark.parametrize("n", [1, 11, 2.5])
def test_alkane_size_validation(n):
    with pytest.raises(InputError, match="2..10"):
        alkane(n)


def test_rattle_and_perturb_are_copies_and_deterministic():
    ring = gold_thiolate_ring(4)
    before = ring.positions.copy()
    a, b, c = rattle(ring, 0.1, 7), rattle(ring, 0.1, 7), rattle(ring, 0.1, 8)
    np.testing.assert_array_equal(ring.positions, before)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(a.positions, c.positions)
    assert 0.05 < np.std(a.positions - before) < 0.15
    p = perturb(ring, 0.3, 1, indices=[0, 5])
    np.testing.assert_array_equal(ring.positions, before)
    moved = np.linalg.norm(p.positions - before, axis=1)
    np.testing.assert_allclose(moved[[0, 5]], 0.3)
    assert np.count_nonzero(moved) == 2
    with pytest.raises(InputError):
        rattle(ring, -1.0, 0)
    with pytest.raises(InputError):
        perturb(ring, 0.1, 0, indices=[len(ring)])


def test_parse_structures_families_and_names():
    got = parse_structures("rings:4-6,alkanes:2-3")
    assert [n for n, _ in got] == ["ring-Au4", "ring-Au5", "ring-Au6", "alkane-C2", "alkane-C3"]
    assert got[1][1].get_chemical_formula(mode="hill") == "C5H15Au5S5"
    assert [n for n, _ in parse_structures("rings:7")] == ["ring-Au7"]
    assert [n for n, _ in parse_structures(" Alkanes:2-7 ")][-1] == "alkane-C7"
    assert [n for n, _ in parse_structures("rings:4,6,4")] == ["ring-Au4", "ring-Au6"]


def test_parse_structures_reads_files(tmp_path):
    single = tmp_path / "my mol.xyz"
    write(single, alkane(2))
    multi = tmp_path / "traj.extxyz"
    write(multi, [alkane(2), alkane(3)])
    (name, atoms), = parse_structures(str(single))
    assert name == "my mol" and len(atoms) == 8
    got = parse_structures(f"rings:4,{multi}")
    assert [n for n, _ in got] == ["ring-Au4", "traj-0", "traj-1"]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty"),
        ("rings:", "bad structure spec"),
        ("rings:9", "out of range"),
        ("alkanes:1-3", "out of range"),
        ("rings:6-4", "reversed"),
        ("spheres:3", "unknown structure family"),
        ("4-5", "no family"),
        ("rings:4,,5", "empty item"),
        ("no/such/file.xyz", "bad structure spec"),
    ],
)
def test_parse_structures_errors(spec, match):
    with pytest.raises(InputError, match=match):
        parse_structures(spec)


def test_parse_structures_unreadable_file(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("this is not xyz\n")
    with pytest.raises(InputError, match="cannot read structures from"):
        parse_structures(str(bad))
