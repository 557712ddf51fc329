"""Drive the pipeline from Python on any Dask cluster: sample, describe, fit, optimise.

Where the work runs is the only thing that changes between a laptop and a supercomputer:

    python examples/cluster_client.py                         # a LocalCluster on this machine
    python examples/cluster_client.py tcp://node17:8786       # a running Dask scheduler
    python examples/cluster_client.py deploy/slurm.yaml       # SLURM jobs via dask-jobqueue
    OAMLM_SCHEDULER=deploy/pbs.yaml python examples/cluster_client.py   # or from the environment

On a cluster the store must be on a file system every worker sees (``--store
/scratch/project/alkanes.zarr``): workers write their own frames and descriptor blocks into
it. The dashboard link is printed as soon as the client is connected; with a batch-system
cluster, open it through an ssh tunnel (deploy/install.md) and watch the workers arrive.

Options: ``--store PATH`` (default ``cluster-example.zarr``), ``--quick`` (a few MD steps, a
small model and at most 10 fine calls: a smoke test). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import alkane, rattle
from oamlm_dist.training import FitSettings, fit


def run(scheduler: str | None, store: str, quick: bool = False) -> dict:
    """Sample alkanes, describe, fit and relax rattled propane on the cluster ``scheduler``."""
    md = MDSettings(temperature=750, steps=20 if quick else 300, timestep=1.0, interval=1)
    references = 40 if quick else 400
    started = time.perf_counter()
    # get_client: None/"local" -> LocalCluster, "tcp://..." -> running scheduler,
    # "*.yaml" -> dask-jobqueue cluster that is shut down when the block ends.
    with get_client(scheduler) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        # Batch jobs start when the queue lets them; tasks simply wait for workers, but a
        # first worker within minutes shows the configuration is right.
        client.wait_for_workers(1, timeout=600)
        print(f"workers: {len(client.scheduler_info()['workers'])}", flush=True)

        # 1. MD with GFN2-xTB: one task per structure and run, frames written by the workers.
        sampled = sample(store, "alkanes:2-3", "xtb", {}, md, runs=2, client=client)
        # 2. atom classes (C, H by element), 4-neighbour alignment environments, SOAP rows.
        describe(store, "element", "r_cut=3,n_max=6,l_max=1,sigma=0.25", client,
                 block_frames=20)
        # 3. EMLM norms and OAMLM directions per class, trained on the first run of each.
        fitted = fit(store, "alkanes", client,
                     FitSettings(references=references, frames="name:*run0*"))
        # 4. hybrid relaxation: ML-BFGS rounds on the client, xTB single points as futures
        #    on workers with a free "dft" slot; every fine result goes into the store.
        start = rattle(alkane(3), 0.1, seed=3)
        opened = Store.open(store, mode="a")
        optimizer = HybridOptimizer(start, OnlineModel.pretrained(opened, "alkanes"), "xtb",
                                    settings=HybridSettings(fmax=0.05,
                                                            max_fine=10 if quick else 60),
                                    name="propane", store=opened)
        relaxed = optimize_many([optimizer], client)[0]
        dashboard = client.dashboard_link
    result = {"dashboard": dashboard, "store": store, "frames": sampled["frames"],
              "classes": sorted(fitted["classes"]), "converged": relaxed["converged"],
              "fine_calls": relaxed["fine_calls"], "energy": relaxed["energy"],
              "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scheduler", nargs="?", default=os.environ.get("OAMLM_SCHEDULER"),
                        help="tcp://host:port or a deploy/*.yaml file (default: "
                        "$OAMLM_SCHEDULER, else a LocalCluster)")
    parser.add_argument("--store", default="cluster-example.zarr")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = parser.parse_args(argv)
    return run(args.scheduler, args.store, quick=args.quick)


if __name__ == "__main__":
    main()
