"""Throughput of the ``describe`` stage on 1, 2 and 4 local Dask workers.

A synthetic 1000-frame gold-thiolate trajectory with random forces -- the rattled
Au38(SCH3)24 cluster, 158 atoms a frame (``--system au38``, the default), or rattled
Au_n(SCH3)_n rings, n = 5..8, about 40 atoms a frame (``--system rings``) -- is written to a
fresh store, split into a few segments. For each worker count a ``local_cluster(n)`` and its
Client are started first (start-up reported separately, not timed with the stage); then
:func:`oamlm_dist.describe.describe` runs on a fresh copy of the store, so every run computes
the full descriptor set. Peers, measured in the same process and run:

* ``dscribe_create``: ``SOAP(...).create(frames, n_jobs=1)`` on every atom of every frame --
  the pure DScribe cost;
* ``describe_frames``: our per-frame path in memory (atom classes, neighbourhoods, SOAP rows),
  no store and no Dask;
* ``serial_blocks``: ``describe_block`` called block after block in this process -- the same
  work as one Dask task each, with the store reads and writes, but no Dask. Its tasks' own
  timings give the per-block profile (reading frames, computing and writing rows, marker);
* ``process_pool`` (per worker count ``n``): the same blocks on ``n`` OS processes without Dask,
  so that ``efficiency_vs_process_pool`` (its wall time over Dask's) is Dask's own overhead,
  apart from what ``n`` busy cores cost each other (memory bandwidth, shared caches).

Efficiency of ``n`` workers is ``rate_n / (n * rate_peer)``. Since the machine may be shared,
CPU time is recorded too: the peers' process time and the Dask workers' (and scheduler's)
process CPU per run; ``cpu_efficiency_vs_<peer>`` is the peer's CPU time over the workers',
the share of the workers' CPU that the peer's work would need. The project's goal is an
efficiency of at least 0.9 against the single-process peer for ``n`` up to the core count;
larger ``n`` oversubscribes the machine and is reported without a goal. Each measurement is
repeated and the best wall time is used (the machine may be shared: the load average at start
and end is recorded). The last printed line is one JSON object.

The default block of 250 frames (one per segment: 4 tasks, 2 per worker at the core count)
keeps a block's fixed cost (opening the store, reading the frames, the done-marker, the task's
round trip: about 20-30 ms) small against its SOAP time: about 1.2 s for Au38 blocks (39 500
rows, 320 MB of float32 rows), 0.25 s for ring blocks (9800 rows, 80 MB). On rings the whole
run is under a second, so the stage's fixed cost per run (about 0.1 s: preparing the set,
scheduling, gathering) and writing the rows (which ``dscribe_create`` does not do) weigh more.

Usage: ``python benchmarks/describe_throughput.py [--frames 1000 --block-frames 250 ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

# Serial numerics everywhere: the parallelism is the Dask workers (inherited by them).
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np
import psutil
from ase.calculators.singlepoint import SinglePointCalculator
from distributed import Client, get_task_stream

from oamlm_dist.cluster import local_cluster
from oamlm_dist.describe import (
    DescriptorSpec,
    describe,
    describe_block,
    describe_frames,
    load_class_rows,
    plan_blocks,
    prepare_set,
)
from oamlm_dist.descriptors import SoapSettings, make_soap
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold38_thiolate, gold_thiolate_ring, rattle

SCHEME = "thiolate"
NEIGHBOURS = 4
TARGET_EFFICIENCY = 0.9


RING_SIZES = range(5, 9)
SYSTEMS = {
    "rings": f"rattled Au_n(SCH3)_n rings, n={RING_SIZES.start}..{RING_SIZES.stop - 1}",
    "au38": "rattled Au38(SCH3)24 (the relaxed cluster of oamlm_dist/data)",
}


def build_frames(system: str, n_frames: int, stdev: float, seed: int) -> list:
    """Rattled copies of ``system``'s structures with random forces (eV/Å) and energy."""
    rng = np.random.default_rng(seed)
    if system == "rings":
        structures = [gold_thiolate_ring(n) for n in RING_SIZES]
    else:
        structures = [gold38_thiolate()]
    frames = []
    for i in range(n_frames):
        atoms = rattle(structures[int(rng.integers(len(structures)))], stdev, seed + 1 + i)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()),
                                           forces=rng.normal(0.0, 1.0, size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


def write_store(path: Path, frames: list, n_segments: int) -> None:
    """A store holding ``frames`` in ``n_segments`` complete segments, in frame order."""
    store = Store.create(path)
    for seg_index, part in enumerate(np.array_split(np.arange(len(frames)), n_segments)):
        segment = store.new_segment("benchmark", {"source": f"synthetic part {seg_index}"})
        segment.append(FrameBatch.from_atoms([frames[i] for i in part]))
        segment.mark_complete()


def fresh_copy(template: Path, workdir: Path, label: str) -> Path:
    target = workdir / label
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    return target


def best_and_median(times: list[float]) -> dict:
    return {"wall_s": min(times), "wall_s_median": statistics.median(times),
            "wall_s_all": [round(t, 4) for t in times]}


def timed(func, *args, **kwargs) -> tuple[object, float, float]:
    """``func``'s result, wall time and this process's CPU time."""
    start, cpu = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu


def serial_blocks(store_path: Path, spec: DescriptorSpec) -> list[dict]:
    """Every block of the stage through ``describe_block``, one after another, no Dask."""
    store = Store.open(store_path, mode="a")
    name = prepare_set(store, spec)
    return [describe_block(str(store_path), name, segment, block)
            for segment, block in plan_blocks(store, spec.block_frames)]


def process_pool_blocks(pool: ProcessPoolExecutor, store_path: Path, spec: DescriptorSpec
                        ) -> None:
    """The stage's blocks as ``describe_block`` calls on a pool of OS processes: the same
    work and parallelism as the Dask workers, without Dask."""
    store = Store.open(store_path, mode="a")
    name = prepare_set(store, spec)
    pending = [pool.submit(describe_block, str(store_path), name, segment, block)
               for segment, block in plan_blocks(store, spec.block_frames)]
    for future in pending:
        future.result()


def block_profile(results: list[dict]) -> dict:
    """Mean wall time per block (ms) of the parts of ``describe_block``."""
    parts = ("read_s", "rows_s", "mark_s", "wall_s")
    return {part.replace("_s", "_ms"): round(1e3 * float(np.mean([r[part] for r in results])), 2)
            for part in parts}


def process_cpu() -> float:
    """User + system CPU seconds of this process so far (run on workers and scheduler)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def task_seconds(stream: list[dict]) -> float:
    """Summed compute time of the describe tasks in a task-stream record."""
    return sum(part["stop"] - part["start"] for task in stream
               if str(task.get("key", "")).startswith("describe-")
               for part in task.get("startstops", ()) if part.get("action") == "compute")


def warm_worker(_=None) -> int:
    """Import what a describe task needs, so start-up is not charged to the first block."""
    import oamlm_dist.describe  # noqa: F401

    return os.getpid()


def dscribe_in_worker(frames: list, settings: SoapSettings) -> tuple[float, float]:
    """Wall and CPU time of the ``dscribe_create`` peer inside a Dask worker, whose
    environment (allocator settings, event loop) differs from this process's."""
    soap = make_soap(settings)
    _, wall, cpu = timed(soap.create, frames, n_jobs=1)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="au38",
                        help="small rings (about 40 atoms per frame) or the Au38 cluster (158)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--block-frames", type=int, default=250)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stdev", type=float, default=0.05, help="rattle amplitude (Å)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    worker_counts = [int(n) for n in args.workers.split(",")]
    cpu_count = os.cpu_count() or 1
    load_start = os.getloadavg()
    t_begin = time.perf_counter()

    frames, t_build, _ = timed(build_frames, args.system, args.frames, args.stdev, args.seed)
    n_atoms = sum(len(a) for a in frames)
    workdir = Path(tempfile.mkdtemp(prefix="describe-throughput-"))
    try:
        template = workdir / "template"
        write_store(template, frames, args.segments)
        store = Store.open(template)
        species = tuple(store.elements())
        # What describe() builds from the store: default SOAP settings, species from the store.
        settings = replace(SoapSettings(), species=species)
        spec = DescriptorSpec(SCHEME, settings, NEIGHBOURS, None, args.block_frames)
        n_blocks = len(plan_blocks(store, args.block_frames))
        soap = make_soap(settings)
        print(f"{args.frames} frames, {n_atoms} atoms (rows), {args.segments} segments, "
              f"{n_blocks} blocks of {args.block_frames} frames; species {'+'.join(species)}, "
              f"{soap.get_number_of_features()} SOAP features; built in {t_build:.1f} s")
        print(f"cpu_count {cpu_count}, load average at start {load_start}")

        def run_peers(times: dict[str, list[float]], cpu: dict[str, list[float]],
                      profiles: list[dict], keep_rows: bool) -> dict | None:
            kept = None
            for _ in range(args.repeats):
                X, t, c = timed(soap.create, frames, n_jobs=1)
                assert sum(len(x) for x in X) == n_atoms
                del X
                times["dscribe_create"].append(t)
                cpu["dscribe_create"].append(c)
                rows, t, c = timed(describe_frames, frames, spec)
                assert sum(len(r["atom"]) for r in rows.values()) == n_atoms
                if keep_rows and kept is None:
                    kept = rows
                del rows
                times["describe_frames"].append(t)
                cpu["describe_frames"].append(c)
                path = fresh_copy(template, workdir, "serial")
                blocks, t, c = timed(serial_blocks, path, spec)
                times["serial_blocks"].append(t)
                cpu["serial_blocks"].append(c)
                profiles.append(block_profile(blocks))
                shutil.rmtree(path)
            return kept

        peer_names = ("dscribe_create", "describe_frames", "serial_blocks")
        peer_times: dict[str, list[float]] = {k: [] for k in peer_names}
        peer_cpu: dict[str, list[float]] = {k: [] for k in peer_names}
        profiles: list[dict] = []
        reference_rows = run_peers(peer_times, peer_cpu, profiles, keep_rows=True)
        for key, times in peer_times.items():
            print(f"peer {key:16s} best {min(times):7.2f} s  "
                  f"{n_atoms / min(times):9.0f} rows/s  (runs {[round(t, 2) for t in times]}, "
                  f"CPU {[round(c, 2) for c in peer_cpu[key]]} s)")

        results = {}
        rows_check = None
        for n in worker_counts:
            t0 = time.perf_counter()
            cluster = local_cluster(n)
            client = Client(cluster)
            client.wait_for_workers(n)
            t_start = time.perf_counter() - t0
            _, t_warm, _ = timed(client.run, warm_worker)
            walls, busy, worker_cpu, scheduler_cpu, in_worker = [], [], [], [], []
            remote_frames = client.scatter(frames)
            try:
                for repeat in range(args.repeats):
                    in_worker.append(client.submit(dscribe_in_worker, remote_frames, settings,
                                                   pure=False).result())
                    path = fresh_copy(template, workdir, f"w{n}-r{repeat}")
                    cpu_before = client.run(process_cpu)
                    scheduler_before = client.run_on_scheduler(process_cpu)
                    # The stage's progress bar is part of the cost; its text is not shown.
                    with (contextlib.redirect_stdout(io.StringIO()),
                          get_task_stream(client) as stream):
                        summary, t, _ = timed(describe, path, SCHEME, settings, client,
                                              neighbours=NEIGHBOURS,
                                              block_frames=args.block_frames)
                    cpu_after = client.run(process_cpu)
                    scheduler_cpu.append(client.run_on_scheduler(process_cpu)
                                         - scheduler_before)
                    worker_cpu.append(sum(cpu_after[w] - cpu_before[w] for w in cpu_after))
                    walls.append(t)
                    busy.append(task_seconds(stream.data))
                    if sum(summary["rows"].values()) != n_atoms:
                        raise RuntimeError(f"describe wrote {summary['rows']} rows, "
                                           f"expected {n_atoms}")
                    if summary["set"] != spec.name:
                        raise RuntimeError("describe built another descriptor set than the "
                                           "peers")
                    if rows_check is None:
                        stored = Store.open(path)
                        diffs = [float(np.max(np.abs(
                            load_class_rows(stored, summary["set"], cls, ("X",))["X"]
                            - reference_rows[cls]["X"]))) for cls in reference_rows]
                        rows_check = max(diffs)
                        reference_rows = None
                    shutil.rmtree(path)
            finally:
                client.close()
                cluster.close()
            pool_walls = []
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(warm_worker, range(n)))
                for repeat in range(args.repeats):
                    path = fresh_copy(template, workdir, f"p{n}-r{repeat}")
                    _, t, _ = timed(process_pool_blocks, pool, path, spec)
                    pool_walls.append(t)
                    shutil.rmtree(path)
            best = int(np.argmin(walls))
            results[n] = {"process_pool_s": min(pool_walls),
                          "cluster_start_s": t_start, "worker_warmup_s": t_warm,
                          "task_s": busy[best], "worker_cpu_s": min(worker_cpu),
                          "scheduler_cpu_s": scheduler_cpu[best],
                          "dscribe_in_worker_s": min(w for w, _ in in_worker),
                          "dscribe_in_worker_cpu_s": min(c for _, c in in_worker),
                          **best_and_median(walls)}
            print(f"{n} worker(s): start-up {t_start:.2f} s (+{t_warm:.2f} s imports), "
                  f"describe best {min(walls):.2f} s, {n_atoms / min(walls):.0f} rows/s "
                  f"(runs {[round(t, 2) for t in walls]}; worker CPU "
                  f"{[round(c, 2) for c in worker_cpu]} s)")

        # Peers again after the Dask runs, so load drift affects both sides alike.
        run_peers(peer_times, peer_cpu, profiles, keep_rows=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    peers = {}
    for key, times in peer_times.items():
        peers[key] = {**best_and_median(times), "rows_per_s": n_atoms / min(times),
                      "cpu_s": min(peer_cpu[key])}
    print("peers after the Dask runs: " + ", ".join(
        f"{k} {[round(t, 2) for t in v[args.repeats:]]} s" for k, v in peer_times.items()))

    workers_json = {}
    for n, res in results.items():
        rate = n_atoms / res["wall_s"]
        entry = {
            "cluster_start_s": round(res["cluster_start_s"], 3),
            "worker_warmup_s": round(res["worker_warmup_s"], 3),
            "wall_s": round(res["wall_s"], 4),
            "wall_s_median": round(res["wall_s_median"], 4),
            "wall_s_all": res["wall_s_all"],
            "rows_per_s": round(rate, 1),
            # Summed time inside the tasks, and its share of n workers x wall: the rest is
            # Dask (scheduling, transfers, idle tail) and the client's submit/gather.
            "task_compute_s": round(res["task_s"], 4),
            "worker_busy_fraction": round(res["task_s"] / (n * res["wall_s"]), 3),
            # CPU of all workers over the run (best repeat) and of the scheduler.
            "worker_cpu_s": round(res["worker_cpu_s"], 4),
            "scheduler_cpu_s": round(res["scheduler_cpu_s"], 4),
            # The dscribe_create peer run as a task on a worker of this cluster.
            "dscribe_create_in_worker_s": round(res["dscribe_in_worker_s"], 4),
            "dscribe_create_in_worker_cpu_s": round(res["dscribe_in_worker_cpu_s"], 4),
            "oversubscribed": n > cpu_count,
            "goal_applies": n <= cpu_count,
        }
        for key in peers:
            entry[f"efficiency_vs_{key}"] = round(rate / (n * peers[key]["rows_per_s"]), 3)
        # n OS processes doing the same blocks: what is left is Dask's own overhead.
        entry["process_pool_wall_s"] = round(res["process_pool_s"], 4)
        entry["efficiency_vs_process_pool"] = round(res["process_pool_s"] / res["wall_s"], 3)
        for key in peers:
            entry[f"cpu_efficiency_vs_{key}"] = round(peers[key]["cpu_s"] / res["worker_cpu_s"],
                                                      3)
        workers_json[str(n)] = entry
        print(f"{n} worker(s): {rate:9.0f} rows/s; efficiency vs dscribe_create "
              f"{entry['efficiency_vs_dscribe_create']:.2f}, vs describe_frames "
              f"{entry['efficiency_vs_describe_frames']:.2f}, vs serial_blocks "
              f"{entry['efficiency_vs_serial_blocks']:.2f}; CPU efficiency vs dscribe_create "
              f"{entry['cpu_efficiency_vs_dscribe_create']:.2f}; vs {n} processes without Dask "
              f"{entry['efficiency_vs_process_pool']:.2f}; tasks busy "
              f"{entry['worker_busy_fraction']:.2f} of {n} x wall"
              + ("  (oversubscribed)" if n > cpu_count else ""))

    in_goal = [w for n, w in zip(results, workers_json.values(), strict=True) if n <= cpu_count]
    goal = {"target_efficiency": TARGET_EFFICIENCY, "applies_to_workers_up_to": cpu_count}
    for key in (*peers, "process_pool"):
        goal[f"met_vs_{key}"] = bool(in_goal) and all(
            w[f"efficiency_vs_{key}"] >= TARGET_EFFICIENCY for w in in_goal)
    load_end = os.getloadavg()
    total = time.perf_counter() - t_begin
    print(f"stored rows vs in-process rows: max |dX| = {rows_check}; load average at end "
          f"{load_end}; total {total:.0f} s")

    report = {
        "benchmark": "describe_throughput",
        "frames": args.frames,
        "frames_reduced": args.frames < 1000,
        "system": args.system,
        "structures": f"{SYSTEMS[args.system]}, stdev {args.stdev} Å, random forces",
        "rows": n_atoms,
        "segments": args.segments,
        "block_frames": args.block_frames,
        "blocks": n_blocks,
        "scheme": SCHEME,
        "soap": settings.to_dict(),
        "n_features": soap.get_number_of_features(),
        "repeats": args.repeats,
        "statistic": "best wall time of the repeats (peers: before and after the Dask runs)",
        "cpu_count": cpu_count,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "peers": {k: {"wall_s": round(v["wall_s"], 4),
                      "wall_s_median": round(v["wall_s_median"], 4),
                      "wall_s_all": v["wall_s_all"], "rows_per_s": round(v["rows_per_s"], 1),
                      "cpu_s": round(v["cpu_s"], 4)}
                  for k, v in peers.items()},
        # Per block of serial_blocks (best repeat by wall): reading frames, computing and
        # writing the rows, writing the done-marker, whole task.
        "serial_block_profile_ms": min(profiles, key=lambda p: p["wall_ms"]),
        "workers": workers_json,
        "goal": goal,
        "stored_rows_max_abs_diff_vs_in_process": rows_check,
        "total_runtime_s": round(total, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
