"""The hybrid optimiser with GPAW as the fine calculator on one small ring, against ASE BFGS.

Au4(SCH3)4 is relaxed with xTB, boxed once (4 Å vacuum, the cell GPAW keeps throughout) and
rattled by 0.1 Å; from that start ASE BFGS runs on GPAW directly and the hybrid optimiser runs
with the ring model of ``benchmarks/hybrid.py --quick`` (pre-trained on xTB MD of rings 3 and
8: the model has never seen GPAW forces; the per-round correction and the online updates
bring in the GPAW ones); so do the hybrid's fine steps alone, without a model
(``fine_steps_alone``, as in ``benchmarks/hybrid.py``: the difference is what the xTB-trained
model costs or saves on GPAW). All stop at GPAW fmax <= 0.05 eV/Å. GPAW: LCAO, PBE, dzp by
default, serial (one core each). The last line is one JSON object with fine calls, energies,
wall times and the fine-call ratios.

Usage: python benchmarks/hybrid_gpaw.py [--basis dzp] [--ring 4] [--seed 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ase.optimize import BFGS
from hybrid import FMAX, against_bfgs, pretrain, run_peer, versus_bfgs, xtb_minimum
from machine import machine_facts

from oamlm_dist.calculators import ensure_cell
from oamlm_dist.cluster import get_client
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly
from oamlm_dist.optimize.run import online_model
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--basis", default="dzp")
    parser.add_argument("--ring", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7, help="of the 0.1 Å rattle")
    parser.add_argument("--out", default="/tmp/oamlm-hybrid-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"basis": args.basis}
    start = rattle(ensure_cell(xtb_minimum(gold_thiolate_ring(args.ring))), 0.1, seed=args.seed)
    started = time.perf_counter()
    with get_client(n_workers=1, quiet=True) as client:
        store, name = pretrain(out, client, quick=True)["ring"]
        optimizer = HybridOptimizer(start, online_model(Store.open(store), name, [start], None),
                                    "gpaw", params, HybridSettings(fmax=FMAX),
                                    name=f"ring-Au{args.ring}-gpaw")
        hybrid = optimize_many([optimizer], client)[0]
        print("hybrid", json.dumps(hybrid), flush=True)
        alone = optimize_many([HybridOptimizer(start, FineOnly(), "gpaw", params,
                                               HybridSettings(fmax=FMAX),
                                               name=f"ring-Au{args.ring}-gpaw-alone")],
                              client)[0]
        fine_steps_alone = {k: alone[k] for k in ("fine_calls", "energy", "converged", "wall_s")}
    print("fine_steps_alone", json.dumps(fine_steps_alone), flush=True)
    bfgs = run_peer(BFGS, start, "gpaw", params)
    print("BFGS", json.dumps(bfgs), flush=True)
    summary = {
        "benchmark": "hybrid_gpaw", "system": f"Au{args.ring}(SCH3){args.ring}", "seed": args.seed,
        "gpaw": {"mode": "lcao", "xc": "PBE", **params}, "fmax": FMAX,
        **against_bfgs(bfgs, hybrid),
        "fine_steps_alone": {**fine_steps_alone, **versus_bfgs(bfgs, fine_steps_alone)},
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
