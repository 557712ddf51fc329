"""Does ensemble uncertainty decide well when the hybrid optimiser calls the fine calculator?

Same systems, starts and pre-trained ring model as ``benchmarks/hybrid.py`` (rattled
Au_n(SCH3)_n rings, xTB as the fine calculator, model trained on MD of rings 3 and 8). A
bootstrap ensemble (``--members``, K = ``--references``) is trained on the same MD frames.
Per ring, from the same start: ASE BFGS on xTB, the hybrid without an ensemble (ML rounds end
at the trust radius or the ML minimum), and the hybrid whose ML rounds also end where the
ensemble's uncertainty of the force changes exceeds each limit in ``--limits``. Reported per
variant: fine calls, final energy minus BFGS's, the fine-call ratio to BFGS, and how many ML
rounds the gate ended. The last line is one JSON object. Au7 is not in the default set: the
xTB relaxation of the built ring stops on an SCF failure (GFN2-xTB, 250 cycles).

Usage: python benchmarks/hybrid_uncertainty.py [--rings 4,5,6] [--limits 0.1,0.3,1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase.optimize import BFGS
from hybrid import FMAX, pretrain, run_peer, versus_bfgs, xtb_minimum
from machine import machine_facts

from oamlm_dist.active.ensemble import ForceEnsemble
from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe_frames
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.run import online_model
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle
from oamlm_dist.training import FitSettings


def train_ensemble(store_path: str, model: str, members: int, references: int
                   ) -> ForceEnsemble:
    """A bootstrap ensemble on every frame of the store, with the model's descriptors."""
    store = Store.open(store_path)
    spec = ForceModel.load(store, model).spec
    frames = [atoms for segment in store.segments() for atoms in segment.read()]
    rows = describe_frames(frames, spec)
    return ForceEnsemble.train(rows, spec, FitSettings(references=references), members)


def ring_start(n: int):
    """The rattled Au_n(SCH3)_n start of ring n (seeds 10, 11, 12 for rings 4, 5, 6)."""
    return rattle(xtb_minimum(gold_thiolate_ring(n)), 0.15, seed=6 + n)


def mean_ratios(results: dict[str, dict], labels: list[str]) -> dict[str, float]:
    """Per optimiser label, the mean over systems of its fine-call ratio to BFGS."""
    return {k: round(float(np.mean([r[k]["fine_call_ratio_vs_bfgs"]
                                    for r in results.values()])), 2) for k in labels}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rings", default="4,5,6")
    parser.add_argument("--limits", default="0.1,0.3,1")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--references", type=int, default=300)
    parser.add_argument("--full-pretrain", action="store_true",
                        help="benchmarks/hybrid.py's full MD and K (default: its --quick)")
    parser.add_argument("--out", default="/tmp/oamlm-hybrid-uncertainty")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = [float(v) for v in args.limits.split(",")]
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with get_client() as client:
        t = time.perf_counter()
        store, model = pretrain(out, client, quick=not args.full_pretrain)["ring"]
        pretrain_s = time.perf_counter() - t
        t = time.perf_counter()
        ensemble = train_ensemble(store, model, args.members, args.references)
        ensemble_s = time.perf_counter() - t
        for n in (int(v) for v in args.rings.split(",")):
            name = f"ring-Au{n}"
            start = ring_start(n)
            row = {"BFGS": run_peer(BFGS, start)}
            for limit in [None, *limits]:
                label = "hybrid" if limit is None else f"hybrid_gated_{limit:g}"
                optimizer = HybridOptimizer(
                    start, online_model(Store.open(store), model, [start], None), "xtb", {},
                    HybridSettings(fmax=FMAX, **({} if limit is None else
                                                   {"max_uncertainty": limit})),
                    name=f"{name}-{label}", ensemble=None if limit is None else ensemble)
                result = optimize_many([optimizer], client)[0]
                rounds = optimizer.state.rounds
                row[label] = {"fine_calls": result["fine_calls"], "energy": result["energy"],
                              "converged": result["converged"], "ml_calls": result["ml_calls"],
                              "ensemble_calls": result["ensemble_calls"],
                              "wall_s": result["wall_s"],
                              "ml_rounds": sum("ml_steps" in r for r in rounds),
                              "rounds_halted": sum(bool(r.get("halted")) for r in rounds)}
            for entry in row.values():
                entry.update(versus_bfgs(row["BFGS"], entry))
            results[name] = row
            print(name, json.dumps({k: (v["fine_calls"], v["energy_minus_bfgs_meV"])
                                    for k, v in row.items()}), flush=True)
    labels = [k for k in next(iter(results.values())) if k != "BFGS"]
    summary = {"benchmark": "hybrid_uncertainty", "fmax": FMAX, "members": args.members,
               "references": args.references, "systems": results,
               "mean_ratio_vs_bfgs": mean_ratios(results, labels),
               "pretrain_s": round(pretrain_s, 1), "ensemble_s": round(ensemble_s, 1),
               "wall_s": round(time.perf_counter() - started, 1), **machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
