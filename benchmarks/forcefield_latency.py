"""Force-call latency of a trained model on a ~150-atom Au-thiolate structure, one core.

The structure is an Au25(SCH3)18-like cluster (icosahedral Au13 core, six S-Au-S-Au-S
staples over the ±x, ±y, ±z edges; 115 atoms) next to an Au6(SCH3)6 ring 18 Å away:
151 atoms in all classes of the thiolate scheme (13 core Au, 18 unit Au, 24 S, 24 C, 72 H).

Training data needs no DFT, because latency does not depend on the force values: rattled
copies of that structure (0.06 Å per coordinate) with harmonic restoring forces towards the
unrattled positions plus noise, written into a fresh store (``Store.create``,
``new_segment``, ``FrameBatch.from_atoms``), described with the thiolate scheme and the
default SOAP, and fitted with K references per class (default 2500; ``train_rows =
"references"``). Enough frames are generated for K core-Au rows.

Timed in this process with ``NUMBA_NUM_THREADS = OMP_NUM_THREADS = 1``: ``ForceModel.predict``
and the ``ForceField`` calculator (best of ``--repeats`` after a warm-up call; wall and CPU
time, the latter being what a call costs on one free core when the machine is shared) and,
separately, the CPU time of its stages: descriptors and neighbourhoods
(``describe_frames``), alignment against the references, the regressions (one D_in, then
d_c, d_g and the EMLM norms) and the direction solve. Prints lines, then one JSON object.

Usage: ``python benchmarks/forcefield_latency.py [--references 2500] [--store PATH]``
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from oamlm_dist.describe import describe, describe_frames  # noqa: E402
from oamlm_dist.environments import describe_environments  # noqa: E402
from oamlm_dist.errors import SchemeError  # noqa: E402
from oamlm_dist.forcefield import ForceField, ForceModel  # noqa: E402
from oamlm_dist.models.class_model import align_to_references  # noqa: E402
from oamlm_dist.models.oamlm import predict_directions  # noqa: E402
from oamlm_dist.models.regression import input_distances  # noqa: E402
from oamlm_dist.store import FrameBatch, Store  # noqa: E402
from oamlm_dist.structures import gold_thiolate_ring, rattle  # noqa: E402
from oamlm_dist.training import FitSettings, fit  # noqa: E402

AU_CORE = 2.78  # centre-surface distance of the Au13 icosahedron (Å)
AU_S = 2.35
STAPLE_S_S = 4.3  # S...S across a staple Au (bent S-Au-S, Å)
S_C = 1.82
C_H = 1.09
TETRAHEDRAL = np.arccos(-1.0 / 3.0)
RATTLE = 0.06  # Å per coordinate


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _methyl(s: np.ndarray, bonded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """C and three H of the methyl on S, along the bisector away from S's two Au."""
    c_dir = _unit(-sum(_unit(b - s) for b in bonded))
    c = s + S_C * c_dir
    ref = np.cross(c_dir, [0.3, 0.5, 0.8])
    e2 = _unit(ref - np.dot(ref, c_dir) * c_dir)
    e3 = np.cross(c_dir, e2)
    phi = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    side = np.cos(phi)[:, None] * e2 + np.sin(phi)[:, None] * e3
    h = c + C_H * (np.cos(np.pi - TETRAHEDRAL) * c_dir + np.sin(np.pi - TETRAHEDRAL) * side)
    return c, h


def au25_like() -> Atoms:
    """An Au25(SCH3)18-like cluster: Au13 icosahedron plus six Au2(SCH3)3 staples."""
    phi = (1 + 5**0.5) / 2
    vertices = np.array([[0, a, b * phi] for a in (1, -1) for b in (1, -1)]
                        + [[a, b * phi, 0] for a in (1, -1) for b in (1, -1)]
                        + [[b * phi, 0, a] for a in (1, -1) for b in (1, -1)], dtype=float)
    vertices *= AU_CORE / np.linalg.norm(vertices[0])
    gold = [np.zeros(3), *vertices]
    sulfur, carbon, hydrogen = [], [], []
    # The six edges centred on the ±x, ±y, ±z axes (their midpoints lie on an axis).
    edge = 2 * AU_CORE / np.sqrt(phi**2 + 1)
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)
             if np.isclose(np.linalg.norm(vertices[i] - vertices[j]), edge)
             and np.count_nonzero(vertices[i] + vertices[j]) == 1]
    for i, j in pairs:
        a, b = vertices[i], vertices[j]
        axis = _unit(a + b)
        s1, s2 = a + AU_S * _unit(a), b + AU_S * _unit(b)
        mid = 0.5 * (s1 + s2)
        half = np.linalg.norm(s1 - mid)
        s_mid = mid + np.sqrt(STAPLE_S_S**2 - half**2) * axis
        # Staple Au: 2.35 Å from both of its S, on the side away from the core.
        staple = []
        for s in (s1, s2):
            m = 0.5 * (s + s_mid)
            along = _unit(s - s_mid)
            out = _unit(m - np.dot(m, along) * along)
            staple.append(m + np.sqrt(AU_S**2 - (STAPLE_S_S / 2) ** 2) * out)
        au1, au2 = staple
        gold += [au1, au2]
        for s, bonded in ((s1, [a, au1]), (s2, [b, au2]), (s_mid, [au1, au2])):
            c, h = _methyl(s, bonded)
            sulfur.append(s)
            carbon.append(c)
            hydrogen += list(h)
    symbols = (["Au"] * len(gold) + ["S"] * len(sulfur) + ["C"] * len(carbon)
               + ["H"] * len(hydrogen))
    return Atoms(symbols, positions=np.array(gold + sulfur + carbon + hydrogen))


def test_structure() -> Atoms:
    """Au25-like cluster plus an Au6(SCH3)6 ring 18 Å away (151 atoms)."""
    cluster = au25_like()
    ring = gold_thiolate_ring(6)
    ring.positions += [18.0, 0.0, 0.0]
    atoms = cluster + ring
    atoms.positions -= atoms.positions.mean(axis=0)
    return atoms


def training_frames(base: Atoms, n: int, seed: int) -> list[Atoms]:
    """Rattled copies with restoring forces F = -k (x - x0) + noise (eV/Å).

    A copy whose bonds the thiolate scheme cannot read (a rare C-H beyond 1.5 Å) is redrawn.
    """
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    draw = 0
    while len(frames) < n:
        atoms = rattle(base, RATTLE, seed=seed * 100003 + draw)
        draw += 1
        try:
            describe_environments(atoms, "thiolate")
        except SchemeError:
            continue
        forces = -5.0 * (atoms.positions - base.positions) + rng.normal(0, 0.05, (len(base), 3))
        atoms.calc = SinglePointCalculator(atoms, forces=forces, energy=0.0)
        frames.append(atoms)
    return frames


def best_of(fn, repeats: int) -> tuple[float, list[float], float]:
    """Best wall time, all wall times and the best CPU time of this process over repeats.

    On a loaded machine the CPU time is the figure to trust: the process is single-threaded,
    so CPU time is what the call costs on one free core.
    """
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), times, min(cpu)


def stage_breakdown(model: ForceModel, atoms: Atoms, repeats: int) -> dict:
    """Best-of CPU times of the stages of ``ForceModel.predict`` (same calls, timed apart)."""
    frame = atoms.copy()
    frame.calc = None
    _, _, c_desc = best_of(lambda: describe_frames([frame], model.spec), repeats)
    rows = describe_frames([frame], model.spec)
    out = {"descriptors_s": c_desc, "per_class": {}}
    totals = {"alignment_s": 0.0, "regression_s": 0.0, "directions_s": 0.0}
    for name, fields in rows.items():
        cm = model.classes[name]
        Xs = cm.scaler.transform(np.asarray(fields["X"], dtype=np.float64))

        def regression(cm=cm, Xs=Xs):
            D_in = input_distances(Xs, cm.refs.Q, fast=True)
            cm.oamlm.predict_outputs(Xs, distances=D_in)
            cm.emlm.predict(Xs, distances=D_in)

        _, _, c_reg = best_of(regression, repeats)
        _, _, c_align = best_of(lambda cm=cm, f=fields, n=name: align_to_references(
            n, f["P"], f["Z"], cm.refs), repeats)
        R, g, _ = align_to_references(name, fields["P"], fields["Z"], cm.refs)
        d_c, d_g = cm.oamlm.predict_outputs(Xs)

        def directions(cm=cm, R=R, g=g, d_c=d_c, d_g=d_g):
            r = cm.oamlm.rotate_references(R)
            predict_directions(d_c, r, g, method=cm.oamlm.method, sigma1=cm.oamlm.sigma1,
                               sigma2=cm.oamlm.sigma2, d_g=d_g if cm.oamlm.accept else None)

        _, _, c_dir = best_of(directions, repeats)
        out["per_class"][name] = {"atoms": len(Xs), "alignment_s": c_align,
                                  "regression_s": c_reg, "directions_s": c_dir}
        totals["alignment_s"] += c_align
        totals["regression_s"] += c_reg
        totals["directions_s"] += c_dir
    out.update(totals)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/oamlm-bench/latency.zarr",
                        help="store for the synthetic training data (rebuilt if settings "
                             "differ; reused otherwise)")
    parser.add_argument("--references", type=int, default=2500)
    parser.add_argument("--frames", type=int, default=0,
                        help="training frames (default: enough for K core-Au rows + 10 %%)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers for describe/fit")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    atoms = test_structure()
    counts = {}
    base_rows = describe_frames([atoms], _spec_probe())
    counts = {name: len(fields["X"]) for name, fields in base_rows.items()}
    print(f"structure: {len(atoms)} atoms, {atoms.get_chemical_formula()}, rows per class "
          f"{counts}")
    n_frames = args.frames or int(np.ceil(1.1 * args.references / min(counts.values())))
    store_path = Path(os.path.abspath(args.store))
    tag = {"frames": n_frames, "references": args.references, "atoms": len(atoms)}
    model_name = f"latency-K{args.references}"
    marker = store_path / "benchmark.json"
    timings: dict[str, float | None] = {}
    if not (marker.exists() and json.loads(marker.read_text()) == tag):
        if store_path.exists():
            shutil.rmtree(store_path)
        from distributed import Client

        from oamlm_dist.cluster import local_cluster

        t0 = time.perf_counter()
        store = Store.create(store_path)
        segment = store.new_segment("synthetic", {"name": "au25-ring6-rattled"})
        frames = training_frames(atoms, n_frames, seed=7)
        for start in range(0, len(frames), 50):
            segment.append(FrameBatch.from_atoms(frames[start:start + 50]))
        segment.mark_complete()
        timings["data_s"] = time.perf_counter() - t0
        with local_cluster(args.workers) as cluster, Client(cluster) as client, \
                redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            described = describe(store_path, "thiolate", None, client, block_frames=20)
            timings["describe_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            fit(store_path, model_name, client,
                FitSettings(references=args.references, train_rows="references"))
            timings["fit_s"] = time.perf_counter() - t0
        marker.write_text(json.dumps(tag))
        print(f"training data: {n_frames} frames, rows {described['rows']}; describe "
              f"{timings['describe_s']:.0f} s, fit {timings['fit_s']:.0f} s "
              f"({args.workers} workers)")
    else:
        print(f"training data and model reused from {store_path}")

    model = ForceModel.load(store_path, model_name)
    refs = {name: int(cm.refs.Q.shape[0]) for name, cm in model.classes.items()}
    print(f"model {model_name}: references per class {refs}, SOAP features "
          f"{next(iter(model.classes.values())).refs.Q.shape[1]}")
    probe = rattle(atoms, 0.05, seed=12345)
    t0 = time.perf_counter()
    model.predict(probe)  # warm-up: numba compilation / cache load
    warmup = time.perf_counter() - t0
    best, times, best_cpu = best_of(lambda: model.predict(probe), args.repeats)
    calc = ForceField(model)
    probe.calc = calc

    def ase_call():
        calc.reset()
        probe.get_forces()

    best_ase, _, best_ase_cpu = best_of(ase_call, args.repeats)
    breakdown = stage_breakdown(model, probe, args.repeats)
    print(f"warm-up call {warmup:.2f} s; ForceModel.predict best of {args.repeats}: "
          f"{best:.3f} s wall, {best_cpu:.3f} s CPU (all wall: "
          f"{', '.join(f'{t:.3f}' for t in times)}); ForceField.get_forces {best_ase:.3f} s "
          f"wall, {best_ase_cpu:.3f} s CPU")
    print(f"stages (CPU s): descriptors {breakdown['descriptors_s']:.3f} s, alignment "
          f"{breakdown['alignment_s']:.3f} s, regression {breakdown['regression_s']:.3f} s, "
          f"directions {breakdown['directions_s']:.3f} s")
    for name, stage in breakdown["per_class"].items():
        print(f"  {name:<8} {stage['atoms']:>3} atoms: alignment {stage['alignment_s']:.3f} s, "
              f"regression {stage['regression_s']:.3f} s, directions "
              f"{stage['directions_s']:.3f} s")
    goal = best < 1.0
    goal_cpu = best_cpu < 1.0
    print(f"goal < 1 s per force call on one core: wall {'met' if goal else 'NOT met'}, "
          f"CPU {'met' if goal_cpu else 'NOT met'} (load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    print(json.dumps({
        "benchmark": "forcefield_latency",
        "structure": {"atoms": len(atoms), "formula": atoms.get_chemical_formula(),
                      "rows_per_class": counts},
        "references": refs,
        "training_frames": n_frames,
        "predict_best_s": best, "predict_best_cpu_s": best_cpu, "predict_all_s": times,
        "forcefield_get_forces_best_s": best_ase, "forcefield_get_forces_best_cpu_s": best_ase_cpu,
        "warmup_s": warmup,
        "breakdown_cpu_s": breakdown,
        "setup_s": timings,
        "goal_lt_1s": goal, "goal_lt_1s_cpu": goal_cpu,
        "threads": {v: os.environ[v] for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1min": os.getloadavg()[0]},
    }))


def _spec_probe():
    from oamlm_dist.describe import DescriptorSpec
    from oamlm_dist.descriptors import SoapSettings

    return DescriptorSpec("thiolate", SoapSettings(species=("Au", "S", "C", "H")))


if __name__ == "__main__":
    main()
