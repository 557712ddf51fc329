"""Where the work runs: a LocalCluster (embedded default), a running scheduler, or a
dask-jobqueue cluster described by a YAML file (see ``deploy/slurm.yaml``, ``deploy/pbs.yaml``)."""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import time
from contextlib import suppress
from pathlib import Path

import dask
import yaml
from distributed import Client, LocalCluster
from distributed.core import Status

from oamlm_dist.errors import InputError

# Fine calculations ask for this resource so they land on workers meant for DFT.
FINE_RESOURCE = "dft"
JOBQUEUE_KINDS = ("slurm", "pbs")
CONFIG_KEYS = ("kind", "cluster", "jobs", "adapt", "dft_slots")
ADAPT_KEYS = ("minimum_jobs", "maximum_jobs")
# Replaced by the client's environment prefix in ``job_script_prologue`` lines, so one YAML
# file serves every checkout (workers must run the same environment as the client).
VENV_PLACEHOLDER = "{venv}"


class _OwningClient(Client):
    """A client that shuts down the cluster it was made for when it closes.

    ``Client(cluster)`` leaves the cluster running until interpreter exit; for a jobqueue
    cluster that means batch jobs (and their allocation) outlive the command.
    """

    def close(self, *args, **kwargs):
        cluster = getattr(self, "cluster", None)
        owned = cluster is not None and cluster.status == Status.running
        if owned and self.status == "running":
            # Let the workers leave while the scheduler still runs: stopped together with
            # it, their dropped connections are logged as errors after the results.
            with suppress(Exception):
                with suppress(AttributeError):
                    cluster._adaptive.stop()  # or it would ask for jobs again
                cluster.scale(0)
                deadline = time.monotonic() + 15
                while self.scheduler_info()["workers"] and time.monotonic() < deadline:
                    time.sleep(0.1)
        result = super().close(*args, **kwargs)
        if owned:
            # A progress bar's scheduler-side feed notices its closed comm only at its next
            # 100 ms tick; stopping the scheduler before that logs a spurious CancelledError.
            time.sleep(0.3)
            with suppress(Exception):  # also runs from __del__ at interpreter exit
                cluster.close()
        return result


# Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold at 128 kB: every
# larger array (DScribe's per-frame buffers, ~1 MB) becomes a fresh mapping and its page faults
# cost ~20 % of the SOAP time. A fixed 32 MiB threshold serves them from the heap again. Set for
# local workers and exported in jobqueue job scripts; workers started otherwise need it in
# their environment.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 32 << 20}


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1,
                  memory_limit: str | None = None) -> LocalCluster:
    """One single-threaded worker process per core, each offering one ``dft`` slot.

    Single-threaded workers because DScribe and the xTB/GPAW single points are serial codes:
    the parallelism comes from running many tasks at once.
    """
    n_workers = n_workers or os.cpu_count() or 1
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_MALLOC}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            resources={FINE_RESOURCE: 1},
            memory_limit=memory_limit or "auto",
            dashboard_address=":0",
            silence_logs=40,
        )


def read_jobqueue_config(config_path: str | os.PathLike) -> dict:
    """Read and check a jobqueue YAML file; returns ``{kind, cluster, jobs | adapt, dft_slots}``.

    Every mistake a user can make in the file (unknown or misspelt key, wrong type, both
    ``jobs`` and ``adapt``) raises :class:`InputError` with a one-line message naming the file.
    """
    path = Path(config_path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise InputError(f"{path}: cannot read cluster configuration ({reason})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: cluster configuration must be a mapping with keys "
                         f"{', '.join(CONFIG_KEYS)}")
    _reject_unknown(path, "", config, CONFIG_KEYS)

    kind = config.get("kind")
    if kind not in JOBQUEUE_KINDS:
        raise InputError(f"{path}: kind must be one of {', '.join(JOBQUEUE_KINDS)}, got {kind!r}")
    cluster = config.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise InputError(f"{path}: 'cluster' must be a mapping of {_cluster_cls(kind).__name__} "
                         "keyword arguments")
    _reject_unknown(path, "cluster.", cluster, _cluster_keywords(kind))
    extra = cluster.get("worker_extra_args") or []
    if not isinstance(extra, list) or any("--resources" in str(a) for a in extra):
        raise InputError(f"{path}: cluster.worker_extra_args must be a list without "
                         "--resources (set dft_slots instead)")
    prologue = cluster.get("job_script_prologue") or []
    if not isinstance(prologue, list) or not all(isinstance(line, str) for line in prologue):
        raise InputError(f"{path}: cluster.job_script_prologue must be a list of shell lines")

    if "jobs" in config and "adapt" in config:
        raise InputError(f"{path}: give either 'jobs' (a fixed number) or 'adapt', not both")
    checked: dict = {"kind": kind, "cluster": dict(cluster),
                     "dft_slots": _count(path, "dft_slots", config.get("dft_slots", 1))}
    if "adapt" in config:
        adapt = config["adapt"]
        if not isinstance(adapt, dict):
            raise InputError(f"{path}: 'adapt' must be a mapping like "
                             "{minimum_jobs: 0, maximum_jobs: 10}")
        _reject_unknown(path, "adapt.", adapt, ADAPT_KEYS)
        low = _count(path, "adapt.minimum_jobs", adapt.get("minimum_jobs", 0))
        if "maximum_jobs" not in adapt:
            raise InputError(f"{path}: adapt needs maximum_jobs (the most jobs to queue)")
        high = _count(path, "adapt.maximum_jobs", adapt["maximum_jobs"], least=1)
        if low > high:
            raise InputError(f"{path}: adapt.minimum_jobs ({low}) exceeds maximum_jobs ({high})")
        checked["adapt"] = {"minimum_jobs": low, "maximum_jobs": high}
    else:
        checked["jobs"] = _count(path, "jobs", config.get("jobs", 1), least=1)
    return checked


def cluster_kwargs(config: dict) -> dict:
    """Keyword arguments for SLURMCluster/PBSCluster from a checked configuration."""
    kwargs = dict(config["cluster"])
    # The workers inherit the job's environment (the nanny adds only its own variables).
    exports = [f"export {name}={value}" for name, value in WORKER_MALLOC.items()]
    kwargs["job_script_prologue"] = [*exports, *(line.replace(VENV_PLACEHOLDER, sys.prefix)
                                                 for line in kwargs.get("job_script_prologue")
                                                 or [])]
    if config["dft_slots"]:
        kwargs["worker_extra_args"] = [*(kwargs.get("worker_extra_args") or []),
                                       "--resources", f"{FINE_RESOURCE}={config['dft_slots']}"]
    return kwargs


def jobqueue_cluster(config_path: str | os.PathLike, quiet: bool = True):
    """Build a dask-jobqueue cluster from a YAML file and ask for its jobs.

    Keys: ``kind`` (slurm | pbs); ``cluster`` (keyword arguments of
    ``dask_jobqueue.SLURMCluster``/``PBSCluster``); ``jobs`` (a fixed number of batch jobs,
    default 1) or ``adapt: {minimum_jobs, maximum_jobs}``; ``dft_slots`` (fine calculations a
    worker process runs at once, default 1; 0 makes workers that never take fine calculations).
    Workers run the client's Python (dask-jobqueue's default ``python`` is ``sys.executable``);
    ``{venv}`` in ``cluster.job_script_prologue`` lines becomes the client's ``sys.prefix``.
    """
    config = read_jobqueue_config(config_path)
    try:
        cluster = _cluster_cls(config["kind"])(**cluster_kwargs(config))
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: scheduler start
        raise InputError(f"{config_path}: bad cluster settings ({_one_line(exc)})") from exc
    first_jobs = config["adapt"]["minimum_jobs"] if "adapt" in config else config["jobs"]
    try:
        # Submit now and wait for sbatch/qsub to answer (scale() would submit in the
        # background): a job the batch system rejects (partition, account, limits) stops the
        # command with its message, instead of a run that waits for workers forever.
        while len(cluster.worker_spec) < first_jobs:
            cluster.worker_spec.update(cluster.new_worker_spec())
        cluster.sync(cluster._correct_state)
    except RuntimeError as exc:
        for job in cluster.workers.values():
            if job.status == Status.created:  # never submitted; close() expects an end state
                job.status = Status.failed
        cluster.close()  # cancels the jobs that were accepted
        raise InputError(f"{config_path}: job submission failed ({_one_line(exc)})") from exc
    if "adapt" in config:
        cluster.adapt(**config["adapt"])
        scaling = "between {minimum_jobs} and {maximum_jobs} jobs as work arrives".format(
            **config["adapt"])
    else:
        scaling = f"{config['jobs']} job(s)"
    if not quiet:
        print(f"{type(cluster).__name__}: {scaling}; workers join as the batch system starts "
              "them", file=sys.stderr, flush=True)
    return cluster


def get_client(spec: str | None = None, n_workers: int | None = None, quiet: bool = False
               ) -> Client:
    """A Dask client for ``spec``.

    ``None`` (or ``"local"``) starts a LocalCluster sized to the machine; ``tcp://...`` or
    ``host:port`` connects to a running scheduler; a ``.yaml``/``.yml`` path starts a
    dask-jobqueue cluster (see :func:`jobqueue_cluster`). ``OAMLM_SCHEDULER`` supplies the
    spec when none is given. A cluster started here is shut down when the client closes.
    The dashboard link is printed so the run can be watched.
    """
    spec = spec or os.environ.get("OAMLM_SCHEDULER") or "local"
    if spec == "local":
        client = _OwningClient(local_cluster(n_workers))
    elif spec.endswith((".yaml", ".yml")):
        client = _OwningClient(jobqueue_cluster(spec, quiet=quiet))
    else:
        try:
            client = Client(spec, timeout="30s")
        except OSError as exc:
            raise InputError(f"cannot reach Dask scheduler at {spec} ({exc})") from exc
    if not quiet:
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
    return client


# ---- helpers -------------------------------------------------------------------------------

def _cluster_cls(kind: str):
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]


def _cluster_keywords(kind: str) -> tuple[str, ...]:
    """Keyword arguments the cluster class accepts (its own, its job class's and Job's)."""
    from dask_jobqueue.core import Job

    cls = _cluster_cls(kind)
    names: set[str] = set()
    for func in (cls.__init__, cls.job_cls.__init__, Job.__init__):
        names.update(name for name, p in inspect.signature(func).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    # Set by the cluster itself, or by this module from other keys.
    return tuple(sorted(names - {"self", "scheduler", "name", "job_cls", "n_workers",
                                 "asynchronous", "loop"}))


def _reject_unknown(path: Path, prefix: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else (
                f" (allowed: {', '.join(allowed)})" if len(allowed) <= 8 else "")
            raise InputError(f"{path}: unknown key {prefix}{key}{hint}")


def _one_line(exc: BaseException) -> str:
    """The gist of an exception: for a failed sbatch/qsub, the batch system's own words."""
    text = str(exc)
    if "stderr:" in text:  # dask-jobqueue's message: command, exit code, stdout, stderr
        text = text.split("stderr:", 1)[1]
    return " ".join(text.split())


def _count(path: Path, key: str, value, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{path}: {key} must be a whole number >= {least}, got {value!r}")
    return value
