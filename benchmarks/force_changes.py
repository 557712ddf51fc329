"""How well does the learnt model predict force *changes*, at the hybrid's step sizes?

An ML round relaxes on the model plus the fine-minus-model residual of a fine point, so it
takes from the model only how the forces change away from that point. This measures that
directly. At a point x and a random direction d (largest atom move 1 Å), the change
Δf = f(x + ε d) − f(x) of a model is compared with GFN2-xTB's for ε = 1e-4 ... 5e-2 Å:
the force-weighted angle between the two changes, and per element the ratio of their norms.
A model with continuous forces has a ratio that settles as ε → 0 (its Jacobian); a ratio
that grows like 1/ε is a jump (a discontinuity of the model at x). The learnt forces are a
norm (EMLM) times a direction (OAMLM); ``learnt_norm_only`` and ``learnt_direction_only``
vary one factor and hold the other at its value at x, which shows where the model's force
changes come from. ``force_norm`` gives each model's mean force norm per element at both points.

Points: the GFN2-xTB minimum of Au6(SCH3)6, a ring size the model never saw (the end-game of
every relaxation happens near such a minimum), and the same structure moved at random by
``--generic`` Å. Models: the ring model pre-trained as in ``benchmarks/hybrid.py --quick``
(MD of rings 3 and 8), or ``--model NAME`` of ``--store STORE``; and GFN1-xTB (a different
parametrisation, with which the hybrid needs 2.8× fewer fine calls than BFGS in
``benchmarks/hybrid_model_accuracy.py``).
The last line is one JSON object with, per point, model and ε, the median over directions.

Usage: python benchmarks/force_changes.py [--ring 6] [--directions 3] [--out DIR]
                                         [--store STORE --model NAME]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from hybrid import add_ring_model_options, ring_model, xtb_minimum
from machine import machine_facts

from oamlm_dist.calculators import fine_single_point
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.models.oamlm import weighted_angle_deg
from oamlm_dist.structures import gold_thiolate_ring

SCALES = (1e-4, 1e-3, 1e-2, 5e-2)  # Å, largest atom move
ELEMENTS = ("Au", "S", "C", "H")


def xtb_forces(params: dict) -> Callable:
    """Forces of a structure from xTB with these settings."""
    return lambda atoms: fine_single_point(atoms, "xtb", params).forces


def force_changes(forces: Callable, atoms, directions: np.ndarray) -> np.ndarray:
    """Δf for every direction and scale: (n_directions, n_scales, n_atoms, 3)."""
    origin = forces(atoms)
    out = np.empty((len(directions), len(SCALES), len(atoms), 3))
    for i, direction in enumerate(directions):
        for j, scale in enumerate(SCALES):
            moved = atoms.copy()
            moved.positions += scale * direction
            out[i, j] = forces(moved) - origin
    return out


def compare(model: np.ndarray, fine: np.ndarray, symbols: np.ndarray) -> dict:
    """Per scale: median over directions of the weighted angle and the per-element norm
    ratio |Δf_model| / |Δf_fine|."""
    rows = {}
    for j, scale in enumerate(SCALES):
        angles = [weighted_angle_deg(m[j], f[j]) for m, f in zip(model, fine, strict=True)]
        ratios = {e: float(np.median([np.linalg.norm(m[j][symbols == e])
                                      / np.linalg.norm(f[j][symbols == e])
                                      for m, f in zip(model, fine, strict=True)]))
                  for e in ELEMENTS}
        rows[f"{scale:g}"] = {"angle_deg": round(float(np.median(angles)), 1),
                              "norm_ratio": {e: round(r, 2) for e, r in ratios.items()}}
    return rows


def split_learnt(model: ForceModel, atoms) -> dict[str, Callable]:
    """The learnt forces with only their norms, or only their directions, varying from
    ``atoms`` (the other factor held at its value there)."""
    at_x = model.predict(atoms)
    norm_x, direction_x = at_x["norm"][:, None], at_x["direction"]
    return {"learnt_norm_only": lambda a: model.predict(a)["norm"][:, None] * direction_x,
            "learnt_direction_only": lambda a: norm_x * model.predict(a)["direction"]}


def mean_norms(forces: np.ndarray, symbols: np.ndarray) -> dict:
    """Mean force norm per element (eV/Å)."""
    return {e: round(float(np.linalg.norm(forces[symbols == e], axis=1).mean()), 3)
            for e in ELEMENTS}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ring", type=int, default=6)
    parser.add_argument("--directions", type=int, default=3)
    parser.add_argument("--generic", type=float, default=0.02,
                        help="Å, random move of the minimum for the generic point")
    add_ring_model_options(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    store, name = ring_model(parser, args)
    learnt = ForceModel.load(store, name)
    models = {"learnt": lambda a: learnt.predict(a)["forces"],
              "gfn1": xtb_forces({"method": "GFN1-xTB"})}
    rng = np.random.default_rng(0)
    minimum = xtb_minimum(gold_thiolate_ring(args.ring))
    generic = minimum.copy()
    generic.positions += args.generic * rng.normal(size=generic.positions.shape)
    symbols = np.array(minimum.get_chemical_symbols())
    results, norms = {}, {}
    for point, atoms in (("minimum", minimum), ("generic", generic)):
        norms[point] = {label: mean_norms(forces(atoms), symbols)
                        for label, forces in {"fine": xtb_forces({}), **models}.items()}
        print(point, "force norms", json.dumps(norms[point]), flush=True)
        directions = rng.normal(size=(args.directions, len(atoms), 3))
        directions /= np.linalg.norm(directions, axis=2).max(axis=1)[:, None, None]
        reference = force_changes(xtb_forces({}), atoms, directions)
        results[point] = {label: compare(force_changes(forces, atoms, directions), reference,
                                         symbols)
                          for label, forces in {**models, **split_learnt(learnt, atoms)}.items()}
        for label, rows in results[point].items():
            print(point, label, json.dumps(rows), flush=True)
    summary = {"benchmark": "force_changes", "model": f"{store}:{name}", "ring": args.ring,
               "directions": args.directions, "generic_move": args.generic, "points": results,
               "force_norm": norms,
               "wall_s": round(time.perf_counter() - started, 1), **machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
