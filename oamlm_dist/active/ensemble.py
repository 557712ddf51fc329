"""Bootstrap ensembles of the force model and their per-atom uncertainty.

Each member is trained in memory, class by class, on a bootstrap resample of the training
rows (drawn with replacement; a row drawn ``c`` times enters the normal equations with
weight ``c``) and with its own RS-maximin seed, so members differ both in their data and in
their references. The atomic uncertainty is the nearsighted-force-training estimate

    δ_i = 2.58 · sqrt( Σ_j ‖f_i^(j) − f̄_i‖² / (M − 1) ),

rotation invariant and covering ~99 % of the ensemble spread; the structure uncertainty is
``max_i δ_i``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.environments import class_permutations
from oamlm_dist.errors import InputError, StoreError
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.store import Store, now_iso
from oamlm_dist.training import (
    FitSettings,
    equations_of,
    initial_class_model,
    load_class_model,
    references_from_rows,
    solve_class_model,
    store_class_model,
    training_matrices,
)

UNCERTAINTY_FACTOR = 2.58
MIN_SUPPORT = 2  # training rows a class needs before its ensemble spread means anything


def atomic_uncertainty(member_forces: np.ndarray) -> np.ndarray:
    """Per-atom uncertainty δ_i of an ensemble's force predictions.

    Parameters
    ----------
    member_forces : ndarray, shape (M, n, 3)
        Forces of atom i predicted by member j, M >= 2.

    Returns
    -------
    ndarray, shape (n,)
        ``2.58 · sqrt(Σ_j ‖f_ij − f̄_i‖² / (M − 1))`` in the force unit (eV/Å).
    """
    member_forces = np.asarray(member_forces, dtype=float)
    if member_forces.ndim != 3 or member_forces.shape[0] < 2:
        raise InputError(f"ensemble uncertainty needs forces of >= 2 members, shape (M, n, 3); "
                         f"got {member_forces.shape}")
    deviation = member_forces - member_forces.mean(axis=0)
    variance = (deviation ** 2).sum(axis=(0, 2)) / (member_forces.shape[0] - 1)
    return UNCERTAINTY_FACTOR * np.sqrt(variance)


def distinct_rows(X: np.ndarray) -> int:
    """Number of distinct descriptor rows (equal to 1e-10, relative to the largest entry)."""
    if len(X) == 0:
        return 0
    scale = max(float(np.abs(X).max()), 1e-300)
    return len(np.unique(np.round(np.asarray(X, dtype=float) / scale, 10), axis=0))


def _take(fields: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in fields.items()}


def train_model(rows: dict[str, dict], spec: DescriptorSpec, settings: FitSettings,
                weights: dict[str, np.ndarray] | None = None, name: str = "member"
                ) -> ForceModel:
    """One force model trained in memory on described rows.

    Parameters
    ----------
    rows : dict
        ``{class: {"X", "P", "Z", "Y", "norm", ...}}`` as from :func:`describe_frames`.
    spec : DescriptorSpec
        Descriptor settings of the rows.
    settings : FitSettings
        References K (capped at the row count) and the RS-maximin ``seed``.
    weights : dict, optional
        Per class, a weight per row (e.g. bootstrap counts); rows of weight 0 are dropped.
    name : str
        Name of the returned model.

    Returns
    -------
    ForceModel
    """
    solve_settings = asdict(settings)
    classes = {}
    for class_name, fields in rows.items():
        w = None if weights is None else np.asarray(weights[class_name], dtype=float)
        if w is not None:
            keep = w > 0
            fields, w = _take(fields, np.flatnonzero(keep)), w[keep]
        if len(fields["X"]) == 0:
            continue
        perms = class_permutations(spec.scheme, class_name, spec.neighbours)
        # Repeated rows (bootstrap draws, symmetric atoms) cannot be distinct references.
        k = min(settings.references, distinct_rows(fields["X"]))
        scaler, refs, _ = references_from_rows(fields, perms, spec, replace(settings, references=k))
        cm = initial_class_model(class_name, scaler, refs, settings)
        D_in, D_c, D_g = training_matrices(cm, fields)
        equations = equations_of(D_in, D_c, D_g, fields["norm"], w)
        classes[class_name] = solve_class_model(cm, equations, solve_settings)
    return ForceModel(name, spec, classes)


class ForceEnsemble:
    """M force models whose spread estimates the per-atom force uncertainty."""

    def __init__(self, spec: DescriptorSpec, members: list[ForceModel],
                 support: dict[str, int] | None = None):
        if len(members) < 2:
            raise InputError(f"an ensemble needs >= 2 members, got {len(members)}")
        self.spec = spec
        self.members = members
        # Distinct training rows per class. With fewer than two, every bootstrap resample is
        # the same and δ is 0 however wrong the model is: callers must not read that as
        # certainty.
        self.support = support

    @classmethod
    def train(cls, rows: dict[str, dict], spec: DescriptorSpec, settings: FitSettings,
              members: int = 4, seed: int = 0) -> ForceEnsemble:
        """Bootstrap ensemble trained in memory on ``rows``.

        Member ``j`` draws, per class, ``N`` rows with replacement (generator seeded by
        ``seed`` and ``j``) and picks its references with RS-maximin seed ``seed + j``.
        """
        if members < 2:
            raise InputError(f"--members must be >= 2, got {members}")
        models = []
        for j in range(members):
            rng = np.random.default_rng([seed, j])
            weights = {}
            for class_name, fields in rows.items():
                n = len(fields["X"])
                weights[class_name] = np.bincount(rng.integers(0, n, size=n), minlength=n)
            models.append(train_model(rows, spec, replace(settings, seed=settings.seed + j),
                                      weights, name=f"member{j}"))
        return cls(spec, models, {c: distinct_rows(f["X"]) for c, f in rows.items()})

    def predict(self, atoms: Atoms, unknown_classes: bool = False) -> dict[str, np.ndarray]:
        """Mean forces (n, 3), uncertainty δ (n,), member forces (M, n, 3) and ``support``
        (n,): the distinct training rows of each atom's class (-1 where unknown, e.g. a loaded
        ensemble).

        The structure is described once; every member predicts from the same rows. An atom
        of a class that a member has no model for (its resample missed the class) takes
        the mean of the other members. An atom of a class no member knows is an error, or
        with ``unknown_classes`` gets zero forces and support 0.
        """
        frame = atoms.copy()
        frame.calc = None
        rows = describe_frames([frame], self.spec)
        n = len(atoms)
        member_forces = np.full((len(self.members), n, 3), np.nan)
        for j, member in enumerate(self.members):
            known = {c: f for c, f in rows.items() if c in member.classes}
            for class_name, prediction in member.predict_rows(known).items():
                member_forces[j, rows[class_name]["atom"]] = prediction["forces"]
        support = np.full(n, -1, dtype=np.int64)
        if self.support is not None:
            for class_name, fields in rows.items():
                support[fields["atom"]] = self.support.get(class_name, 0)
        missing = np.isnan(member_forces).all(axis=0).any(axis=1)
        if missing.any() and unknown_classes:
            member_forces[:, missing] = 0.0
            support[missing] = 0
        elif missing.any():
            atom = int(np.flatnonzero(missing)[0])
            raise InputError(f"no ensemble member has a model for atom {atom} "
                             f"({atoms[atom].symbol}); train on frames that contain it")
        mean = np.nanmean(member_forces, axis=0)
        member_forces = np.where(np.isnan(member_forces), mean[None], member_forces)
        return {"forces": mean, "uncertainty": atomic_uncertainty(member_forces),
                "member_forces": member_forces, "support": support}

    # ---- storage ------------------------------------------------------------------------
    def save(self, store: Store, name: str, info: dict | None = None) -> list[str]:
        """Write the members as ``models/<name>-m<j>`` (loadable by ``ForceModel.load``)."""
        names = []
        for j, member in enumerate(self.members):
            path = f"models/{name}-m{j}"
            group = store.group(path, create=True)
            for class_name, cm in member.classes.items():
                # Marks the class as trained for ForceModel.load (no stored blocks: in memory).
                store_class_model(store.group(f"{path}/{class_name}", create=True), cm,
                                  {"trained_blocks": []})
            group.update_attributes({"spec": self.spec.to_dict(), "classes": list(member.classes),
                                "ensemble": name, "member": j, "created": now_iso(),
                                **(info or {})})
            names.append(f"{name}-m{j}")
        j = len(self.members)
        while f"models/{name}-m{j}" in store.root:  # members of an earlier, larger ensemble
            del store.root[f"models/{name}-m{j}"]
            j += 1
        return names

    @classmethod
    def load(cls, store: Store | str | os.PathLike, name: str) -> ForceEnsemble:
        """Members written by :meth:`save`."""
        store = store if isinstance(store, Store) else Store.open(store)
        members = []
        for member in ensemble_members(store, name):
            attrs = store.root[f"models/{member}"].attrs
            classes = {c: load_class_model(store, member, c) for c in attrs["classes"]}
            members.append(ForceModel(member, DescriptorSpec.from_dict(attrs["spec"]), classes))
        if len(members) < 2:
            raise StoreError(f"{store.path}: no ensemble {name!r} (models {name}-m0, -m1, ...)")
        return cls(members[0].spec, members)


def ensemble_members(store: Store, name: str) -> list[str]:
    """The model names of ensemble ``name``'s members in the store: ``<name>-m0``, -m1, ..."""
    members = []
    while f"models/{name}-m{len(members)}" in store.root:
        members.append(f"{name}-m{len(members)}")
    return members


class EnsembleForceField(Calculator):
    """ASE calculator of an ensemble: mean forces; ``results["uncertainty"]`` holds δ_i.

    Forces only, like :class:`~oamlm_dist.forcefield.ForceField`: run optimizers on
    :class:`~oamlm_dist.forcefield.ForcesOnly`.
    """

    implemented_properties = ["forces"]

    def __init__(self, ensemble: ForceEnsemble, **kwargs):
        super().__init__(**kwargs)
        self.ensemble = ensemble

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.ensemble.predict(self.atoms)
