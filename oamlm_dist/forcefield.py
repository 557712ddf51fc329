"""The trained force model as an ASE calculator.

``ForceField.load(store, name)`` predicts per-atom forces as EMLM norm × OAMLM direction.
It predicts no energy (the models learn forces only): ``get_potential_energy`` raises ASE's
``PropertyNotImplementedError``. ASE optimizers log an energy at every step, so run them on
``ForcesOnly(atoms)``, which reports NaN as the energy to the optimizer instead::

    atoms.calc = ForceField.load("runs.zarr", "rings")
    BFGS(ForcesOnly(atoms), maxstep=0.1).run(fmax=0.05)

Per-atom diagnostics are in ``calc.results``:

``uncertainty``
    ``|F| × spread`` in eV/Å, where ``spread`` ∈ [0, 1] is ``1 − |Σ ω d_c r| / Σ ω |d_c|``:
    0 when all weighted references vote for the same direction, 1 when their votes cancel.
``min_g``
    The best alignment goodness over the references (Å): how far the atom's neighbourhood is
    from every reference geometry; it grows for structures unlike the training data.
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize.optimize import OptimizableAtoms

from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.errors import InputError, StoreError
from oamlm_dist.models.class_model import ClassModel
from oamlm_dist.store import Store
from oamlm_dist.training import load_class_model

RESULT_KEYS = ("forces", "uncertainty", "spread", "min_g")


class ForceModel:
    """All class models of one trained model, with the descriptor settings they need."""

    def __init__(self, name: str, spec: DescriptorSpec, classes: dict[str, ClassModel]):
        self.name = name
        self.spec = spec
        self.classes = classes

    @classmethod
    def load(cls, store: Store | str | os.PathLike, name: str) -> ForceModel:
        store = store if isinstance(store, Store) else Store.open(store)
        path = f"models/{name}"
        if path not in store.root:
            raise StoreError(f"{store.path}: no model {name!r}")
        attrs = store.root[path].attrs
        if not attrs.get("classes"):  # created, references not chosen yet
            raise StoreError(f"{store.path}: model {name!r} is not trained yet (rerun "
                             "`oamlm-dist fit`)")
        classes = {}
        for class_name in attrs["classes"]:
            if "trained_blocks" not in store.root[f"{path}/{class_name}"].attrs:
                raise StoreError(f"{store.path}: model {name!r} class {class_name} is not "
                                 "trained yet (rerun `oamlm-dist fit`)")
            classes[class_name] = load_class_model(store, name, class_name)
        return cls(name, DescriptorSpec.from_dict(attrs["spec"]), classes)

    def predict_rows(self, rows: dict[str, dict], method: str | None = None
                     ) -> dict[str, dict]:
        """Per class: predictions for described rows (see :meth:`ClassModel.predict`)."""
        out = {}
        for class_name, fields in rows.items():
            if class_name not in self.classes:
                atom = int(fields["atom"][0])
                raise InputError(f"model {self.name!r} has no class {class_name} (atom {atom}, "
                                 f"frame {int(fields['frame'][0])}); it knows "
                                 f"{sorted(self.classes)}")
            out[class_name] = self.classes[class_name].predict(
                fields["X"], fields["P"], fields["Z"], method=method)
        return out

    def predict(self, atoms: Atoms, method: str | None = None) -> dict[str, np.ndarray]:
        """Forces (n, 3), their norms (n,) and unit directions (n, 3), and per-atom
        diagnostics of one structure."""
        frame = atoms.copy()
        frame.calc = None
        rows = describe_frames([frame], self.spec)
        n = len(atoms)
        result = {"forces": np.zeros((n, 3)), "norm": np.zeros(n), "direction": np.zeros((n, 3)),
                  "uncertainty": np.zeros(n), "spread": np.zeros(n), "min_g": np.zeros(n)}
        for class_name, prediction in self.predict_rows(rows, method).items():
            atom = rows[class_name]["atom"]
            for key in ("forces", "norm", "direction", "spread", "min_g"):
                result[key][atom] = prediction[key]
            result["uncertainty"][atom] = prediction["norm"] * prediction["spread"]
        return result


class ForceField(Calculator):
    """ASE calculator for a trained EMLM/OAMLM model (forces only)."""

    implemented_properties = ["forces"]

    def __init__(self, model: ForceModel, method: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.method = method

    @classmethod
    def load(cls, store: Store | str | os.PathLike, name: str, method: str | None = None
             ) -> ForceField:
        return cls(ForceModel.load(store, name), method=method)

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.model.predict(self.atoms, self.method)


class _ForcesOnlyOptimizable(OptimizableAtoms):
    def get_value(self):
        return float("nan")


class ForcesOnly:
    """Wraps Atoms for ASE optimizers when the calculator has forces but no energy."""

    def __init__(self, atoms: Atoms):
        self.atoms = atoms

    def __ase_optimizable__(self):
        return _ForcesOnlyOptimizable(self.atoms)

    def __len__(self) -> int:
        return len(self.atoms)

    def __getattr__(self, name):
        return getattr(self.atoms, name)
