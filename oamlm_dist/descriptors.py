"""SOAP descriptors (DScribe) and min-max scaling: the pure, in-memory building blocks.

The store-backed stage that maps these over frame blocks lives elsewhere; everything here
works on one ``ase.Atoms`` or one block of rows at a time, so it can run inside a Dask task.

* :class:`SoapSettings` -- the SOAP hyper-parameters (defaults from the Au38(SR)24 study:
  r_cut = 4.0 Å, n_max = 7, l_max = 4, sigma = 0.25), a CLI parser and a stable id that keys
  a descriptor set by its settings.
* :func:`make_soap`, :func:`soap_rows` -- one DScribe ``SOAP`` object and its rows for chosen
  centre atoms. Rows are float64, the precision DScribe computes in; the store may cast them
  to float32 (4 species, n_max = 7, l_max = 4 give 2030 features: 8 GB per 10^6 rows instead
  of 16 GB) since a relative rounding of 6e-8 is far below any physical resolution of SOAP.
* :class:`MinMaxScaler` -- per-feature scaling to [0, 1], fitted block by block and merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from dscribe.descriptors import SOAP
from dscribe.utils.species import get_atomic_numbers

from oamlm_dist.errors import InputError

__all__ = ["MinMaxScaler", "SoapSettings", "make_soap", "soap_rows"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class SoapSettings:
    """SOAP hyper-parameters (DScribe GTO radial basis, no averaging, no compression).

    Parameters
    ----------
    r_cut : float
        Cut-off radius in Å; DScribe's GTO basis needs ``r_cut > 1``.
    n_max : int
        Number of radial basis functions, ``>= 1``.
    l_max : int
        Maximum degree of the spherical harmonics, ``0 <= l_max <= 20``.
    sigma : float
        Width of the atomic Gaussians in Å, ``> 0``.
    species : tuple of str
        Chemical symbols the descriptor distinguishes. Stored sorted by atomic number and
        without repeats (DScribe orders features that way, so the order given is irrelevant).
    periodic : bool
        Respect periodic boundary conditions; required for frames with any periodic axis.

    Raises
    ------
    InputError
        If a value is out of range or a species is not a chemical symbol.
    """

    r_cut: float = 4.0
    n_max: int = 7
    l_max: int = 4
    sigma: float = 0.25
    species: tuple[str, ...] = ()
    periodic: bool = False

    def __post_init__(self) -> None:
        # Coerce here so that equal settings compare, hash and serialise equally.
        set_ = object.__setattr__
        set_(self, "r_cut", _as_float("r_cut", self.r_cut))
        set_(self, "n_max", _as_int("n_max", self.n_max))
        set_(self, "l_max", _as_int("l_max", self.l_max))
        set_(self, "sigma", _as_float("sigma", self.sigma))
        set_(self, "species", _as_species(self.species))
        set_(self, "periodic", _as_bool("periodic", self.periodic))
        if not self.r_cut > 1.0:
            raise InputError(f"SOAP r_cut={self.r_cut} must be > 1 Å (DScribe's GTO basis)")
        if self.n_max < 1:
            raise InputError(f"SOAP n_max={self.n_max} must be >= 1")
        if not 0 <= self.l_max <= 20:
            raise InputError(f"SOAP l_max={self.l_max} must be between 0 and 20")
        if not self.sigma > 0.0:
            raise InputError(f"SOAP sigma={self.sigma} must be > 0")

    @classmethod
    def parse(cls, text: str) -> SoapSettings:
        """Read settings from a CLI string such as ``"r_cut=4,n_max=7,l_max=4,sigma=0.25"``.

        Keys not given keep their defaults. ``species`` lists symbols joined by ``+``
        (``species=Au+S+C+H``); ``periodic`` accepts true/false, yes/no, on/off, 1/0.

        Parameters
        ----------
        text : str
            Comma-separated ``key=value`` pairs; an empty string gives the defaults.

        Returns
        -------
        SoapSettings

        Raises
        ------
        InputError
            On an unknown or repeated key, a pair without ``=``, or a bad value.
        """
        values: dict[str, Any] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not key:
                raise InputError(f"SOAP setting {item!r} in {text!r} is not of the form key=value")
            if key in values:
                raise InputError(f"SOAP setting {key!r} is given twice in {text!r}")
            values[key] = value.split("+") if key == "species" and value else value
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoapSettings:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults.

        Raises
        ------
        InputError
            On an unknown key or a bad value.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"unknown SOAP setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings (species as a list)."""
        data = dataclasses.asdict(self)
        data["species"] = list(self.species)
        return data

    def settings_id(self) -> str:
        """Short, stable hash of the canonical JSON of the settings.

        Equal settings give equal ids across processes and sessions, so a descriptor set
        in the store can be keyed by the settings that produced it.
        """
        canonical = json.dumps(
            {"descriptor": "soap", "rbf": "gto", **self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def __str__(self) -> str:
        """The CLI form read by :meth:`parse`."""
        parts = [f"{key}={value}" for key, value in self.to_dict().items() if key != "species"]
        if self.species:
            parts.append("species=" + "+".join(self.species))
        return ",".join(parts)


def make_soap(settings: SoapSettings) -> SOAP:
    """The DScribe SOAP descriptor for ``settings``.

    DScribe is single-threaded C++; build one object per Dask task (``settings`` is the
    small, picklable part that travels) and never use DScribe's own ``n_jobs``.

    Parameters
    ----------
    settings : SoapSettings
        Must name at least one species.

    Returns
    -------
    dscribe.descriptors.SOAP
        Dense, float64, GTO radial basis, one row per centre (``average="off"``).

    Raises
    ------
    InputError
        If ``settings.species`` is empty.
    """
    if not settings.species:
        raise InputError("SOAP settings name no species; give e.g. species=Au+S+C+H")
    return SOAP(
        species=list(settings.species),
        r_cut=settings.r_cut,
        n_max=settings.n_max,
        l_max=settings.l_max,
        sigma=settings.sigma,
        rbf="gto",
        average="off",
        periodic=settings.periodic,
        sparse=False,
        dtype="float64",
    )


def soap_rows(soap: SOAP, atoms: Atoms, centers: Sequence[int] | np.ndarray) -> np.ndarray:
    """SOAP rows of the centre atoms ``centers`` of one frame.

    Parameters
    ----------
    soap : dscribe.descriptors.SOAP
        From :func:`make_soap`.
    atoms : ase.Atoms
        The frame. A frame with any periodic axis needs a periodic ``soap``. A periodic
        ``soap`` also accepts a non-periodic frame without a cell: it gets a placeholder cell,
        which with all axes non-periodic leaves the rows unchanged.
    centers : sequence of int
        Atom indices, in the order of the returned rows; may be empty.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(centers), n_features)``, float64, C-contiguous.

    Raises
    ------
    InputError
        On a periodic frame with a non-periodic ``soap``, a zero-volume periodic cell,
        non-finite positions, an element outside ``soap.species`` or a bad centre index.
    """
    idx = np.asarray(centers)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError("SOAP centres must be a one-dimensional list of atom indices")
    n_features = soap.get_number_of_features()
    if idx.size == 0:
        return np.zeros((0, n_features))
    formula = atoms.get_chemical_formula()
    if idx.min() < 0 or idx.max() >= len(atoms):
        raise InputError(f"SOAP centre index out of range 0..{len(atoms) - 1} in {formula}")
    if not np.isfinite(atoms.positions).all():
        raise InputError(f"non-finite atom positions in {formula}; fix or drop the frame")
    missing = set(atoms.numbers.tolist()) - set(get_atomic_numbers(soap.species).tolist())
    if missing:
        names = ", ".join(chemical_symbols[z] for z in sorted(missing))
        raise InputError(f"element(s) {names} in {formula} are not among the SOAP species")
    pbc = atoms.pbc.any()
    if pbc and not soap.periodic:
        raise InputError(f"frame {formula} is periodic; use SOAP settings with periodic=true")
    if soap.periodic and atoms.cell.volume == 0.0:
        if pbc:
            raise InputError(f"periodic frame {formula} has a zero-volume cell")
        atoms = atoms.copy()
        atoms.set_cell(np.eye(3))
    # create_single: the serial path of create() without its joblib dispatch.
    rows = soap.create_single(atoms, centers=idx.astype(np.int64))
    return np.ascontiguousarray(rows, dtype=np.float64).reshape(idx.size, n_features)


class MinMaxScaler:
    """Per-feature affine map of the training rows onto [0, 1].

    Only the running minimum and maximum are kept, so the scaler can be fitted block by
    block (:meth:`partial_fit`) or fitted on blocks in separate Dask tasks and combined
    (:meth:`merge`), with the same result as :meth:`fit` on all rows. A feature that is
    constant on the training rows maps to 0. Rows outside the training range map outside
    [0, 1]; they are not clipped, so distances keep growing beyond the training data.

    Parameters
    ----------
    data_min, data_max : array_like, optional
        Per-feature extrema of a previous fit (both or neither).
    n_samples_seen : int
        Number of rows behind the extrema.
    """

    def __init__(
        self,
        data_min: np.ndarray | None = None,
        data_max: np.ndarray | None = None,
        n_samples_seen: int = 0,
    ) -> None:
        if (data_min is None) != (data_max is None):
            raise ValueError("give both data_min and data_max or neither")
        self.data_min = None if data_min is None else np.array(data_min, dtype=np.float64)
        self.data_max = None if data_max is None else np.array(data_max, dtype=np.float64)
        if self.data_min is not None and self.data_min.shape != self.data_max.shape:
            raise ValueError("data_min and data_max differ in shape")
        self.n_samples_seen = int(n_samples_seen)

    @property
    def fitted(self) -> bool:
        """Whether extrema are known."""
        return self.data_min is not None

    @property
    def n_features(self) -> int:
        """Number of features of the fitted data."""
        self._check_fitted()
        return self.data_min.shape[0]

    def fit(self, X: np.ndarray) -> MinMaxScaler:
        """Forget earlier data and fit on the rows of ``X``; returns ``self``."""
        self.data_min = self.data_max = None
        self.n_samples_seen = 0
        return self.partial_fit(X)

    def partial_fit(self, X: np.ndarray) -> MinMaxScaler:
        """Extend the fit with one block of rows; returns ``self``.

        Raises
        ------
        InputError
            If the block holds NaN or infinite values.
        """
        X = self._check_rows(X)
        if X.shape[0] == 0:
            return self
        if not np.isfinite(X).all():
            row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise InputError(f"descriptor row {row} of the block is not finite; cannot scale")
        block_min = X.min(axis=0).astype(np.float64)
        block_max = X.max(axis=0).astype(np.float64)
        if self.fitted:
            np.minimum(self.data_min, block_min, out=self.data_min)
            np.maximum(self.data_max, block_max, out=self.data_max)
        else:
            self.data_min, self.data_max = block_min, block_max
        self.n_samples_seen += X.shape[0]
        return self

    def merge(self, other: MinMaxScaler) -> MinMaxScaler:
        """A new scaler fitted on the rows behind ``self`` and ``other`` together."""
        if not (self.fitted and other.fitted):
            single = self if self.fitted else other
            return MinMaxScaler(single.data_min, single.data_max, single.n_samples_seen)
        if self.data_min.shape != other.data_min.shape:
            raise ValueError("cannot merge scalers fitted on different numbers of features")
        return MinMaxScaler(
            np.minimum(self.data_min, other.data_min),
            np.maximum(self.data_max, other.data_max),
            self.n_samples_seen + other.n_samples_seen,
        )

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scale the rows of ``X``.

        Float32 input stays float32, anything else becomes float64. Training rows land in
        [0, 1] exactly: the arithmetic is ``(x - min) / (max - min)`` in the output dtype,
        whose rounding is monotone and gives exactly 1 at the maximum.
        """
        self._check_fitted()
        X = self._check_rows(X)
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        lo = self.data_min.astype(dtype)
        span = self.data_max.astype(dtype) - lo
        constant = span == 0
        out = np.subtract(X, lo, dtype=dtype)
        np.divide(out, np.where(constant, 1, span), out=out)
        out[:, constant] = 0
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays that describe the fit (for the store); inverse of :meth:`from_arrays`."""
        self._check_fitted()
        return {
            "data_min": self.data_min.copy(),
            "data_max": self.data_max.copy(),
            "n_samples_seen": np.array(self.n_samples_seen, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MinMaxScaler:
        """Rebuild a scaler from :meth:`to_arrays` output."""
        return cls(
            np.asarray(arrays["data_min"]),
            np.asarray(arrays["data_max"]),
            int(np.asarray(arrays["n_samples_seen"])),
        )

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ValueError("MinMaxScaler is not fitted yet")

    def _check_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected rows of features (2-D), got shape {X.shape}")
        if self.fitted and X.shape[1] != self.data_min.shape[0]:
            raise ValueError(
                f"expected {self.data_min.shape[0]} features, got {X.shape[1]}"
            )
        return X


def _as_float(name: str, value: Any) -> float:
    try:
        result = float(value) if not isinstance(value, bool) else np.nan
    except (TypeError, ValueError):
        result = np.nan
    if not np.isfinite(result):
        raise InputError(f"SOAP setting {name}={value!r} is not a finite number")
    return result


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"SOAP setting {name}={value!r} is not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise InputError(f"SOAP setting {name}={value!r} is not an integer") from None


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"SOAP setting {name}={value!r} is not true or false")


def _as_species(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split("+") if value else []
    try:
        symbols = [str(s).strip() for s in value]
    except TypeError:
        raise InputError(f"SOAP species {value!r} is not a list of chemical symbols") from None
    unknown = [s for s in symbols if s not in atomic_numbers or s == "X"]
    if unknown:
        raise InputError(f"SOAP species {', '.join(map(repr, unknown))} are not chemical symbols")
    return tuple(sorted(set(symbols), key=atomic_numbers.__getitem__))
