"""Wall time of many hybrid optimisations at once (``optimize_many``) on 1, 2 and 4 workers.

Eight structures (Au4(SCH3)4 and Au6(SCH3)6 rings, each rattled by 0.15 Å with four seeds
from its xTB minimum; the xTB relaxations of the odd rings 5 and 7 from their built geometry
meet SCF failures) are relaxed together to fine fmax <= 0.05 eV/Å with the ring model of
``benchmarks/hybrid.py --quick`` (pre-trained on MD of rings 3 and 8, cached under
``--out``; this measures throughput, not model quality). Each
worker count gets a fresh LocalCluster; the starts, model and settings are the same.

Besides the wall time, the line per worker count gives the fine calculations' summed wall
time on the workers (``fine_wall_s``): the part that more workers can spread. The rest is
the client's ML rounds, which run one structure at a time.

Usage: python benchmarks/hybrid_scaling.py [--calculator xtb|gpaw] [--workers 1,2,4]
       [--out DIR]   (gpaw: LCAO with --basis, sz by default, to keep the run short)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hybrid import FMAX, pretrain, xtb_minimum
from machine import machine_facts

from oamlm_dist.cluster import get_client
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.run import online_model
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle

SEEDS = (21, 22, 23, 24)


def starts() -> dict:
    minima = {n: xtb_minimum(gold_thiolate_ring(n)) for n in (4, 6)}
    return {f"ring-Au{n}-s{seed}": rattle(atoms, 0.15, seed=seed)
            for n, atoms in minima.items() for seed in SEEDS}


def run(workers: int, structures: dict, model: tuple[str, str], calculator: str,
        params: dict) -> dict:
    store, name = model
    with get_client(n_workers=workers, quiet=True) as client:
        optimizers = [HybridOptimizer(atoms, online_model(Store.open(store), name, [atoms], None),
                                      calculator, params, HybridSettings(fmax=FMAX),
                                      name=label)
                      for label, atoms in structures.items()]
        started = time.perf_counter()
        results = optimize_many(optimizers, client)
        wall = time.perf_counter() - started
    return {"workers": workers, "wall_s": round(wall, 1),
            "fine_wall_s": round(sum(r["fine_wall_s"] for r in results), 1),
            "fine_calls": sum(r["fine_calls"] for r in results),
            "converged": sum(r["converged"] for r in results)}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calculator", choices=("xtb", "gpaw"), default="xtb")
    parser.add_argument("--basis", default="sz", help="GPAW LCAO basis")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--out", default="/tmp/oamlm-hybrid-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"basis": args.basis} if args.calculator == "gpaw" else {}
    with get_client(quiet=True) as client:
        model = pretrain(out, client, quick=True)["ring"]
    structures = starts()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        rows.append(run(workers, structures, model, args.calculator, params))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["wall_s"] * rows[0]["workers"]
    for row in rows:
        row["speedup_vs_first"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
        row["efficiency"] = round(base / (row["wall_s"] * row["workers"]), 2)
    summary = {"benchmark": "hybrid_scaling", "calculator": args.calculator, "params": params,
               "structures": len(structures), "fmax": FMAX, "runs": rows,
               "machine": machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
