"""How accurate must the model be for the hybrid to save fine calls?

The hybrid optimiser on the rattled rings of ``benchmarks/hybrid_uncertainty.py`` (same
starts, GFN2-xTB as the fine calculator, fmax 0.05 eV/Å), with calculators standing in for
the learnt model, from exact to deliberately wrong:

* ``exact``: GFN2-xTB itself (the surrogate is the fine landscape);
* ``scaled_0.9`` / ``scaled_0.7``: GFN2-xTB forces times 0.9 / 0.7 (force changes 10 % /
  30 % too small everywhere);
* ``rotated_10`` / ``_20`` / ``_40``: GFN2-xTB forces with each atom's force turned by 10 /
  20 / 40 degrees about a fixed random axis of its own, so the force *changes* are off by
  that angle everywhere, as the learnt directions' are near minima (about 30-70 degrees,
  ``benchmarks/force_changes.py``);
* ``gfn1``: GFN1-xTB, a different parametrisation of the same physics;
* ``fine_only``: no model, the hybrid's steps on fine results alone (``optimize --fine-only``),
  what a model has to beat.

These "models" never learn (the online update is a no-op), so the counts show what the
optimiser makes of a model of a given quality; the ML rounds are still corrected at every
fine point by the fine-minus-model residual. ASE BFGS on GFN2-xTB from the same start is the
reference. The last line is one JSON object with, per model and ring, fine calls, the final
energy minus BFGS's and the fine-call ratio to BFGS.

Measured with the default agreement gate of 10° (rings 4 / 5 / 6, BFGS 30 / 30 / 29 fine
calls): fine_only 14 / 11 / 15, exact 3 / 3 / 3, rotated_10 7 / 5 / 8 (on Au6 its long ML
rounds carried the ring to another minimum, 0.49 eV below BFGS's), rotated_20
14 / 14 / 16, rotated_40 14 / 11 / 15 (it never passes the gate: the fine steps alone). With
the gate at 25°, rotated_20 needs 17 / 16 / 16 and rotated_40 16 / 19 / 17: a model whose
force changes are 20° off or worse costs fine calls over the fine steps alone, and five
times fewer fine calls than BFGS need force changes right to about 10 degrees.

Usage: python benchmarks/hybrid_model_accuracy.py [--rings 4,5,6] [--models exact,gfn1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ase.calculators.calculator import CalculationFailed
from ase.optimize import BFGS
from hybrid import FMAX, run_peer, versus_bfgs
from hybrid_uncertainty import mean_ratios, ring_start
from machine import machine_facts
from scipy.spatial.transform import Rotation

from oamlm_dist.calculators import make_calculator
from oamlm_dist.cluster import get_client
from oamlm_dist.errors import OamlmError
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly

MODELS = {"exact": ({}, 1.0, 0.0), "scaled_0.9": ({}, 0.9, 0.0), "scaled_0.7": ({}, 0.7, 0.0),
          "rotated_10": ({}, 1.0, 10.0), "rotated_20": ({}, 1.0, 20.0),
          "rotated_40": ({}, 1.0, 40.0), "gfn1": ({"method": "GFN1-xTB"}, 1.0, 0.0),
          "fine_only": None}


class CalculatorModel:
    """An online-model stand-in: an xTB calculator's forces times ``scale``, each atom's
    turned by ``rotation_deg`` about its own fixed random axis; never learns."""

    ready = True

    def __init__(self, params: dict, scale: float, rotation_deg: float):
        self.calc = make_calculator("xtb", **params)
        self.scale = scale
        self.rotation_deg = rotation_deg
        self.model = self  # what the ML rounds' force field calls

    def add(self, frames, weight=1.0):
        pass

    def predict(self, atoms, method=None):
        probe = atoms.copy()
        probe.set_constraint()
        try:
            forces = self.calc.get_forces(probe)
        except CalculationFailed as exc:
            # as a learnt model that cannot describe a structure: no ML move from there
            raise OamlmError(f"stand-in model: {exc}") from exc
        axes = np.random.default_rng(0).normal(size=forces.shape)
        axes *= np.radians(self.rotation_deg) / np.linalg.norm(axes, axis=1, keepdims=True)
        return {"forces": self.scale * Rotation.from_rotvec(axes).apply(forces)}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rings", default="4,5,6")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    labels = [m for m in args.models.split(",") if m]
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with get_client() as client:
        for n in (int(v) for v in args.rings.split(",")):
            name = f"ring-Au{n}"
            start = ring_start(n)
            row = {"BFGS": run_peer(BFGS, start)}
            for label in labels:
                model = FineOnly() if MODELS[label] is None else CalculatorModel(*MODELS[label])
                optimizer = HybridOptimizer(start, model, "xtb", {}, HybridSettings(fmax=FMAX),
                                            name=f"{name}-{label}")
                result = optimize_many([optimizer], client)[0]
                row[label] = {"fine_calls": result["fine_calls"], "energy": result["energy"],
                              "converged": result["converged"], "stopped": result["stopped"],
                              "wall_s": result["wall_s"]}
            for entry in row.values():
                entry.update(versus_bfgs(row["BFGS"], entry))
            results[name] = row
            print(name, json.dumps({k: (v["fine_calls"], v["energy_minus_bfgs_meV"])
                                    for k, v in row.items()}), flush=True)
    summary = {"benchmark": "hybrid_model_accuracy", "fmax": FMAX, "systems": results,
               "mean_ratio_vs_bfgs": mean_ratios(results, labels),
               "wall_s": round(time.perf_counter() - started, 1), **machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
