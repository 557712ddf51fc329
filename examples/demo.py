"""The embedded-default demo: a complete small campaign on a local Dask cluster with GFN2-xTB.

1. MD of Au4(SCH3)4 and Au5(SCH3)5 rings (one Dask task per run, frames streamed to Zarr);
2. describe (atom classes, neighbourhoods, SOAP) and fit (EMLM norms, OAMLM directions);
3. hybrid optimisation of a rattled Au6(SCH3)6 ring, a size the model has never seen,
   next to plain ASE BFGS on xTB from the same start;
4. prints the fine-call counts, the final energies and where the plots are.

Run with ``make demo`` or ``python examples/demo.py [OUT_DIR] [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ase.io import write
from ase.optimize import BFGS

from oamlm_dist.calculators import make_calculator
from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.evaluate import evaluate
from oamlm_dist.optimize.hybrid import HybridSettings
from oamlm_dist.optimize.run import optimize
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle
from oamlm_dist.training import FitSettings, fit


def bfgs_on_fine(atoms, fmax: float) -> tuple[int, float]:
    """Plain ASE BFGS with xTB: the peer the hybrid optimiser is measured against."""
    atoms = atoms.copy()
    atoms.calc = make_calculator("xtb")
    optimizer = BFGS(atoms, logfile=None)
    optimizer.run(fmax=fmax, steps=300)
    return optimizer.nsteps + 1, float(atoms.get_potential_energy())


def main(out_dir: str = "demo-output", quick: bool = False) -> dict:
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store = out / "rings.zarr"
    steps = 60 if quick else 400
    start = rattle(gold_thiolate_ring(6), 0.1, seed=7)
    write(str(out / "ring-Au6-start.extxyz"), start)
    timings = {}
    with get_client() as client:
        t = time.perf_counter()
        sample(store, "rings:4-5", "xtb", {}, MDSettings(temperature=500, steps=steps,
               timestep=1.5, interval=2, seed=1), runs=2, client=client)
        timings["sample_s"] = time.perf_counter() - t
        t = time.perf_counter()
        describe(store, "thiolate", "r_cut=4,n_max=6,l_max=4,sigma=0.25", client,
                 block_frames=50)
        timings["describe_s"] = time.perf_counter() - t
        t = time.perf_counter()
        fit(store, "rings", client, FitSettings(references=150 if quick else 600,
                                                frames="name:*run0*"))
        timings["fit_s"] = time.perf_counter() - t
        held_out = out / "held-out.extxyz"
        runs = Store.open(store).segments("md")
        write(str(held_out), [f for s in runs if "run1" in s.attrs["name"]
                              for f in s.read()[::5]])
        report = evaluate(store, "rings", [str(held_out)], client, plots=out / "plots")
        t = time.perf_counter()
        hybrid = optimize([str(out / "ring-Au6-start.extxyz")], store, client, "xtb", {},
                          HybridSettings(fmax=0.05), model="rings", out_dir=out)[0]
        timings["optimize_s"] = time.perf_counter() - t
    bfgs_calls, bfgs_energy = bfgs_on_fine(start, 0.05)
    print()
    print(f"store: {store}")
    for cls, m in report["classes"].items():
        print(f"  {cls:<8} held-out weighted-average angle {m['weighted_angle_deg']:5.1f}°, "
              f"norm RMSE {m['norm_rmse']:.3f} eV/Å")
    print("Au6(SCH3)6 rattled by 0.1 Å, fmax 0.05 eV/Å on xTB forces:")
    print(f"  hybrid (model of Au4/Au5 MD): {hybrid['fine_calls']} fine calls, "
          f"{hybrid['ml_calls']} ML force calls, E = {hybrid['energy']:.4f} eV, "
          f"converged={hybrid['converged']}")
    print(f"  plain BFGS on xTB:             {bfgs_calls} fine calls, E = {bfgs_energy:.4f} eV")
    print(f"plots: {hybrid['plot']} and {out / 'plots'}/")
    print(f"trajectory: {hybrid['trajectory']}")
    result = {"fine_calls": hybrid["fine_calls"], "bfgs_fine_calls": bfgs_calls,
              "energy": hybrid["energy"], "bfgs_energy": bfgs_energy,
              "converged": hybrid["converged"],
              "weighted_angle_deg": {c: round(m["weighted_angle_deg"], 2)
                                     for c, m in report["classes"].items()},
              **{k: round(v, 1) for k, v in timings.items()},
              "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    main(*args, quick="--quick" in sys.argv)
