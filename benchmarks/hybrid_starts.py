"""Fine calls over many starts: what does the ring model save over the steps on fine results?

``benchmarks/hybrid.py`` has one start per system, and on flat landscapes the count of a
single start depends on where its path meets fmax. Here each of Au4, Au5 and Au6(SCH3)n is
relaxed with GFN2-xTB and rattled by 0.15 Å with ``--seeds`` seeds (18 starts by default);
from each start, on GFN2-xTB to fmax <= 0.05 eV/Å: ASE BFGS and GPMin, the hybrid without a
model (``fine_only``: its steps on fine results, as ``optimize --fine-only``), with the ring
model pre-trained as in ``benchmarks/hybrid.py --quick`` (MD of rings 3 and 8), and from a
cold start. Per start one line; the last line is one JSON object with, per optimiser, the
total of fine calls, its ratio to BFGS's total, and the number of starts whose final
energy is more than 10 meV above BFGS's.

Measured (18 starts, agreement gate 10°): BFGS 630 fine calls, GPMin 547, fine_only 247
(2.55× fewer than BFGS), hybrid_pretrained 273, hybrid_cold 251; no start more than 10 meV
above BFGS's energy except GPMin's (2). One pre-trained run, Au6 seed 22, followed a soft
contraction of the ring 0.44 eV downhill and stopped on an xTB SCF failure.

``--store S --model M`` puts a trained ring model in the pre-trained one's place. A model
trained on MD of the starts' own ring sizes, as an upper bound for the learnt models
(``oamlm-dist sample S --structures rings:4-6 --steps 400 --interval 2 --runs 2 --seed 3``
at ``--temperature`` 500 and 300, ``describe S --scheme thiolate --soap
r_cut=4,n_max=6,l_max=4``, ``fit S --model M --references 800``), needed 266 fine calls in
the same run (BFGS 630, fine_only 247): its force changes agreed with the fine ones to 10° at
7 of 218 fine points (median 34°, 50° over each run's last three), so 3 ML rounds ran in all.
After its one round Au6 seed 20 slid 0.75 eV down a ring contraction and did not converge.

Usage: python benchmarks/hybrid_starts.py [--seeds 20-25] [--rings 4,5,6] [--out DIR]
                                          [--store STORE --model NAME]
"""

from __future__ import annotations

import argparse
import json
import time

from ase.optimize import BFGS, GPMin
from hybrid import FMAX, add_ring_model_options, ring_model, run_peer, versus_bfgs, xtb_minimum
from machine import machine_facts

from oamlm_dist.cluster import get_client
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly
from oamlm_dist.optimize.run import online_model
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle

RATTLE = 0.15  # Å
ABOVE_BFGS_MEV = 10.0  # the bound on final energies


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="20-25", help="first-last seed of the rattle")
    parser.add_argument("--rings", default="4,5,6")
    add_ring_model_options(parser)
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    started = time.perf_counter()
    rows = {}
    with get_client(n_workers=1, quiet=True) as client:
        store, name = ring_model(parser, args, client)
        # the model each variant starts from, per start geometry
        hybrids = {"fine_only": lambda start: FineOnly(),
                   "hybrid_pretrained": lambda start: online_model(Store.open(store), name,
                                                                   [start], None),
                   "hybrid_cold": lambda start: online_model(Store.open(store), None, [start],
                                                             None)}
        for n in (int(v) for v in args.rings.split(",")):
            minimum = xtb_minimum(gold_thiolate_ring(n))
            for seed in range(first, last + 1):
                start = rattle(minimum, RATTLE, seed=seed)
                row = {peer.__name__: run_peer(peer, start) for peer in (BFGS, GPMin)}
                for label, new_model in hybrids.items():
                    optimizer = HybridOptimizer(start, new_model(start), "xtb", {},
                                                HybridSettings(fmax=FMAX),
                                                name=f"Au{n}-{seed}-{label}")
                    row[label] = optimize_many([optimizer], client)[0]
                key = f"Au{n}-seed{seed}"
                rows[key] = {label: {"fine_calls": r["fine_calls"], "converged": r["converged"],
                                     **versus_bfgs(row["BFGS"], r)} for label, r in row.items()}
                print(key, json.dumps({k: (v["fine_calls"], v["energy_minus_bfgs_meV"])
                                       for k, v in rows[key].items()}), flush=True)
    totals = {}
    for label in next(iter(rows.values())):
        entries = [row[label] for row in rows.values()]
        totals[label] = {
            "fine_calls": sum(e["fine_calls"] for e in entries),
            "converged": sum(e["converged"] for e in entries),
            "above_bfgs_by_more_than_10meV": sum(e["energy_minus_bfgs_meV"] > ABOVE_BFGS_MEV
                                                 for e in entries)}
    bfgs_total = totals["BFGS"]["fine_calls"]
    for entry in totals.values():
        entry["fine_call_ratio_vs_bfgs"] = round(bfgs_total / entry["fine_calls"], 2)
    summary = {"benchmark": "hybrid_starts", "starts": len(rows), "rattle_A": RATTLE,
               "fmax": FMAX, "totals": totals, "per_start": rows,
               "wall_s": round(time.perf_counter() - started, 1), "machine": machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
