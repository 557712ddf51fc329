"""Scale: 10^6 synthetic atomic environments per class through describe-like writes,
RS-maximin and ``fit`` (K = 2500) on 2 cores: wall time per phase and peak memory.

The reliability goal: a store of 10^6 environments per class (generated, not computed by
DFT) goes through the describe writes, RS-maximin and ``fit`` with K = 2500 with memory
below 8 GiB on 2 cores.

Data
----
A fresh store (``--store``, replaced if present) with the element scheme for a hydrocarbon
chemistry: classes H and C, SOAP r_cut = 3 Å, n_max = 6, l_max = 1, sigma = 0.25 for species
C, H (the alkane setting, 156 features), M = 4 neighbours. Frame segments are created with
``Store.new_segment`` (``--blocks-per-segment`` describe blocks each; every segment holds
``--segment-frames`` tiny rattled propane frames, so it is a real, complete segment that
``fit``'s segment selection sees). The frames behind the rows are not stored (10^6
environments per class would be about 10^4 frames of 100 C + 100 H): a block's rows carry
segment, frame and atom ids of the frames block ``b`` of the segment would have, which only
bookkeeping reads.

The descriptor set is made by :func:`~oamlm_dist.describe.prepare_set`; then every describe
block (``--block-rows`` rows per class, default 10^4) is one Dask task on a ``local_cluster``
of ``--workers`` single-threaded workers (default 2), which generates the block's rows
deterministically from ``(--seed, class, segment, block)`` and writes them through the
describe stage's own writer (``describe._BlockWriter``: ``start`` with the non-SOAP fields,
``X`` streamed with ``add_rows`` in pieces of 2048 rows, ``finish``), then its done-marker with
``store.mark_done("describe/<set>", key, {"rows": ..., "frames": ...})``, as
``describe_block`` does. Rows per block:

* ``P``, ``Z``: CH3-C and CH2-C2 carbons (40/60 %), bond lengths C-H 1.09 Å and C-C 1.53 Å
  with 0.04 Å noise, tetrahedral directions with ~5° noise, randomly rotated. A C row holds
  the 4 vertices of its tetrahedron; an H row is centred on an H vertex: its C (1.09 Å),
  the geminal H (1.78 Å) and the other vertices (C at 2.15 Å); nearest first, all within
  1.0-2.6 Å, Z consistent with the element scheme's 24 permutations.
* ``Y``, ``norm``: restoring bond forces (20 eV/Å² times the bond stretch) plus 0.4 eV/Å
  noise, as a unit direction and its norm.
* ``X`` (float32): SOAP-shaped, non-negative, correlated: per class and carbon type a
  positive mean spectrum times ``exp`` of a 16-dimensional latent factor model (decaying
  loadings; four of the factors are the row's neighbour distances), plus a little positive
  noise. Rows thus lie near a low-dimensional curved manifold, so farthest-first traversal
  has real structure to find (unlike uniform noise, where every pick is alike).

Fit
---
``fit`` with ``FitSettings(references=K, train_rows="references")`` (N = K, the sources'
protocol): per class, reading the class's rows and min-max scaling (client), RS-maximin over
all rows of the class (client; ``--pool-size`` optional), then the training blocks (Dask;
with ``train_rows="references"`` a block aligns only its reference rows, but still reads its
describe block and loads the class model), the normal equations per block and their tree
sum (K x (2K + 1) per block: 150 MB at K = 2500), and the EMLM/OAMLM solves. Phases are
timed by wrapping ``training.choose_references`` and ``training.rs_maximin`` in this process
(timing only) and from the scheduler's task stream (``fit-*`` training blocks,
``block_equations``/``merge_equations``, ``solve-*``).

A full-row fit (``train_rows="all"``) is not run by default. Its cost was measured with this
script's probe (below) at K = 2500 on the shared 2-core development machine (one BLAS
thread): per row of a training block 1.4-1.8 ms of CPU for the alignment against the 2500
references over 24 permutations (1.4-1.8·10^6 pair alignments per CPU second, with
pruning), 1.7-2.0 ms for D_in, D_c and D_g in all, and 0.85 ms for the row's share of the
normal equations (about 4·10^7 flops per row at K = 2500): about 2.7 ms per row. At 10^6
rows per class that is 2·10^6 x 2.7 ms = 5400 CPU s, about 45 min on 2 workers, against a
few minutes for N = K; and each training block stores its D_in, D_c and D_g (20 kB per row
and matrix: 120 GB for 2·10^6 rows), while a 10^4-row block task holds about 2.2 GiB at once
(the rotations R are n x K x 3 x 3 float64). Hence the N = K protocol by default. Every run
re-measures these per-row costs on ``--probe-rows`` rows per class (after the fit, in this
process) and prints the extrapolation to ``--rows``; ``--all-rows-fraction F`` runs a real
``train_rows="all"`` fit on the first F of the segments (0.01 at 10^6 rows: one 10^4-row
block per class, under a minute of CPU per class) to check it (at 2·10^4 rows and K = 500
the real fit's worker CPU per row was within 25 % of the probe's figure).

``fit`` picks the references in this (the client's) process, whose BLAS thread pool is left
as ``oamlm-dist fit`` leaves it unless ``--client-blas-threads`` is given; the workers run
one BLAS thread each (Dask's nanny default).

Memory
------
A background thread samples the RSS (psutil) of this process (client, scheduler, nannies)
and of all its descendants (the worker processes) every ``--sample-interval`` s (0.2):
per-process peaks, the peak of their simultaneous sum, and both per phase. At the end the
kernel's exact high-water marks are read too: ``ru_maxrss`` of this process and ``VmHWM``
of every worker; their sum bounds the total from above (the processes need not peak at the
same time). ``memory_goal_met`` is the sampled simultaneous peak < 8 GiB over the goal's
pipeline (set-up, writes, the N = K fit; not the probe or the optional full-row fit);
``memory_goal_met_hwm_bound`` the stricter bound (over the whole run). The store's size on
disk (allocated blocks) is reported per top-level group.

Progress bars go to stderr; stdout gets human-readable lines, then one JSON object (last).

Usage: ``python benchmarks/scale.py [--rows 1000000] [--references 2500] [--workers 2]
[--block-rows 10000] [--all-rows-fraction 0] [--worker-memory-limit auto] [--store PATH]
[--keep] [--task-stream FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
from ase.calculators.singlepoint import SinglePointCalculator
from distributed import Client, get_task_stream, progress
from machine import cpu_model  # benchmarks/machine.py, next to this script
from threadpoolctl import threadpool_limits

import oamlm_dist.training as training
from oamlm_dist.cluster import local_cluster
from oamlm_dist.describe import (
    STAGE,
    DescriptorSpec,
    _BlockWriter,
    block_key,
    class_row_counts,
    done_blocks,
    prepare_set,
    read_block,
)
from oamlm_dist.descriptors import SoapSettings, make_soap
from oamlm_dist.models.class_model import align_to_references
from oamlm_dist.store import FrameBatch, Store, task_token
from oamlm_dist.structures import alkane, rattle
from oamlm_dist.training import (
    FitSettings,
    equations_of,
    fit,
    load_class_model,
    training_matrices,
)

GIB = 2**30
SOAP = SoapSettings(r_cut=3.0, n_max=6, l_max=1, sigma=0.25, species=("C", "H"))
NEIGHBOURS = 4
MEMORY_GOAL = 8 * GIB
# Sampler phases of the goal's pipeline (the probe and the full-row fit come after it).
GOAL_PHASES = ("setup", "cluster_start", "write", "fit_prepare", "fit_references", "fit_tasks")

C_H, C_C = 1.09, 1.53  # Å
BOND_NOISE = 0.04  # Å
ANGLE_NOISE = 0.08  # rad-ish, on unit directions
FORCE_CONSTANT = 20.0  # eV/Å^2
FORCE_NOISE = 0.4  # eV/Å
LATENT = 16
X_CHUNK = 2048  # rows of X generated and streamed at once
_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)


# ---- synthetic rows (run inside the Dask tasks) --------------------------------------------

def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniformly random proper rotations."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q * np.sign(np.linalg.det(q))[:, None, None]


def neighbourhoods(rng: np.random.Generator, n: int, cls: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``P`` (n, 4, 3), ``Z`` (n, 4) int16, carbon type (n,: C neighbours of the carbon, 1
    or 2) and forces (n, 3) of alkane-like C or H environments, nearest neighbour first."""
    n_carbon = rng.choice([1, 2], p=[0.4, 0.6], size=n)
    z_vertex = np.where(np.arange(4) < 4 - n_carbon[:, None], 1, 6)  # H vertices first
    nominal = np.where(z_vertex == 1, C_H, C_C)
    length = nominal + rng.normal(0.0, BOND_NOISE, (n, 4))
    directions = _TETRAHEDRON + rng.normal(0.0, ANGLE_NOISE, (n, 4, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    directions = np.einsum("nkj,nij->nki", directions, _rotations(rng, n))
    vertices = directions * length[..., None]
    stretch = length - nominal
    if cls == "C":
        P, Z = vertices, z_vertex
        forces = FORCE_CONSTANT * np.einsum("nk,nki->ni", stretch, directions)
    else:  # centred on vertex 0, an H: its C, then the other vertices
        h = vertices[:, :1]
        P = np.concatenate([-h, vertices[:, 1:] - h], axis=1)
        Z = np.concatenate([np.full((n, 1), 6), z_vertex[:, 1:]], axis=1)
        forces = -FORCE_CONSTANT * stretch[:, :1] * directions[:, 0]
    forces = forces + rng.normal(0.0, FORCE_NOISE, (n, 3))
    order = np.argsort(np.linalg.norm(P, axis=-1), axis=1, kind="stable")
    P = np.take_along_axis(P, order[..., None], axis=1)
    Z = np.take_along_axis(Z, order, axis=1).astype(np.int16)
    return P, Z, n_carbon, forces


def soap_like_model(seed: int, class_index: int, n_features: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per class: positive mean spectra per carbon type (2, d) and latent loadings (r, d)."""
    rng = np.random.default_rng([seed, class_index, 7919])
    means = rng.gamma(2.0, 0.5, size=(2, n_features)) + 0.05
    decay = 0.75 ** np.arange(LATENT)
    loadings = rng.normal(size=(LATENT, n_features)) * (decay / np.linalg.norm(decay))[:, None]
    return means, loadings


def soap_like_rows(rng: np.random.Generator, means: np.ndarray, loadings: np.ndarray,
                   n_carbon: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Non-negative, correlated SOAP-like rows (float32) of environments of given type."""
    z = rng.standard_normal(size=(len(n_carbon), LATENT), dtype=np.float32)
    z[:, :4] = (distances - 1.5) / 0.3  # the geometry drives the leading factors
    rows = np.exp(z @ (0.6 * loadings).astype(np.float32))
    rows *= means.astype(np.float32)[n_carbon - 1]
    noise = rng.standard_normal(size=rows.shape, dtype=np.float32)
    rows += 0.02 * np.abs(noise, out=noise)
    return rows


def write_block(store_path: str, set_name: str, segment_id: int, block: int, rows: int,
                seed: int) -> dict:
    """Dask task: generate one describe block's rows of every class, write them with the
    describe stage's block writer, then the block's done-marker."""
    start = time.perf_counter()
    store = Store.open(store_path, mode="a")
    spec = DescriptorSpec.from_dict(store.root[f"classes/{set_name}"].attrs["spec"])
    n_features = make_soap(spec.soap).get_number_of_features()
    key = block_key(segment_id, block)
    per_frame = -(-rows // spec.block_frames)  # rows of a class per frame
    local = np.arange(rows)
    frame = (block * spec.block_frames + local // per_frame).astype(np.int32)
    fields, extra = {}, {}
    for class_index, cls in enumerate(spec.classes()):
        rng = np.random.default_rng([seed, class_index, segment_id, block])
        P, Z, n_carbon, forces = neighbourhoods(rng, rows, cls)
        norm = np.linalg.norm(forces, axis=1)
        atom = local % per_frame + class_index * per_frame  # a frame: its H, then its C
        fields[cls] = {"P": P, "Z": Z, "Y": forces / norm[:, None], "norm": norm,
                       "segment": np.full(rows, segment_id, dtype=np.int32), "frame": frame,
                       "atom": atom.astype(np.int32)}
        extra[cls] = (rng, soap_like_model(seed, class_index, n_features), n_carbon,
                      np.linalg.norm(P, axis=-1))
    generate = time.perf_counter() - start
    writer = _BlockWriter(store.path / "classes" / set_name, key)
    try:
        writer.start(fields, n_features)
        for cls, (rng, (means, loadings), n_carbon, distances) in extra.items():
            for lo in range(0, rows, X_CHUNK):
                t0 = time.perf_counter()
                X = soap_like_rows(rng, means, loadings, n_carbon[lo:lo + X_CHUNK],
                                   distances[lo:lo + X_CHUNK])
                generate += time.perf_counter() - t0
                writer.add_rows(cls, np.ascontiguousarray(X, dtype=np.float32))
        counts = writer.finish()
    finally:
        writer.close()
    t_mark = time.perf_counter()
    store.mark_done(f"{STAGE}/{set_name}", key,
                    {"rows": counts, "frames": int(frame[-1] - frame[0] + 1)})
    end = time.perf_counter()
    return {"key": key, "rows": counts, "wall_s": end - start, "generate_s": generate,
            "write_s": t_mark - start - generate, "mark_s": end - t_mark}


def make_segments(store: Store, n_segments: int, frames_each: int, seed: int) -> list[int]:
    """Complete segments of a few rattled propane frames (random forces)."""
    base = alkane(3)
    rng = np.random.default_rng(seed)
    ids = []
    for index in range(n_segments):
        frames = []
        for f in range(frames_each):
            atoms = rattle(base, 0.05, seed=seed * 100003 + index * 101 + f)
            atoms.calc = SinglePointCalculator(atoms, forces=rng.normal(0, 1, (len(atoms), 3)),
                                               energy=0.0)
            frames.append(atoms)
        segment = store.new_segment("synthetic", {"name": f"scale/{index:05d}"})
        segment.append(FrameBatch.from_atoms(frames))
        segment.mark_complete()
        ids.append(segment.id)
    return ids


# ---- measurement -------------------------------------------------------------------------

class MemorySampler:
    """RSS of this process and its descendants, sampled in a thread; peaks overall and per
    phase (``phase`` is set by the main thread)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.me = psutil.Process()
        self.workers: dict[int, str] = {}  # pid -> label
        self.phase = "setup"
        self.peak: dict[str, int] = {}
        self.phases: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        rss = {"client": _rss(self.me)}
        other = 0
        try:
            children = self.me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            value = _rss(child)
            label = self.workers.get(child.pid)
            if label:
                rss[label] = value
            else:
                other += value
        rss["other_children"] = other
        rss["total"] = sum(rss.values())
        phase = self.phases.setdefault(self.phase, {})
        for label, value in rss.items():
            self.peak[label] = max(self.peak.get(label, 0), value)
            phase[label] = max(phase.get(label, 0), value)
        self.samples += 1

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of this process and of each worker."""
        out = {"client": _cpu(self.me)}
        for pid, label in self.workers.items():
            try:
                out[label] = _cpu(psutil.Process(pid))
            except psutil.Error:
                out[label] = 0.0
        return out


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {label: after[label] - before.get(label, 0.0) for label in after}
    delta["workers"] = sum(v for k, v in delta.items() if k.startswith("worker"))
    return delta


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of a process (bytes), from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def disk_usage(path: Path) -> dict[str, int]:
    """Allocated bytes under each top-level entry of ``path`` and in all."""
    out: dict[str, int] = {}
    for entry in path.iterdir():
        total = 0
        if entry.is_dir():
            for root, _, files in os.walk(entry):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_blocks * 512
                    except OSError:
                        pass
        else:
            total = entry.lstat().st_blocks * 512
        out[entry.name] = total
    out["total"] = sum(out.values())
    return out


def task_kind(key) -> str:
    name = key if isinstance(key, str) else str(key[0])
    for prefix in ("fit-", "block_equations", "merge_equations", "solve-", "huber-"):
        if name.startswith(prefix):
            return prefix.rstrip("-")
    return "other"


def stream_summary(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per task kind: count, summed compute seconds, first start and last stop (epoch s)."""
    out: dict[str, dict[str, float]] = {}
    for task in records:
        for span in task.get("startstops", ()):
            if span["action"] != "compute":
                continue
            kind = out.setdefault(task_kind(task["key"]),
                                  {"tasks": 0, "busy_s": 0.0, "first": np.inf, "last": -np.inf})
            kind["tasks"] += 1
            kind["busy_s"] += span["stop"] - span["start"]
            kind["first"] = min(kind["first"], span["start"])
            kind["last"] = max(kind["last"], span["stop"])
    return out


class FitTimer:
    """Wraps ``training.choose_references`` and ``training.rs_maximin`` (looked up as module
    globals by ``training``) to time them; the calls themselves are unchanged."""

    def __init__(self, sampler: MemorySampler, phase_references: str, phase_after: str):
        self.sampler = sampler
        self.phase_references, self.phase_after = phase_references, phase_after
        self.references: list[tuple[float, float]] = []  # (start, stop) epoch s
        self.references_cpu_s = 0.0  # this process (all its threads)
        self.rs_maximin_s = 0.0
        self.rs_maximin_cpu_s = 0.0
        self._saved = None

    def __enter__(self) -> FitTimer:
        choose, maximin = training.choose_references, training.rs_maximin
        self._saved = (choose, maximin)

        def timed_choose(*args, **kwargs):
            self.sampler.phase = self.phase_references
            t0, c0 = time.time(), time.process_time()
            try:
                return choose(*args, **kwargs)
            finally:
                self.references.append((t0, time.time()))
                self.references_cpu_s += time.process_time() - c0
                self.sampler.phase = self.phase_after

        def timed_maximin(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return maximin(*args, **kwargs)
            finally:
                self.rs_maximin_s += time.perf_counter() - t0
                self.rs_maximin_cpu_s += time.process_time() - c0

        training.choose_references, training.rs_maximin = timed_choose, timed_maximin
        return self

    def __exit__(self, *exc) -> None:
        training.choose_references, training.rs_maximin = self._saved


def timed_fit(client: Client, store_path: Path, model: str, settings: FitSettings,
              sampler: MemorySampler, phase: str, stream_out: list | None = None) -> dict:
    """``fit`` with its phases timed (client-side wrappers and the task stream); memory is
    sampled as phases ``<phase>_prepare``, ``<phase>_references``, ``<phase>_tasks``."""
    sampler.phase = f"{phase}_prepare"
    cpu_before = sampler.cpu()
    start = time.time()
    with (FitTimer(sampler, f"{phase}_references", f"{phase}_tasks") as timer,
          get_task_stream(client) as stream, redirect_stdout(sys.stderr)):
        summary = fit(store_path, model, client, settings)
    end = time.time()
    cpu = cpu_delta(cpu_before, sampler.cpu())
    kinds = stream_summary(stream.data)
    if stream_out is not None:
        stream_out += [{"key": str(task["key"]), "worker": task.get("worker"),
                        "start": span["start"], "stop": span["stop"]}
                       for task in stream.data for span in task.get("startstops", ())
                       if span["action"] == "compute"]
    refs_end = max((stop for _, stop in timer.references), default=start)
    references_s = sum(stop - begin for begin, stop in timer.references)
    blocks = kinds.get("fit", {})
    blocks_end = blocks.get("last", refs_end) if blocks else refs_end
    solve_start = kinds["solve"]["first"] if "solve" in kinds else end
    return {
        "model": model,
        "classes": summary["classes"],
        "wall_s": end - start,
        "phases_s": {
            "before_references": (timer.references[0][0] - start) if timer.references else 0.0,
            "references": references_s,
            "references_rs_maximin": timer.rs_maximin_s,
            "references_read_and_scale": references_s - timer.rs_maximin_s,
            "training_blocks": blocks_end - refs_end,
            "equations": max(solve_start - blocks_end, 0.0),
            "solve": end - max(solve_start, blocks_end),
        },
        "cpu_s": {"references": timer.references_cpu_s,
                  "references_rs_maximin": timer.rs_maximin_cpu_s,
                  "client": cpu["client"], "workers": cpu["workers"]},
        "tasks": {kind: {"tasks": int(v["tasks"]), "busy_s": v["busy_s"],
                         "span_s": v["last"] - v["first"]} for kind, v in kinds.items()},
    }


def probe_row_costs(store: Store, model: str, set_name: str, n_rows: int) -> dict:
    """CPU seconds per row of a full-row training block, measured in this process on
    ``n_rows`` rows of each class against the model's references."""
    out = {}
    for cls in store.root[f"models/{model}"].attrs["classes"]:
        cm = load_class_model(store, model, cls)
        key = done_blocks(store, set_name, cls)[0]
        rows = read_block(store.group(f"classes/{set_name}/{cls}/{key}"),
                          ("X", "P", "Z", "Y", "norm"))
        rows = {name: values[:n_rows] for name, values in rows.items()}
        n = len(rows["X"])
        warm = {name: values[:2] for name, values in rows.items()}
        training_matrices(cm, warm)  # numba compilation or cache load
        c0 = time.process_time()
        align_to_references(cls, rows["P"], rows["Z"], cm.refs)
        c_align = time.process_time() - c0
        c0 = time.process_time()
        D_in, D_c, D_g = training_matrices(cm, rows)
        c_matrices = time.process_time() - c0
        c0 = time.process_time()
        equations_of(D_in, D_c, D_g, rows["norm"])
        c_equations = time.process_time() - c0
        K, n_perm = cm.refs.Q.shape[0], len(cm.refs.perms)
        out[cls] = {"rows": n, "references": K, "permutations": n_perm,
                    "align_cpu_s_per_row": c_align / n,
                    "matrices_cpu_s_per_row": c_matrices / n,
                    "equations_cpu_s_per_row": c_equations / n,
                    "pair_alignments_per_cpu_s": n * K / c_align,
                    "block_task_bytes_per_row": K * (9 + 3) * 8}
    return out


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / GIB, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per class")
    parser.add_argument("--references", type=int, default=2500, help="K per class")
    parser.add_argument("--block-rows", type=int, default=10_000,
                        help="rows per class per describe block")
    parser.add_argument("--blocks-per-segment", type=int, default=1)
    parser.add_argument("--segment-frames", type=int, default=2,
                        help="tiny frames stored per segment")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory-limit", default=None,
                        help="Dask memory limit per worker, e.g. 3GiB (default: auto, the "
                             "machine's memory / workers)")
    parser.add_argument("--client-blas-threads", type=int, default=None,
                        help="limit the BLAS threads of this process (RS-maximin, scaling, "
                             "probe) with threadpoolctl; default: unchanged, as `oamlm-dist "
                             "fit` runs (the workers use 1 thread each)")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="RS-maximin candidate pool (default: all rows)")
    parser.add_argument("--all-rows-fraction", type=float, default=0.0,
                        help="also fit train_rows='all' on this fraction of the segments")
    parser.add_argument("--probe-rows", type=int, default=200,
                        help="rows per class for the full-row cost probe (0: skip)")
    parser.add_argument("--sample-interval", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default="/tmp/oamlm-bench/scale.zarr",
                        help="store path (replaced)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--task-stream", default=None,
                        help="write the fits' task stream (key, worker, start, stop) to this "
                             "JSON file")
    args = parser.parse_args()
    if args.rows < 1 or args.block_rows < 1 or args.blocks_per_segment < 1:
        parser.error("--rows, --block-rows and --blocks-per-segment must be >= 1")

    if args.client_blas_threads:
        # Called, not entered: the limit holds in this process until it exits.
        threadpool_limits(limits=args.client_blas_threads, user_api="blas")
    load_start = os.getloadavg()[0]
    sampler = MemorySampler(args.sample_interval).start()
    timings: dict[str, float] = {}
    store_path = Path(os.path.abspath(args.store))

    # -- store, segments, descriptor set ---------------------------------------------------
    t0 = time.perf_counter()
    if store_path.exists():
        shutil.rmtree(store_path)
    store = Store.create(store_path)
    n_blocks = -(-args.rows // args.block_rows)
    n_segments = -(-n_blocks // args.blocks_per_segment)
    segment_ids = make_segments(store, n_segments, args.segment_frames, args.seed)
    spec = DescriptorSpec("element", SOAP, neighbours=NEIGHBOURS)
    set_name = prepare_set(store, spec)
    n_features = make_soap(SOAP).get_number_of_features()
    blocks = [(segment_ids[g // args.blocks_per_segment], g % args.blocks_per_segment,
               min(args.block_rows, args.rows - g * args.block_rows)) for g in range(n_blocks)]
    timings["setup_s"] = time.perf_counter() - t0
    print(f"store {store_path}: {n_segments} segments, set {set_name} ({spec.classes()}, "
          f"{n_features} features), {n_blocks} blocks of {args.block_rows} rows per class",
          flush=True)

    sampler.phase = "cluster_start"
    t0 = time.perf_counter()
    cluster = local_cluster(args.workers, memory_limit=args.worker_memory_limit)
    client = Client(cluster)
    client.wait_for_workers(args.workers)
    pids = client.run(os.getpid)
    sampler.workers = {pid: f"worker{i}" for i, pid in enumerate(sorted(pids.values()))}
    client.run(lambda: __import__("oamlm_dist.training"))  # imports outside the timings
    timings["cluster_start_s"] = time.perf_counter() - t0
    try:
        # -- describe-like writes ----------------------------------------------------------
        sampler.phase = "write"
        token = task_token(store_path)
        cpu_before = sampler.cpu()
        t0 = time.perf_counter()
        futures = [client.submit(write_block, str(store_path), set_name, seg, block, rows,
                                 args.seed, pure=False,
                                 key=f"scale-write-{token}-{block_key(seg, block)}")
                   for seg, block, rows in blocks]
        with redirect_stdout(sys.stderr):
            progress(futures)
        results = client.gather(futures)
        del futures
        timings["write_s"] = time.perf_counter() - t0
        write_cpu = cpu_delta(cpu_before, sampler.cpu())
        counts = class_row_counts(store, set_name)
        if any(counts.get(c) != args.rows for c in spec.classes()):
            raise RuntimeError(f"wrote {counts} rows, expected {args.rows} per class")
        task_totals = {k: sum(r[k] for r in results)
                       for k in ("wall_s", "generate_s", "write_s", "mark_s")}
        store_after_write = disk_usage(store_path)
        print(f"writes: {n_blocks} block tasks, {timings['write_s']:.1f} s wall ({args.workers} "
              f"workers; summed task time {task_totals['wall_s']:.1f} s: generate "
              f"{task_totals['generate_s']:.1f}, write {task_totals['write_s']:.1f}, marker "
              f"{task_totals['mark_s']:.1f}; CPU: workers {write_cpu['workers']:.1f} s, client "
              f"{write_cpu['client']:.1f} s); rows {counts}; store "
              f"{store_after_write['total'] / GIB:.2f} GiB", flush=True)

        # -- fit, K references, N = K ------------------------------------------------------
        settings = FitSettings(references=args.references, train_rows="references",
                               pool_size=args.pool_size, seed=args.seed)
        model = f"scale-K{args.references}"
        stream_records: list = []
        fitted = timed_fit(client, store_path, model, settings, sampler, "fit",
                           stream_records)
        ph, cpu = fitted["phases_s"], fitted["cpu_s"]
        busy = ", ".join(f"{k} {v['busy_s']:.1f}" for k, v in fitted["tasks"].items())
        print(f"fit K={args.references}, train_rows=references: {fitted['wall_s']:.1f} s "
              f"(references {ph['references']:.1f} s [CPU {cpu['references']:.1f}], of which "
              f"RS-maximin {ph['references_rs_maximin']:.1f} s [CPU "
              f"{cpu['references_rs_maximin']:.1f}]; training blocks "
              f"{ph['training_blocks']:.1f} s; equations {ph['equations']:.1f} s; solve "
              f"{ph['solve']:.1f} s; task busy s: {busy}; CPU: client {cpu['client']:.1f} s, "
              f"workers {cpu['workers']:.1f} s); classes {fitted['classes']}", flush=True)

        # -- cost of a full-row fit (measured per row, extrapolated) -----------------------
        probe, all_rows_estimate = None, None
        if args.probe_rows > 0:
            sampler.phase = "probe"
            probe = probe_row_costs(store, model, set_name, args.probe_rows)
            per_row = {c: p["matrices_cpu_s_per_row"] + p["equations_cpu_s_per_row"]
                       for c, p in probe.items()}
            all_rows_estimate = {
                "rows_per_class": args.rows,
                "cpu_s": sum(args.rows * v for v in per_row.values()),
                "wall_s_on_workers": sum(args.rows * v for v in per_row.values())
                / args.workers,
                "block_task_gib": gib(args.block_rows * max(
                    p["block_task_bytes_per_row"] for p in probe.values())),
            }
            for cls, p in probe.items():
                print(f"full-row cost probe {cls}: {p['rows']} rows x {p['references']} refs "
                      f"x {p['permutations']} perms: align "
                      f"{1e3 * p['align_cpu_s_per_row']:.2f} ms/row "
                      f"({p['pair_alignments_per_cpu_s']:.3g} pairs/CPU s), matrices "
                      f"{1e3 * p['matrices_cpu_s_per_row']:.2f} ms/row, equations "
                      f"{1e3 * p['equations_cpu_s_per_row']:.2f} ms/row", flush=True)
            print(f"=> train_rows='all' at {args.rows} rows per class: about "
                  f"{all_rows_estimate['wall_s_on_workers'] / 3600:.2f} h on {args.workers} "
                  f"workers, {all_rows_estimate['block_task_gib']:.2f} GiB per block task",
                  flush=True)

        all_rows = None
        if args.all_rows_fraction > 0:
            m = max(1, min(n_segments, round(args.all_rows_fraction * n_segments)))
            chosen = segment_ids[:m]
            selector = f"{chosen[0]}-{chosen[-1]}"
            all_settings = FitSettings(references=args.references, train_rows="all",
                                       pool_size=args.pool_size, seed=args.seed,
                                       frames=selector)
            all_rows = timed_fit(client, store_path, f"scale-all-K{args.references}",
                                 all_settings, sampler, "all_rows", stream_records)
            all_rows["segments"] = selector
            print(f"fit train_rows=all on segments {selector}: {all_rows['wall_s']:.1f} s, "
                  f"classes {all_rows['classes']}", flush=True)

        sampler.phase = "end"
        sampler.sample()
        worker_hwm = {sampler.workers[pid]: vm_hwm(pid) for pid in sampler.workers}
    finally:
        client.close()
        cluster.close()
    sampler.stop()
    if args.task_stream:
        Path(args.task_stream).write_text(json.dumps(stream_records))
    client_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    store_size = disk_usage(store_path)

    peak = sampler.peak
    workers_peak = {label: peak.get(label, 0) for label in sorted(sampler.workers.values())}
    hwm_bound = client_hwm + sum(v or 0 for v in worker_hwm.values())
    goal_peak = max(values.get("total", 0) for phase, values in sampler.phases.items()
                    if phase in GOAL_PHASES)
    goal = goal_peak < MEMORY_GOAL
    phases_mem = {phase: {label: gib(v) for label, v in values.items()}
                  for phase, values in sampler.phases.items()}
    print(f"peak RSS (sampled every {args.sample_interval} s, {sampler.samples} samples): "
          f"client {peak['client'] / GIB:.2f} GiB, workers "
          f"{', '.join(f'{v / GIB:.2f}' for v in workers_peak.values())} GiB, total "
          f"(simultaneous) {peak['total'] / GIB:.2f} GiB; kernel high-water marks: client "
          f"{client_hwm / GIB:.2f}, workers "
          f"{', '.join(f'{(v or 0) / GIB:.2f}' for v in worker_hwm.values())}, sum "
          f"{hwm_bound / GIB:.2f} GiB", flush=True)
    for phase, values in phases_mem.items():
        print(f"  {phase:<16} " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    print(f"store on disk: {store_size['total'] / GIB:.2f} GiB "
          f"({', '.join(f'{k} {v / GIB:.3f}' for k, v in store_size.items() if k != 'total')})")
    print(f"memory goal < 8 GiB: {'met' if goal else 'NOT met'} (sampled total over set-up, "
          f"writes and fit: {goal_peak / GIB:.2f} GiB); sum of "
          f"high-water marks {'<' if hwm_bound < MEMORY_GOAL else '>='} 8 GiB")
    if not args.keep:
        shutil.rmtree(store_path, ignore_errors=True)

    vm = psutil.virtual_memory()
    print(json.dumps({
        "benchmark": "scale",
        "rows_per_class": args.rows,
        "classes": spec.classes(),
        "features": n_features,
        "references": args.references,
        "train_rows": "references",
        "block_rows": args.block_rows,
        "blocks": n_blocks,
        "segments": n_segments,
        "workers": args.workers,
        "worker_memory_limit": args.worker_memory_limit,
        "client_blas_threads": args.client_blas_threads,
        "descriptor_set": set_name,
        "spec": spec.to_dict(),
        "timings_s": {**timings,
                      "write_tasks_summed": task_totals,
                      "write_cpu": write_cpu,
                      "fit": fitted["wall_s"],
                      "fit_phases": fitted["phases_s"]},
        "fit": fitted,
        "all_rows_probe": probe,
        "all_rows_fit_estimate": all_rows_estimate,
        "all_rows_fit": all_rows,
        "memory": {
            "peak_rss_client_gib": gib(peak["client"]),
            "peak_rss_workers_gib": {k: gib(v) for k, v in workers_peak.items()},
            "peak_rss_other_children_gib": gib(peak.get("other_children", 0)),
            "peak_total_gib": gib(peak["total"]),
            "peak_total_goal_phases_gib": gib(goal_peak),
            "hwm_client_gib": gib(client_hwm),
            "hwm_workers_gib": {k: gib(v) for k, v in worker_hwm.items()},
            "hwm_sum_gib": gib(hwm_bound),
            "by_phase_gib": phases_mem,
            "sample_interval_s": args.sample_interval,
            "samples": sampler.samples,
        },
        "memory_goal_gib": MEMORY_GOAL / GIB,
        "memory_goal_met": goal,
        "memory_goal_met_hwm_bound": hwm_bound < MEMORY_GOAL,
        "store_bytes": store_size,
        "store_gib": gib(store_size["total"]),
        "store_gib_after_writes": gib(store_after_write["total"]),
        "store_kept": args.keep,
        "settings": asdict(settings),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(),
                    "memory_gib": gib(vm.total), "python": platform.python_version(),
                    "numpy": np.__version__,
                    "load_avg_1min_start_end": [round(load_start, 2),
                                                round(os.getloadavg()[0], 2)]},
    }))


if __name__ == "__main__":
    main()
