"""Fine-call counts of the hybrid optimiser against ASE optimisers on the fine calculator.

Systems: Au_n(SCH3)_n rings (n = 4..7) and a C10 alkane, relaxed with xTB, then rattled
(0.15 Å, fixed seeds); every optimiser starts from the same geometry and stops at fine
fmax <= 0.05 eV/Å. Peers run on xTB directly: ASE BFGS, LBFGS, FIRE and GPMin, and the
hybrid's own fine steps without a model (``fine_steps_alone``: what the hybrid does where the
model disagrees, so the difference to it is what the model contributes). The hybrid
runs with a model pre-trained on MD of *other* ring sizes (3 and 8; alkanes C2-C4 for C10),
with and without speculative ML rounds, and from a cold start. The fine calculator is
GFN2-xTB, except on Au7(SCH3)7: GFN2-xTB's SCF fails along every relaxation of that ring
(BFGS from the generated ring and from its GFN1-xTB minimum, also with damping 0.2 and 500
iterations, 1000 K or a 3000 K hot start), so all its optimisers use GFN1-xTB, as for
Au38(SCH3)24 in ``au38_staple.py``; the model, trained on GFN2-xTB MD, then meets a fine
level it never saw, and the residual correction carries the difference. The last line is
one JSON object with, per system and optimiser, ``fine_calls`` and ``energy``, and
``fine_call_ratio_vs_bfgs``.

Measured (full run, agreement gate 10°), fine calls of BFGS / GPMin / fine steps alone /
pre-trained hybrid / cold start: Au4 30 / 21 / 14 / 14 / 14, Au5 30 / 18 / 11 / 14 / 11,
Au6 29 / 27 / 15 / 15 / 15, Au7 37 / 43 / 31 / 31 / 31 (the last three in another
minimum, 161 meV below BFGS's), C10 38 / 44 / 17 / 16 / 17; LBFGS as BFGS, FIRE 58-76.
The pre-trained hybrid's mean ratio to BFGS is 1.96; its energies are at or below BFGS's.

Usage: python benchmarks/hybrid.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS, FIRE, LBFGS, GPMin

from oamlm_dist.calculators import calculator_settings, make_calculator
from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly
from oamlm_dist.optimize.run import online_model
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import alkane, gold_thiolate_ring, rattle
from oamlm_dist.training import FitSettings, fit

FMAX = 0.05
# fine-calculator settings per system where GFN2-xTB (the default) fails (module docstring)
FINE_PARAMS = {"ring-Au7": {"method": "GFN1-xTB"}}


class CountingCalculator(Calculator):
    """A fine calculator that counts its calls (ASE's cache: repeats at one geometry are not
    calls). A wrapper, so it counts whatever path the wrapped calculator computes by."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, name: str = "xtb", params: dict | None = None):
        super().__init__()
        self.fine = make_calculator(name, **(params or {}))
        self.calls = 0
        self.energies: list[float] = []  # per call

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        fine = self.atoms.copy()
        self.results = {"energy": self.fine.get_potential_energy(fine),
                        "forces": self.fine.get_forces(fine)}
        self.energies.append(float(self.results["energy"]))


def xtb_minimum(atoms, params: dict | None = None):
    atoms = atoms.copy()
    atoms.calc = make_calculator("xtb", **(params or {}))
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    atoms.calc = None
    return atoms


def run_peer(cls, start, calculator: str = "xtb", params: dict | None = None,
             max_calls: int = 400, energy_per_call: bool = False, **options):
    """ASE optimiser ``cls`` (with ``options``) on the fine calculator from ``start``, for at
    most ``max_calls`` fine calls; ``energy_per_call`` adds the fine energy of every call."""
    atoms = start.copy()
    counter = CountingCalculator(calculator, params)
    atoms.calc = counter
    optimizer = cls(atoms, **{"logfile": None, **options})
    started = time.perf_counter()
    converged = optimizer.run(fmax=FMAX, steps=max_calls - 1)  # a call per step and at start
    result = {"fine_calls": counter.calls, "energy": float(atoms.get_potential_energy()),
              "converged": bool(converged), "wall_s": round(time.perf_counter() - started, 1)}
    if energy_per_call:
        result["energy_per_call"] = counter.energies
    return result


def versus_bfgs(bfgs: dict, result: dict) -> dict:
    """An optimiser's fine-call ratio to BFGS and its final energy minus BFGS's (meV)."""
    return {"fine_call_ratio_vs_bfgs": round(bfgs["fine_calls"] / max(result["fine_calls"], 1),
                                             2),
            "energy_minus_bfgs_meV": round(1000 * (result["energy"] - bfgs["energy"]), 2)}


def against_bfgs(bfgs: dict, hybrid: dict, label: str = "hybrid_pretrained") -> dict:
    """BFGS's and the hybrid's results on one system (the hybrid's under ``label``), with
    the fine-call ratio."""
    return {"BFGS": bfgs,
            label: {k: hybrid[k] for k in ("fine_calls", "ml_calls", "energy", "converged",
                                           "wall_s", "fine_wall_s")},
            **versus_bfgs(bfgs, hybrid)}


def pretrain(out: Path, client, quick: bool) -> dict[str, tuple[str, str]]:
    """Models per kind: (store, model name). Rings and alkanes need separate schemes."""
    steps = 80 if quick else 400
    md = MDSettings(temperature=500, steps=steps, timestep=1.5, interval=2, seed=3)
    references = 300 if quick else 800
    models = {}
    for kind, structures, scheme, soap in (
            ("ring", "rings:3,rings:8", "thiolate", "r_cut=4,n_max=6,l_max=4"),
            ("alkane", "alkanes:2-4", "element", "r_cut=3,n_max=6,l_max=1")):
        store = str(out / f"{kind}s.zarr")
        sample(store, structures, "xtb", {}, md, runs=2, client=client)
        describe(store, scheme, soap, client, block_frames=50)
        fit(store, kind, client, FitSettings(references=references))
        models[kind] = (store, kind)
    return models


def add_ring_model_options(parser: argparse.ArgumentParser) -> None:
    """``--store``/``--model`` (a trained ring model), else ``--out`` for the pre-trained one."""
    parser.add_argument("--out", default="/tmp/oamlm-hybrid-bench",
                        help="where the ring model is pre-trained (without --model)")
    parser.add_argument("--store", help="store of --model")
    parser.add_argument("--model", help="a trained ring model instead of the pre-trained one")


def ring_model(parser: argparse.ArgumentParser, args, client=None) -> tuple[str, str]:
    """(store, model) of ``--store``/``--model``, or of the ring model of ``--quick``
    pre-trained under ``--out`` (reused when there)."""
    if bool(args.store) != bool(args.model):
        parser.error("--store and --model go together")
    if args.model:
        return args.store, args.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with get_client() if client is None else nullcontext(client) as cluster_client:
        return pretrain(out, cluster_client, quick=True)["ring"]


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two rings, short MD")
    parser.add_argument("--out", default="/tmp/oamlm-hybrid-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems = {f"ring-Au{n}": gold_thiolate_ring(n) for n in ((4, 6) if args.quick
                                                             else (4, 5, 6, 7))}
    systems["alkane-C10"] = alkane(10)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with get_client() as client:
        t = time.perf_counter()
        models = pretrain(out, client, args.quick)
        pretrain_s = time.perf_counter() - t
        for index, (name, atoms) in enumerate(systems.items()):
            fine = FINE_PARAMS.get(name, {})
            start = rattle(xtb_minimum(atoms, fine), 0.15, seed=10 + index)
            row = {peer.__name__: run_peer(peer, start, "xtb", fine)
                   for peer in (BFGS, LBFGS, FIRE, GPMin)}
            kind = "alkane" if name.startswith("alkane") else "ring"
            store, model_name = models[kind]
            pretrained = partial(online_model, Store.open(store), model_name, [start], None)
            cold = partial(online_model, Store.open(store), None, [start], None)
            variants = (("fine_steps_alone", FineOnly, True),
                        ("hybrid_pretrained", pretrained, True),
                        ("hybrid_pretrained_no_speculation", pretrained, False),
                        ("hybrid_cold", cold, True))
            for label, new_model, speculate in variants:
                optimizer = HybridOptimizer(start, new_model(), "xtb", fine,
                                            HybridSettings(fmax=FMAX, speculate=speculate),
                                            name=f"{name}-{label}")
                result = optimize_many([optimizer], client)[0]
                row[label] = {"fine_calls": result["fine_calls"], "energy": result["energy"],
                              "converged": result["converged"], "ml_calls": result["ml_calls"],
                              "wall_s": result["wall_s"]}
            bfgs = row["BFGS"]
            for entry in row.values():
                entry.update(versus_bfgs(bfgs, entry))
            results[name] = row
            print(name, json.dumps({k: (v["fine_calls"], v["energy_minus_bfgs_meV"])
                                    for k, v in row.items()}), flush=True)
    ratios = [r["hybrid_pretrained"]["fine_call_ratio_vs_bfgs"] for r in results.values()]
    summary = {"benchmark": "hybrid", "fmax": FMAX, "quick": args.quick,
               "fine": {name: calculator_settings("xtb", **FINE_PARAMS.get(name, {}))["method"]
                        for name in systems},
               "systems": results, "pretrain_s": round(pretrain_s, 1),
               "fine_call_ratio_vs_bfgs": {name: r["hybrid_pretrained"]["fine_call_ratio_vs_bfgs"]
                                           for name, r in results.items()},
               "mean_ratio_pretrained": round(float(np.mean(ratios)), 2),
               "wall_s": round(time.perf_counter() - started, 1),
               "cpus": os.cpu_count()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
