"""Seed 000's stretched-staple case on Au38(SCH3)24: hybrid optimiser against ASE BFGS.

From the GFN1-xTB minimum of Au38(SCH3)24 (``structures.gold38_thiolate``), one long staple
(S-Au-S-Au-S with its methyls) is pulled 2.0 Å outwards, along the line from the cluster's
centre to the staple's centroid, and only that staple's atoms are free (``FixAtoms`` on the
rest). The fine calculator is GFN1-xTB (GFN2-xTB's SCF does not converge on this cluster).

The model is trained on GFN1-xTB MD of the relaxed cluster (``--md-steps`` steps at 500 K,
every 2nd frame; thiolate scheme, K = ``--references``), so it has seen the intact cluster
but never the stretched staple. Both optimisers stop at fine fmax <= 0.05 eV/Å on the free
atoms; ASE BFGS gets ``maxstep`` 0.05 Å as the hybrid's ML rounds (seed 000 sec. III D).
The last line is one JSON object with fine calls, energies and wall times of both.

Usage: python benchmarks/au38_staple.py [--md-steps 120] [--references 600] [--out DIR]
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

from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
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


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--md-steps", type=int, default=120)
    parser.add_argument("--references", type=int, default=600)
    parser.add_argument("--out", default="/tmp/oamlm-au38-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = str(out / "au38.zarr")
    start, staple = stretched_staple()
    started = time.perf_counter()
    with get_client(quiet=True) as client:
        t = time.perf_counter()
        model = train(store, args.md_steps, args.references, client)
        train_s = time.perf_counter() - t
        optimizer = HybridOptimizer(start, online_model(Store.open(store), model, [start], None),
                                    "xtb", GFN1, HybridSettings(fmax=FMAX, ml_maxstep=0.05),
                                    name="au38-staple")
        hybrid = optimize_many([optimizer], client)[0]
    print("hybrid", json.dumps(hybrid), flush=True)
    bfgs = run_peer(BFGS, start, "xtb", GFN1, maxstep=0.05)
    print("BFGS", json.dumps(bfgs), flush=True)
    summary = {
        "benchmark": "au38_staple", "fine": "GFN1-xTB", "pull_A": PULL,
        "free_atoms": len(staple), "fmax": FMAX, "train_s": round(train_s, 1),
        "md_steps": args.md_steps, "references": args.references,
        **against_bfgs(bfgs, hybrid),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
