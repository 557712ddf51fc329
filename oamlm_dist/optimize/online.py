"""A force model that learns from fine calculations during an optimisation, in memory.

A pre-trained class keeps its references and scaler; each new fine frame adds its rows to
the stored normal equations (weighted, so the newest environments count more) and the class
model is solved again. A class the model lacks (all of them at a cold start; a class the
pre-training data never had, such as a core Au atom in a structure whose model learnt only
rings) is built from the fine rows of that class alone and rebuilt from all of them after
every fine call (the data are tiny, so K = all rows). The model in the store is never
modified; the fine frames themselves are stored by the optimiser, so ``fit --update`` can
fold them in later.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from ase import Atoms

from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.environments import class_permutations
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.models.class_model import ClassModel
from oamlm_dist.models.regression import NormalEquations
from oamlm_dist.store import Store
from oamlm_dist.training import (
    FitSettings,
    equations_of,
    initial_class_model,
    references_from_rows,
    solve_class_model,
    stored_equations,
    training_matrices,
)


class OnlineModel:
    """Wraps a :class:`ForceModel` (or nothing, at a cold start) and its normal equations."""

    def __init__(self, spec: DescriptorSpec, settings: FitSettings,
                 model: ForceModel | None = None,
                 equations: dict[str, NormalEquations] | None = None):
        self.spec = spec
        self.settings = settings
        self.model = model
        self.equations = equations or {}
        self.rows_here: dict[str, list[dict]] = {}  # fine rows of the classes built here

    @classmethod
    def pretrained(cls, store: Store, name: str) -> OnlineModel:
        model = ForceModel.load(store, name)
        attrs = store.root[f"models/{name}"].attrs
        equations = {c: stored_equations(store, name, c) for c in model.classes}
        return cls(model.spec, FitSettings(**attrs["settings"]), model, equations)

    @classmethod
    def cold_start(cls, species: list[str], scheme: str = "thiolate",
                   soap: SoapSettings | None = None, references: int = 2500) -> OnlineModel:
        soap = soap or SoapSettings()
        soap = SoapSettings(**{**asdict(soap), "species": tuple(species)})
        return cls(DescriptorSpec(scheme, soap), FitSettings(references=references))

    @property
    def ready(self) -> bool:
        return self.model is not None

    def add(self, frames: list[Atoms], weight: float = 1.0) -> None:
        """Learn from fine frames (with forces)."""
        rows = describe_frames(frames, self.spec)
        settings = asdict(self.settings)
        classes = dict(self.model.classes) if self.model is not None else {}
        for class_name, fields in rows.items():
            if class_name in classes and class_name not in self.rows_here:  # pre-trained
                cm = classes[class_name]
                D_in, D_c, D_g = training_matrices(cm, fields)
                new = equations_of(D_in, D_c, D_g, fields["norm"],
                                   np.full(len(D_in), weight))
                self.equations[class_name] = self.equations[class_name] + new
                classes[class_name] = solve_class_model(cm, self.equations[class_name],
                                                        settings)
            else:
                self.rows_here.setdefault(class_name, []).append(fields)
                classes[class_name] = self._built_here(class_name, settings)
        name = self.model.name if self.model is not None else "online"
        self.model = ForceModel(name, self.spec, classes)

    def _built_here(self, class_name: str, settings: dict) -> ClassModel:
        """A class model from every fine row of the class seen so far (K = all rows)."""
        parts = self.rows_here[class_name]
        fields = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        perms = class_permutations(self.spec.scheme, class_name, self.spec.neighbours)
        scaler, refs, _ = references_from_rows(fields, perms, self.spec, self.settings)
        cm = initial_class_model(class_name, scaler, refs, self.settings)
        D_in, D_c, D_g = training_matrices(cm, fields)
        self.equations[class_name] = equations_of(D_in, D_c, D_g, fields["norm"])
        return solve_class_model(cm, self.equations[class_name], settings)

    def predict(self, atoms: Atoms) -> dict[str, np.ndarray]:
        return self.model.predict(atoms)


class FineOnly:
    """No model: the hybrid optimiser then takes only its steps on the fine results (the
    distance process's, or BFGS's), the steps it takes wherever a model disagrees. A model
    whose force changes near the minima are 30-70° off, as the learnt ring models' are, saves
    no fine calls over them (``benchmarks/hybrid_starts.py``)."""

    ready = False

    def add(self, frames: list[Atoms], weight: float = 1.0) -> None:
        """Nothing is learnt."""
