"""Deployment routes end to end: the CLI against a standalone ``dask scheduler`` with separate
worker processes, and against workers submitted as SLURM jobs from ``deploy/slurm.yaml`` (a real
single-node SLURM started by ``deploy/local-slurm/start.sh``); plus the YAML checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.calculators.singlepoint import SinglePointCalculator

from oamlm_dist.cli import main
from oamlm_dist.cluster import _cluster_cls, cluster_kwargs, read_jobqueue_config
from oamlm_dist.describe import DescriptorSpec, describe_frames, load_class_rows
from oamlm_dist.errors import InputError
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold_thiolate_ring, rattle

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
# The venv's own entry points, found next to the interpreter running the tests.
BIN = Path(sys.executable).parent
N_FRAMES, BLOCK_FRAMES = 6, 2
N_BLOCKS = N_FRAMES // BLOCK_FRAMES


def make_store(path: Path) -> Store:
    store = Store.create(path)
    segment = store.new_segment("ingest", {})
    frames = []
    for i in range(N_FRAMES):
        atoms = rattle(gold_thiolate_ring(5), 0.03, seed=i)
        atoms.calc = SinglePointCalculator(atoms, forces=np.ones((len(atoms), 3)))
        frames.append(atoms)
    segment.append(FrameBatch.from_atoms(frames))
    segment.mark_complete()
    return store


def run_describe(store: Store, scheduler: str, timeout: float) -> dict:
    """``oamlm-dist describe`` as a user runs it; returns its JSON summary."""
    cmd = [str(BIN / "oamlm-dist"), "describe", str(store.path), "--scheduler", scheduler,
           "--soap", "n_max=2,l_max=1", "--block-frames", str(BLOCK_FRAMES)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"describe failed:\n{proc.stdout}\n{proc.stderr}"
    assert "dask dashboard:" in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_rows_landed(store: Store, summary: dict) -> None:
    """Every block was computed remotely and the stored rows equal an in-process computation."""
    assert summary["blocks_computed"] == N_BLOCKS
    spec = DescriptorSpec.from_dict(store.group(f"classes/{summary['set']}").attrs["spec"])
    frames = store.segment(0).read()
    expected = describe_frames(frames, spec, [(0, i) for i in range(len(frames))])
    assert set(summary["rows"]) == set(expected)
    for cls, fields in expected.items():
        rows = load_class_rows(store, summary["set"], cls)
        assert summary["rows"][cls] == len(rows["atom"]) == len(fields["atom"]) > 0
        assert set(rows["frame"].tolist()) == set(range(N_FRAMES))
        assert np.array_equal(rows["X"], fields["X"])


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM all at once (each shuts down gracefully in parallel), SIGKILL stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the YAML files --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["slurm.yaml", "pbs.yaml"])
def test_deploy_configs_render_job_scripts(name, tmp_path):
    config = read_jobqueue_config(DEPLOY / name)
    assert config["dft_slots"] == 1 and config["jobs"] >= 1
    kwargs = cluster_kwargs(config)
    # The site's interface and log directory do not exist here; everything else is as shipped.
    kwargs.update(interface="lo", log_directory=str(tmp_path / "logs"),
                  scheduler_options={"dashboard_address": ":0"})
    cluster = _cluster_cls(config["kind"])(**kwargs)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"source {sys.prefix}/bin/activate" in script
    assert "OMP_NUM_THREADS=1" in script
    assert f"export MALLOC_MMAP_THRESHOLD_={32 << 20}" in script
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    assert "--resources dft=1" in script and "--nthreads 1" in script


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("config, message", [
    ({"kind": "slurm", "cluster": {"cores": 1}, "job": 2}, "unknown key job (did you mean jobs?)"),
    ({"kind": "slurm", "cluster": {"cores": 1, "memroy": "1GB"}}, "did you mean cluster.memory"),
    ({"kind": "lsf", "cluster": {}}, "kind must be one of"),
    ({"kind": "slurm", "cluster": {}, "jobs": 2, "adapt": {"maximum_jobs": 3}}, "not both"),
    ({"kind": "slurm", "cluster": {}, "adapt": {"maximum": 3}},
     "unknown key adapt.maximum (did you mean adapt.maximum_jobs?)"),
    ({"kind": "slurm", "cluster": {}, "adapt": {"minimum_jobs": 4, "maximum_jobs": 3}},
     "exceeds"),
    ({"kind": "slurm", "cluster": {}, "jobs": 0}, "jobs must be a whole number >= 1"),
    ({"kind": "slurm", "cluster": {}, "dft_slots": "one"}, "dft_slots must be a whole number"),
    ({"kind": "slurm", "cluster": {"worker_extra_args": ["--resources", "dft=2"]}},
     "set dft_slots instead"),
])
def test_bad_config_is_one_line_input_error(tmp_path, config, message):
    path = write_config(tmp_path / "c.yaml", config)
    with pytest.raises(InputError, match="c.yaml") as info:
        read_jobqueue_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_adapt_and_dft_slots(tmp_path):
    path = write_config(tmp_path / "c.yaml", {
        "kind": "pbs", "cluster": {"cores": 4, "memory": "8GB"},
        "adapt": {"maximum_jobs": 5}, "dft_slots": 0})
    config = read_jobqueue_config(path)
    assert config["adapt"] == {"minimum_jobs": 0, "maximum_jobs": 5} and "jobs" not in config
    assert "worker_extra_args" not in cluster_kwargs(config)  # dft_slots 0: no dft resource


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr")
    path = write_config(tmp_path / "c.yaml", {"kind": "slurm", "cluster": {"coers": 2}})
    assert main(["describe", str(store.path), "--scheduler", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean cluster.cores" in err


# ---- a standalone scheduler with separate worker processes -------------------------------------

def _executed_describe_keys(dask_worker) -> list[str]:
    """Keys of describe tasks this worker executed (its transition log: key, start, finish...)."""
    return sorted({str(entry[0]) for entry in dask_worker.state.log
                   if len(entry) > 3 and entry[1] == "executing" and entry[2] == "memory"
                   and str(entry[0]).startswith("describe-")})


@pytest.fixture
def scheduler_and_two_workers(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; yields the scheduler
    file. The processes are stopped afterwards whatever happens."""
    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=log,
                                          stderr=subprocess.STDOUT))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
              "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.stat().st_size:
            assert procs[0].poll() is None, (logs / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not write its file"
            time.sleep(0.2)
        for i in range(2):
            start(f"worker{i}", "worker", "--scheduler-file", str(scheduler_file),
                  "--nthreads", "1", "--resources", "dft=1", "--host", "127.0.0.1",
                  "--no-dashboard", "--name", f"w{i}",
                  "--local-directory", str(tmp_path / f"w{i}"))
        yield scheduler_file
    finally:
        stop_processes(procs[1:])  # workers first, so they do not wait for a lost scheduler
        stop_processes(procs[:1])


def test_describe_against_running_scheduler(tmp_path, scheduler_and_two_workers):
    import cloudpickle
    from distributed import Client

    store = make_store(tmp_path / "s.zarr")
    with Client(scheduler_file=str(scheduler_and_two_workers), timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
        address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        assert {w["resources"].get("dft") for w in client.scheduler_info(n_workers=-1)
                ["workers"].values()} == {1}

        summary = run_describe(store, address, timeout=120)

        # Workers cannot import this test module: send the function itself.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            executed = client.run(_executed_describe_keys)
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert_rows_landed(store, summary)
    assert len(executed) == 2 and all(executed.values()), executed  # both workers ran blocks
    all_keys = [key for keys in executed.values() for key in keys]
    assert len(all_keys) == len(set(all_keys)) == N_BLOCKS


# ---- workers as SLURM jobs ---------------------------------------------------------------------

def slurm_answers() -> bool:
    """A controller answers and has a usable node."""
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


def slurm_test_config(tmp_path: Path, job_name: str) -> dict:
    """deploy/slurm.yaml sized for one small node: two 1-core jobs on 127.0.0.1."""
    config = yaml.safe_load((DEPLOY / "slurm.yaml").read_text())
    cluster = config["cluster"]
    for site_specific in ("queue", "account"):  # the local cluster's default partition
        cluster.pop(site_specific)
    cluster.update(
        cores=1, processes=1,
        memory="1GB",  # --mem must stay below the node's RealMemory (>= 1024 MB) or it drains
        walltime="00:10:00", interface="lo", job_name=job_name,
        log_directory=str(tmp_path / "slurm-logs"),
        local_directory=str(tmp_path / "worker-scratch"),
        python=sys.executable,
        job_script_prologue=[line for line in cluster["job_script_prologue"]
                             if not line.startswith("module ")],  # no modules here
        scheduler_options={"dashboard_address": "127.0.0.1:0"},
    )
    config["jobs"] = 2
    return config


def job_ids(log_dir: Path, job_name: str) -> list[str]:
    return sorted(p.name[len(job_name) + 1:-len(".err")]
                  for p in log_dir.glob(f"{job_name}-*.err")) if log_dir.exists() else []


@pytest.mark.slow
def test_describe_on_slurm_jobs(tmp_path):
    installed = all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))
    started = False
    if not slurm_answers():
        if os.geteuid() != 0:
            pytest.skip("no SLURM running, and deploy/local-slurm/start.sh needs root")
        if not installed and not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and apt-get is unavailable to install it")
        started = True
        start = subprocess.run([str(DEPLOY / "local-slurm" / "start.sh")], capture_output=True,
                               text=True, timeout=300)
        assert start.returncode == 0, f"start.sh failed:\n{start.stdout}\n{start.stderr}"
    job_name = f"oamlm-test-{os.getpid()}"
    log_dir = tmp_path / "slurm-logs"
    try:
        store = make_store(tmp_path / "s.zarr")
        # A job the batch system refuses ends the command at once, with sbatch's own words.
        refused = slurm_test_config(tmp_path, job_name)
        refused["cluster"]["queue"] = "no-such-partition"
        proc = subprocess.run([str(BIN / "oamlm-dist"), "describe", str(store.path),
                               "--scheduler", str(write_config(tmp_path / "bad.yaml", refused))],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "invalid partition" in proc.stderr

        config = write_config(tmp_path / "slurm-test.yaml", slurm_test_config(tmp_path, job_name))
        summary = run_describe(store, str(config), timeout=150)
        assert_rows_landed(store, summary)

        ids = job_ids(log_dir, job_name)
        assert len(ids) == 2, sorted(p.name for p in log_dir.iterdir())
        for job in ids:
            worker_log = (log_dir / f"{job_name}-{job}.err").read_text()
            assert "Registered to:" in worker_log and "tcp://127.0.0.1:" in worker_log
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True,
                                   text=True, timeout=10).stdout
            assert f"JobName={job_name}" in shown, shown
        # The command's cluster cancels its jobs when it ends: none is left in the queue.
        left = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True,
                              text=True, timeout=10).stdout.split()
        assert not left, f"jobs still queued: {left}"
    finally:
        ids = job_ids(log_dir, job_name)
        if ids and shutil.which("scancel"):
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        if started:
            subprocess.run([str(DEPLOY / "local-slurm" / "stop.sh")], capture_output=True,
                           timeout=120)


def test_local_workers_get_a_fixed_mmap_threshold(dask_client):
    """The workers' glibc serves mid-sized arrays from the heap; Dask's trim setting stays."""
    import dask

    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    environ = dask_client.run(lambda: {name: os.environ.get(name) for name in names})
    trim = dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]
    assert len(environ) == 2
    for values in environ.values():
        assert values == {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                          "MALLOC_TRIM_THRESHOLD_": str(trim)}
