"""Seed 000's stretched-staple case on Au38(SCH3)24: hybrid optimiser against ASE BFGS.

From the GFN1-xTB minimum of Au38(SCH3)24 (``structures.gold38_thiolate``), one long staple
(S-Au-S-Au-S with its methyls) is pulled 2.0 Å outwards, along the line from the cluster's
centre to the staple's centroid, and only that staple's atoms are free (``FixAtoms`` on the
rest). The fine calculator is GFN1-xTB (GFN2-xTB's SCF does not converge on this cluster),
or with ``--fine gpaw`` GPAW (LCAO, PBE, ``--basis``; the cluster boxed once with 4 Å of
vacuum for both optimisers).

The model is trained on GFN1-xTB MD of the relaxed cluster (``--md-steps`` steps at 500 K,
every 2nd frame; thiolate scheme, K = ``--references``), so it has seen the intact cluster
but never the stretched staple (with GPAW, never the fine level either: the residual
correction and the online updates bring it in). ``--trained STORE`` reuses a store this
script trained. ``--fine-only`` runs the hybrid without a model (nothing is trained): its
steps on fine results alone, as ``optimize --fine-only``. Both optimisers stop at fine fmax
<= 0.05 eV/Å on the free atoms or after ``--max-fine`` fine calls; ASE BFGS gets ``maxstep``
0.05 Å as the hybrid's ML rounds (seed 000 sec. III D). A GPAW call on this cluster takes
minutes on one core, so ``--only hybrid`` and ``--only bfgs`` run the two optimisers as
separate processes side by side (one core each); ``energy_per_call`` then compares their
descent at equal fine-call budgets. The last line is one JSON object with fine calls,
energies and wall times.

Measured with ``--fine-only --max-fine 250`` on GFN1-xTB (one run, 2 cores): the fine steps
converge in 25 fine calls (wall 276 s), ASE BFGS in 201 (537 s), 8.0× fewer fine calls,
ending 114 meV lower. On GPAW (``--fine gpaw --fine-only --only hybrid``, one core; calls
81-212 s, median 128 s, once the other runs beside it had ended) the fine steps were 2.32 eV
down and at fmax 0.52 eV/Å after 40 calls (6319 s in fine calls, stopped there). They passed
the energy ASE BFGS has after 30 calls (``--only bfgs --max-fine 30``, 3203 s) at call 12,
and were 1.29 eV below it at call 30.

Usage: python benchmarks/au38_staple.py [--md-steps 120] [--references 600] [--out DIR]
           [--trained STORE] [--fine gfn1|gpaw] [--basis dzp] [--max-fine 100]
           [--only hybrid|bfgs] [--fine-only]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase.constraints import FixAtoms
from ase.optimize import BFGS
from hybrid import FMAX, against_bfgs, run_peer
from machine import machine_facts

from oamlm_dist.calculators import ensure_cell
from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly
from oamlm_dist.optimize.run import online_model
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import au38_staples, gold38_thiolate
from oamlm_dist.training import FitSettings, fit

GFN1 = {"method": "GFN1-xTB"}
PULL = 2.0  # Å


def stretched_staple() -> tuple:
    """The cluster with its first long staple pulled out by PULL Å, the rest fixed."""
    atoms = gold38_thiolate()
    staple = next(s for s in au38_staples(atoms) if s["kind"] == "long")["atoms"]
    direction = atoms.positions[staple].mean(axis=0) - atoms.positions.mean(axis=0)
    atoms.positions[staple] += PULL * direction / np.linalg.norm(direction)
    atoms.set_constraint(FixAtoms(mask=~np.isin(np.arange(len(atoms)), staple)))
    return atoms, staple


def train(store: str, steps: int, references: int, client) -> str:
    md = MDSettings(temperature=500, steps=steps, timestep=1.5, interval=2, seed=5)
    sample(store, [("Au38", gold38_thiolate())], "xtb", GFN1, md, runs=1, client=client)
    describe(store, "thiolate", "r_cut=4,n_max=6,l_max=4", client, block_frames=20)
    fit(store, "au38", client, FitSettings(references=references))
    return "au38"


def progress(optimizer: HybridOptimizer) -> None:
    """One line per fine call of the hybrid (GPAW runs take hours)."""
    row = optimizer.state.rounds[-1]
    print(f"hybrid fine call {row['fine_call']} ({row['kind']}): E = {row['energy']:.4f} eV, "
          f"fmax = {row['fmax']:.3f} eV/Å, {optimizer.state.fine_wall_s:.0f} s in fine calls",
          flush=True)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--md-steps", type=int, default=120)
    parser.add_argument("--references", type=int, default=600)
    parser.add_argument("--out", default="/tmp/oamlm-au38-bench")
    parser.add_argument("--trained", help="a store this script trained (model 'au38')")
    parser.add_argument("--fine", choices=("gfn1", "gpaw"), default="gfn1")
    parser.add_argument("--basis", default="dzp", help="GPAW LCAO basis")
    parser.add_argument("--max-fine", type=int, default=HybridSettings.max_fine)
    parser.add_argument("--only", choices=("hybrid", "bfgs"))
    parser.add_argument("--fine-only", action="store_true",
                        help="the hybrid without a model: its steps on fine results alone")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, staple = stretched_staple()
    calculator, params = ("xtb", GFN1) if args.fine == "gfn1" else ("gpaw",
                                                                     {"basis": args.basis})
    if calculator == "gpaw":
        start = ensure_cell(start)
    started = time.perf_counter()
    summary = {"benchmark": "au38_staple", "fine": calculator, "fine_params": params,
               "pull_A": PULL, "free_atoms": len(staple), "fmax": FMAX,
               "max_fine": args.max_fine}
    results = {}
    if args.only != "bfgs":
        store = args.trained
        with get_client(n_workers=1 if args.only else None, quiet=True) as client:
            if store is None and not args.fine_only:
                store = str(out / "au38.zarr")
                t = time.perf_counter()
                train(store, args.md_steps, args.references, client)
                summary.update({"train_s": round(time.perf_counter() - t, 1),
                                "md_steps": args.md_steps, "references": args.references})
            model = (FineOnly() if args.fine_only
                     else online_model(Store.open(store), "au38", [start], None))
            optimizer = HybridOptimizer(
                start, model, calculator, params,
                HybridSettings(fmax=FMAX, ml_maxstep=0.05, max_fine=args.max_fine),
                name="au38-staple")
            results["hybrid"] = optimize_many([optimizer], client, on_round=progress)[0]
        results["hybrid"]["energy_per_call"] = [p.energy for p in optimizer.points]
        print("hybrid", json.dumps(results["hybrid"]), flush=True)
        summary["trained"] = None if args.fine_only else store
    if args.only != "hybrid":
        results["BFGS"] = run_peer(BFGS, start, calculator, params, max_calls=args.max_fine,
                                   energy_per_call=True, maxstep=0.05, logfile="-")
        print("BFGS", json.dumps(results["BFGS"]), flush=True)
    if args.only is None:
        summary.update(against_bfgs(results["BFGS"], results["hybrid"],
                                    "fine_only" if args.fine_only else "hybrid_pretrained"))
    else:
        summary.update(results)  # the one optimiser run here
    summary.update({"wall_s": round(time.perf_counter() - started, 1),
                    "machine": machine_facts()})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
