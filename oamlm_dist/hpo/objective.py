"""Objectives for hyper-parameter search on a store's frames (all in memory, per evaluation).

* :class:`ForceObjective` (strategy 1, and stage 2 of strategy 2): describe the training and
  validation frames with the SOAP parameters, train EMLM/OAMLM per class with the model
  parameters, predict the validation forces and score, averaged over classes::

      weighted-average angle (deg, weights |F|²) + norm_weight × norm RMSE / RMS |F|

  The default ``norm_weight = 90`` equates a useless norm model (predicting 0: normalised
  RMSE 1) with a useless direction model (random directions: 90°).
* :class:`KernelObjective` (stage 1 of strategy 2, seed 004): the distribution of the SOAP
  kernel ``k = (q·q')^ζ`` between L2-normalised validation and training descriptors of each
  class should be broad and symmetric. The scalar minimised is, averaged over classes::

      −std(k) + skew_weight × |skew(k)|

  (default ``skew_weight = 0.05``: in seed 004's amorphous-carbon example it ranks the good
  distribution, std 0.26 / skew 0.30, far above the narrow ones, std 0.04 / skew ~8).

Searched parameter names: SOAP ``r_cut``, ``n_max``, ``l_max``, ``sigma`` (and ``zeta`` for
the kernel); model ``references`` (K), ``beta``, ``robust_epsilon`` (Huber ε, robust
directions), ``sigma1``, ``sigma2`` (one σ2 for every class). Parameters not searched take
the defaults of :class:`SoapSettings` and :class:`FitSettings`.

Frames are read from the store inside the task and cached per worker process, so a swarm's
evaluations share one read per worker.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from scipy.stats import skew

from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.environments import class_permutations
from oamlm_dist.errors import InputError
from oamlm_dist.models.oamlm import weighted_angle_deg
from oamlm_dist.models.regression import fit_huber_columns
from oamlm_dist.store import Store
from oamlm_dist.training import (
    FitSettings,
    equations_of,
    initial_class_model,
    references_from_rows,
    select_segments,
    solve_class_model,
    training_matrices,
)

SOAP_PARAMETERS = ("r_cut", "n_max", "l_max", "sigma")
KERNEL_PARAMETERS = (*SOAP_PARAMETERS, "zeta")
MODEL_PARAMETERS = ("references", "beta", "robust_epsilon", "sigma1", "sigma2")
THIOLATE_ELEMENTS = {"Au", "S", "C", "H"}


@dataclass(frozen=True)
class Split:
    """Which frames train and which validate.

    Parameters
    ----------
    train, validation : str, optional
        Segment selectors (see :func:`oamlm_dist.training.select_segments`). With only
        ``train`` the validation frames are all other segments, and vice versa.
    fraction : float
        Without selectors: this fraction of all frames, drawn at random (``seed``), validates.
    seed : int
        Seed of the random split.
    """

    train: str | None = None
    validation: str | None = None
    fraction: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def frames(self, store_path: str) -> tuple[list[Atoms], list[Atoms]]:
        """Training and validation frames (cached per process)."""
        return _split_frames(store_path, self)


@functools.lru_cache(maxsize=4)
def _split_frames(store_path: str, split: Split) -> tuple[list[Atoms], list[Atoms]]:
    store = Store.open(store_path)
    segments = {s.id: s for s in store.segments()}
    if split.train or split.validation:
        train_ids = select_segments(store, split.train) if split.train else None
        val_ids = select_segments(store, split.validation) if split.validation else None
        if train_ids is None:
            train_ids = set(segments) - val_ids
        if val_ids is None:
            val_ids = set(segments) - train_ids
        train = [a for i in sorted(train_ids) if i in segments for a in segments[i].read()]
        val = [a for i in sorted(val_ids) if i in segments for a in segments[i].read()]
    else:
        if not 0.0 < split.fraction < 1.0:
            raise InputError(f"hpo: validation fraction must lie in (0, 1), got "
                             f"{split.fraction}")
        frames = [a for s in segments.values() for a in s.read()]
        n_val = max(1, round(split.fraction * len(frames)))
        if len(frames) < 2:
            raise InputError(f"{store_path}: need at least 2 frames to split, have "
                             f"{len(frames)}")
        order = np.random.default_rng(split.seed).permutation(len(frames))
        val_set = set(order[:n_val].tolist())
        train = [a for i, a in enumerate(frames) if i not in val_set]
        val = [a for i, a in enumerate(frames) if i in val_set]
    if not train or not val:
        raise InputError(f"{store_path}: the split leaves {len(train)} training and "
                         f"{len(val)} validation frames; both must be non-empty")
    return train, val


def default_scheme(species: list[str]) -> str:
    """Au-thiolate classes for Au/S/C/H systems with sulfur, per-element classes otherwise."""
    return "thiolate" if set(species) <= THIOLATE_ELEMENTS and "S" in species else "element"


def _soap(params: dict[str, Any], species: tuple[str, ...], periodic: bool) -> SoapSettings:
    base = asdict(SoapSettings())
    base.update({k: params[k] for k in SOAP_PARAMETERS if k in params})
    return SoapSettings(**{**base, "species": species, "periodic": periodic})


@dataclass(frozen=True)
class _FrameObjective:
    store_path: str
    split: Split = field(default_factory=Split)
    scheme: str | None = None
    neighbours: int = 4

    def _setup(self, params: dict[str, Any]):
        train, val = self.split.frames(self.store_path)
        species = tuple(sorted({s for a in train + val for s in a.get_chemical_symbols()}))
        periodic = any(a.pbc.any() for a in train + val)
        spec = DescriptorSpec(self.scheme or default_scheme(list(species)),
                              _soap(params, species, periodic), self.neighbours)
        return spec, describe_frames(train, spec), describe_frames(val, spec)

    def settings(self) -> dict[str, Any]:
        """JSON-able settings (stored with a run; a resumed run must match them)."""
        out = asdict(self)
        del out["store_path"]  # a moved store still resumes its runs
        return out


@dataclass(frozen=True)
class ForceObjective(_FrameObjective):
    """Validation force error of models trained with the given parameters (see module doc).

    Parameters
    ----------
    store_path : str
        The store with the frames.
    split : Split
        Training and validation frames.
    scheme : str, optional
        Atom-class scheme (default from the elements, see :func:`default_scheme`).
    neighbours : int
        M of the element scheme.
    norm_weight : float
        Weight w of the normalised norm RMSE.
    seed : int
        RS-maximin seed of the reference selection.
    """

    norm_weight: float = 90.0
    seed: int = 0

    def __call__(self, params: dict[str, Any]) -> float:
        return self.evaluate(params)["objective"]

    def evaluate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The objective and its per-class parts (angle, normalised norm RMSE)."""
        spec, train_rows, val_rows = self._setup(params)
        missing = sorted(set(val_rows) - set(train_rows))
        if missing:
            raise InputError(f"hpo: validation classes {missing} have no training rows")
        settings = self._fit_settings(params, list(val_rows))
        classes = {}
        for name, val in val_rows.items():
            model = train_class(name, train_rows[name], spec, settings)
            forces = model.predict(val["X"], val["P"], val["Z"])["forces"]
            reference = val["Y"] * val["norm"][:, None]
            angle = weighted_angle_deg(forces, reference)
            rms = math.sqrt(float(np.mean(val["norm"] ** 2)))
            nrmse = math.sqrt(float(np.mean((np.linalg.norm(forces, axis=1)
                                             - val["norm"]) ** 2))) / max(rms, 1e-12)
            classes[name] = {"angle_deg": angle, "norm_nrmse": nrmse,
                             "score": angle + self.norm_weight * nrmse}
        objective = float(np.mean([c["score"] for c in classes.values()]))
        return {"objective": objective, "classes": classes}

    def _fit_settings(self, params: dict[str, Any], classes: list[str]) -> FitSettings:
        unknown = sorted(set(params) - set(KERNEL_PARAMETERS) - set(MODEL_PARAMETERS))
        if unknown:
            raise InputError(f"hpo: unknown parameter(s) {unknown}; known: "
                             f"{[*KERNEL_PARAMETERS, *MODEL_PARAMETERS]}")
        values: dict[str, Any] = {"seed": self.seed}
        for key in ("references", "beta", "robust_epsilon", "sigma1"):
            if key in params:
                values[key] = params[key]
        if "sigma2" in params:
            values["sigma2"] = dict.fromkeys(classes, float(params["sigma2"]))
        settings = FitSettings(**values)
        settings.validate()
        return settings


def train_class(name: str, rows: dict[str, np.ndarray], spec: DescriptorSpec,
                settings: FitSettings):
    """Train one class model in memory on all ``rows`` (robust directions if ε is set).

    Returns
    -------
    ClassModel
    """
    perms = class_permutations(spec.scheme, name, spec.neighbours)
    scaler, refs, _ = references_from_rows(rows, perms, spec, settings)
    cm = initial_class_model(name, scaler, refs, settings)
    D_in, D_c, D_g = training_matrices(cm, rows)
    equations = equations_of(D_in, D_c, D_g, rows["norm"])
    robust = None
    if settings.robust_epsilon is not None:
        gram = equations.augmented_gram()
        B_c, c_c = fit_huber_columns(D_in, D_c, settings.robust_epsilon, gram=gram)
        B_g, c_g = fit_huber_columns(D_in, D_g, settings.robust_epsilon, gram=gram)
        robust = {"B_c": B_c, "c_c": c_c, "B_g": B_g, "c_g": c_g}
    return solve_class_model(cm, equations, asdict(settings), robust)


@dataclass(frozen=True)
class KernelObjective(_FrameObjective):
    """Shape of the SOAP kernel distribution, validation against training (see module doc).

    Parameters
    ----------
    store_path, split, scheme, neighbours
        As for :class:`ForceObjective`.
    zeta : float
        Kernel exponent ζ unless the parameters give ``zeta``.
    skew_weight : float
        Weight λ of |skewness| against the standard deviation.
    max_rows : int
        At most this many rows per class and side enter the kernel (random, ``seed``).
    seed : int
        Seed of the row subsample.
    """

    zeta: float = 2.0
    skew_weight: float = 0.05
    max_rows: int = 1000
    seed: int = 0

    def __call__(self, params: dict[str, Any]) -> float:
        return self.evaluate(params)["objective"]

    def evaluate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The objective and the kernel mean, std and skewness per class."""
        unknown = sorted(set(params) - set(KERNEL_PARAMETERS))
        if unknown:
            raise InputError(f"hpo stage 1: unknown parameter(s) {unknown}; the kernel "
                             f"objective takes {list(KERNEL_PARAMETERS)}")
        zeta = float(params.get("zeta", self.zeta))
        _, train_rows, val_rows = self._setup(params)
        rng = np.random.default_rng(self.seed)
        classes = {}
        for name in sorted(set(train_rows) & set(val_rows)):
            k = kernel_values(self._rows(train_rows[name]["X"], rng),
                              self._rows(val_rows[name]["X"], rng), zeta)
            stats = kernel_statistics(k)
            stats["score"] = -stats["std"] + self.skew_weight * abs(stats["skew"])
            classes[name] = stats
        if not classes:
            raise InputError("hpo stage 1: no class has both training and validation rows")
        objective = float(np.mean([c["score"] for c in classes.values()]))
        return {"objective": objective, "classes": classes}

    def _rows(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(X) > self.max_rows:
            X = X[np.sort(rng.choice(len(X), self.max_rows, replace=False))]
        return X


def kernel_values(train_X: np.ndarray, val_X: np.ndarray, zeta: float) -> np.ndarray:
    """All ``(q_v·q_t)^ζ`` of L2-normalised rows (a flat array)."""
    def unit(X):
        X = np.asarray(X, dtype=np.float64)
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norms > 0, norms, 1.0)

    # Cross-channel power-spectrum terms can make a dot product slightly negative; such
    # pairs count as dissimilar (0), which keeps k in [0, 1] for any real ζ.
    dots = np.clip(unit(val_X) @ unit(train_X).T, 0.0, 1.0)
    return (dots ** zeta).ravel()


def kernel_statistics(k: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and skewness of kernel values (skew 0 when std is 0)."""
    std = float(np.std(k))
    return {"mean": float(np.mean(k)), "std": std,
            "skew": float(skew(k)) if std > 1e-12 else 0.0, "n": int(k.size)}
