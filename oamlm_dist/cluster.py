"""Where the work runs: a LocalCluster (embedded default), a running scheduler, or a
dask-jobqueue cluster described by a YAML file (see ``deploy/``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from distributed import Client, LocalCluster

from oamlm_dist.errors import InputError

# Fine calculations ask for this resource so they land on workers meant for DFT.
FINE_RESOURCE = "dft"
JOBQUEUE_KINDS = ("slurm", "pbs")


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1,
                  memory_limit: str | None = None) -> LocalCluster:
    """One single-threaded worker process per core, each offering one ``dft`` slot.

    Single-threaded workers because DScribe and the xTB/GPAW single points are serial codes:
    the parallelism comes from running many tasks at once.
    """
    n_workers = n_workers or os.cpu_count() or 1
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        resources={FINE_RESOURCE: 1},
        memory_limit=memory_limit or "auto",
        dashboard_address=":0",
        silence_logs=40,
    )


def jobqueue_cluster(config_path: str | os.PathLike):
    """Build a dask-jobqueue cluster from a YAML file: ``kind``, ``cluster`` (keyword
    arguments of SLURMCluster/PBSCluster), and ``jobs`` or ``adapt: {minimum, maximum}``."""
    path = Path(config_path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read cluster configuration ({exc})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: cluster configuration must be a mapping")
    unknown = set(config) - {"kind", "cluster", "jobs", "adapt"}
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)} (allowed: kind, cluster, jobs, "
                         "adapt)")
    kind = config.get("kind")
    if kind not in JOBQUEUE_KINDS:
        raise InputError(f"{path}: kind must be one of {JOBQUEUE_KINDS}, got {kind!r}")
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    kwargs = dict(config.get("cluster") or {})
    kwargs.setdefault("worker_extra_args", [])
    if not any("--resources" in str(a) for a in kwargs["worker_extra_args"]):
        kwargs["worker_extra_args"] = [*kwargs["worker_extra_args"],
                                       "--resources", f"{FINE_RESOURCE}=1"]
    try:
        cluster = cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{path}: bad cluster settings ({exc})") from exc
    if "adapt" in config:
        cluster.adapt(**config["adapt"])
    else:
        cluster.scale(jobs=int(config.get("jobs", 1)))
    return cluster


def get_client(spec: str | None = None, n_workers: int | None = None, quiet: bool = False
               ) -> Client:
    """A Dask client for ``spec``.

    ``None`` (or ``"local"``) starts a LocalCluster sized to the machine; ``tcp://...`` or
    ``host:port`` connects to a running scheduler; a ``.yaml``/``.yml`` path starts a
    dask-jobqueue cluster. ``OAMLM_SCHEDULER`` supplies the spec when none is given.
    The dashboard link is printed so the run can be watched.
    """
    spec = spec or os.environ.get("OAMLM_SCHEDULER") or "local"
    if spec == "local":
        client = Client(local_cluster(n_workers))
    elif spec.endswith((".yaml", ".yml")):
        client = Client(jobqueue_cluster(spec))
    else:
        try:
            client = Client(spec, timeout="30s")
        except OSError as exc:
            raise InputError(f"cannot reach Dask scheduler at {spec} ({exc})") from exc
    if not quiet:
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
    return client
