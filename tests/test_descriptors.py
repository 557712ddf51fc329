"""SOAP settings, SOAP rows against DScribe itself, and min-max scaling."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from dscribe.descriptors import SOAP

from oamlm_dist.descriptors import MinMaxScaler, SoapSettings, make_soap, soap_rows
from oamlm_dist.errors import InputError

SPECIES = ("H", "C", "S", "Au")


def au_thiolate() -> Atoms:
    """Methanethiolate on a gold atom, slightly rattled (non-periodic, no cell)."""
    atoms = molecule("CH3SH")  # C, S, H(on S), H, H, H
    bond = atoms.positions[2] - atoms.positions[1]
    atoms.symbols[2] = "Au"
    atoms.positions[2] = atoms.positions[1] + 2.3 * bond / np.linalg.norm(bond)
    atoms.rattle(0.02, seed=1)
    return atoms


def au_s_crystal() -> Atoms:
    """A small periodic Au cell with one S atom, rattled."""
    atoms = bulk("Au", "fcc", a=4.08, cubic=True).repeat((2, 2, 1))
    atoms.symbols[0] = "S"
    atoms.rattle(0.05, seed=2)
    return atoms


def test_defaults_are_the_published_settings():
    s = SoapSettings()
    assert (s.r_cut, s.n_max, s.l_max, s.sigma) == (4.0, 7, 4, 0.25)
    assert SoapSettings.parse("r_cut=4,n_max=7,l_max=4,sigma=0.25") == s
    assert SoapSettings.parse("") == s


def test_settings_round_trip_and_canonical_form():
    s = SoapSettings.parse(" r_cut=5 , n_max=6, species=Au+H+S+C+H, periodic=yes ")
    assert s.species == SPECIES and s.periodic is True and s.r_cut == 5.0
    assert SoapSettings.parse(str(s)) == s
    assert SoapSettings.from_dict(s.to_dict()) == s


def test_settings_id_is_stable_and_keyed_by_value():
    s = SoapSettings(species=SPECIES)
    same = SoapSettings(r_cut=4, species=("Au", "S", "H", "C"))
    assert s.settings_id() == same.settings_id() == SoapSettings.from_dict(
        s.to_dict()
    ).settings_id()
    assert s.settings_id() == "fb0ccb9d65c1"  # pinned: ids key stored descriptor sets
    assert SoapSettings(sigma=0.5, species=SPECIES).settings_id() != s.settings_id()
    assert SoapSettings(species=SPECIES, periodic=True).settings_id() != s.settings_id()


@pytest.mark.parametrize(
    "text",
    [
        "foo=1",
        "n_max=seven",
        "n_max=7.5",
        "n_max",
        "=4",
        "n_max=7,n_max=6",
        "sigma=-1",
        "sigma=nan",
        "r_cut=0.5",
        "l_max=21",
        "n_max=0",
        "species=Au+Xx",
        "periodic=maybe",
    ],
)
def test_parser_rejects_bad_input_in_one_line(text):
    with pytest.raises(InputError) as info:
        SoapSettings.parse(text)
    assert "\n" not in str(info.value)


def without_pbc(atoms: Atoms) -> Atoms:
    finite = atoms.copy()
    finite.pbc = False
    return finite


def direct_soap(periodic: bool) -> SOAP:
    """The descriptor built with DScribe's own API, to check ``make_soap``'s mapping."""
    return SOAP(
        species=list(SPECIES), r_cut=4.0, n_max=7, l_max=4, sigma=0.25, periodic=periodic
    )


def test_soap_rows_equal_dscribe_create():
    soap = make_soap(SoapSettings(species=SPECIES))
    reference = direct_soap(periodic=False)
    for seed in range(2):
        atoms = au_thiolate()
        atoms.rattle(0.05, seed=seed)
        centers = [3, 0, 1]
        rows = soap_rows(soap, atoms, centers)
        assert rows.shape == (3, reference.get_number_of_features()) == (3, 2030)
        assert rows.dtype == np.float64 and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, reference.create(atoms, centers=centers))


def test_soap_rows_periodic_cell():
    soap = make_soap(SoapSettings(species=SPECIES, periodic=True))
    atoms = au_s_crystal()
    rows = soap_rows(soap, atoms, np.arange(len(atoms)))
    np.testing.assert_array_equal(rows, direct_soap(periodic=True).create(atoms))
    # Periodic images matter: the same atoms without periodicity describe differently.
    finite = soap_rows(make_soap(SoapSettings(species=SPECIES)), without_pbc(atoms), [0])
    assert not np.allclose(rows[0], finite[0])


def test_periodic_settings_accept_finite_frames_unchanged():
    atoms = au_thiolate()
    rows = soap_rows(make_soap(SoapSettings(species=SPECIES, periodic=True)), atoms, [0, 2])
    np.testing.assert_array_equal(rows, direct_soap(periodic=False).create(atoms, centers=[0, 2]))


def test_soap_rows_reject_bad_frames():
    finite = make_soap(SoapSettings(species=SPECIES))
    with pytest.raises(InputError, match="periodic"):
        soap_rows(finite, au_s_crystal(), [0])
    with pytest.raises(InputError, match="Fe"):
        soap_rows(finite, Atoms("FeH", positions=[[0, 0, 0], [0, 0, 1.5]]), [0])
    with pytest.raises(InputError, match="out of range"):
        soap_rows(finite, au_thiolate(), [6])
    nan_frame = au_thiolate()
    nan_frame.positions[2, 1] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        soap_rows(finite, nan_frame, [0])
    with pytest.raises(InputError, match="species"):
        make_soap(SoapSettings())
    assert soap_rows(finite, au_thiolate(), []).shape == (0, 2030)


def test_scaler_maps_training_rows_into_unit_interval():
    rng = np.random.default_rng(3)
    X = rng.normal(scale=5.0, size=(200, 8))
    X[:, 4] = 2.5  # a constant feature
    scaler = MinMaxScaler().fit(X)
    Z = scaler.transform(X)
    assert Z.min() == 0.0 and Z.max() == 1.0
    np.testing.assert_array_equal(Z.min(axis=0)[[0, 1, 2, 3, 5, 6, 7]], 0.0)
    np.testing.assert_array_equal(Z.max(axis=0)[[0, 1, 2, 3, 5, 6, 7]], 1.0)
    np.testing.assert_array_equal(Z[:, 4], 0.0)
    outside = scaler.transform(X[:1] + 1000.0)
    assert outside[0, 0] > 1.0 and outside[0, 4] == 0.0
    Z32 = scaler.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32 and Z32.min() >= 0.0 and Z32.max() <= 1.0


def test_scaler_blockwise_equals_whole():
    X = np.random.default_rng(4).random((257, 5))
    whole = MinMaxScaler().fit(X)
    blocks = [X[a : a + 50] for a in range(0, len(X), 50)]
    streamed = MinMaxScaler()
    for block in blocks:
        streamed.partial_fit(block)
    merged = MinMaxScaler()
    for block in blocks:  # as if each block were fitted in its own task
        merged = merged.merge(MinMaxScaler().fit(block))
    for scaler in (streamed, merged, MinMaxScaler.from_arrays(whole.to_arrays())):
        np.testing.assert_array_equal(scaler.data_min, whole.data_min)
        np.testing.assert_array_equal(scaler.data_max, whole.data_max)
        assert scaler.n_samples_seen == 257
        np.testing.assert_array_equal(scaler.transform(X), whole.transform(X))


def test_scaler_rejects_non_finite_rows():
    X = np.ones((4, 3))
    X[2, 1] = np.inf
    with pytest.raises(InputError, match="row 2"):
        MinMaxScaler().partial_fit(X)
