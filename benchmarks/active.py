"""Active learning of gold-thiolate forces with GFN2-xTB: uncertainty, loop efficiency, chunks.

Measured, in one run (every fine force from ``"xtb"``; every ensemble is trained the way
``ActiveLearner.train`` trains the loop's own, with one ``LearnSettings``: M = 4 members,
K = 200 references per class):

1. Uncertainty quality. An ensemble trained on xTB MD of Au4(SCH3)4 and Au5(SCH3)5 (run 0,
   Langevin 500 K) predicts held-out frames: run 1 of the same rings, and Au6(SCH3)6, a size
   it never saw. Per thiolate class and pooled: Spearman rho between the atomic uncertainty
   delta_i and the force error |f_pred - f_xtb|_i, and the fraction of atoms whose error is
   within delta_i (delta is meant to cover ~99 % of the ensemble spread).
2. Loop efficiency. ``learn()`` from a cold start on the Au4 and Au5 rings, run to its
   fine-call budget (the other stop rules are switched off). After every iteration, an
   ensemble of the training set the loop recorded is scored on the held-out MD run 1 by the
   |F|^2-weighted angle, per class and pooled. Baselines, trained the same way on random
   frames, mean over seeds: rattled copies of the rings (the loop's own candidate
   distribution, without the uncertainty selection) and frames of the xTB MD pool (run 0;
   the MD's own fine calls are not counted).
   Target: the rattled baseline's error at the loop's budget; reported are the fine calls
   each curve needs to reach it (the baselines go on to twice the budget).
3. Nearsighted chunks. Eight rings (Au4..Au7, twice; 264 atoms) 13 Å apart on a grid in one
   structure. A full-structure loop (5 fine calls of 264 atoms) against a chunk loop
   (``chunk_cutoff`` 6 Å, 96 chunks of ~25 atoms, computed in parallel on the Dask
   workers): about twice the atoms, but a fraction of the xTB time, as xTB scales
   superlinearly. Reported per loop: fine calls, atoms and xTB seconds in fine
   calculations, wall time, and the final ensemble's weighted angle and force MAE on rattled
   copies of the assembly labelled once by xTB (which also times xTB on 264 atoms). Also
   checked: how nearsighted xTB is at the cutoff, as the error of the central force of
   chunks cut from a test frame against the full structure's.

Both loops sample rattled copies at 0.05 Å: with the default 0.1 Å about 6 % of ring
copies stretch an S-C or C-H bond beyond the thiolate scheme's cut-offs and are dropped,
and for the 264-atom assembly nearly every copy would be.

Progress lines and then one JSON object (the last line) go to stdout; Dask's progress bars
go to stderr. Stores live in ``--out``; the MD store is reused by later runs.

Usage: python benchmarks/active.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from machine import machine_facts
from scipy.stats import spearmanr

from oamlm_dist.active.chunks import central_rows, cut_chunk
from oamlm_dist.active.ensemble import ForceEnsemble
from oamlm_dist.active.loop import LearnSettings, default_spec, learn
from oamlm_dist.cluster import FINE_RESOURCE, get_client
from oamlm_dist.describe import DescriptorSpec, describe_frames
from oamlm_dist.environments import classify
from oamlm_dist.evaluate import class_metrics
from oamlm_dist.optimize.hybrid import fine_task
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import gold_thiolate_ring, rattle
from oamlm_dist.training import FitSettings

RING_SIZES = {"ring-Au4": 4, "ring-Au5": 5, "ring-Au6": 6}
TRAINED = ("ring-Au4", "ring-Au5")
UNSEEN = "ring-Au6"
ASSEMBLY_SIZES = (4, 5, 6, 7, 4, 5, 6, 7)
ASSEMBLY_SPACING = 13.0  # Å between ring centres: 4 Å between the nearest atoms of two rings
CHUNK_CUTOFF = 6.0  # Å, the lower end of DFT force locality (SOAP r_cut is 4 Å)
RATTLE = 0.05  # Å; see the module docstring
# Budgets are the only stop rule: every loop spends exactly its fine calls.
BASE = LearnSettings(references=200, rattle=RATTLE, threshold=0.0, max_iterations=10**6,
                     patience_additions=10**6, patience_improvement=10**6)
ERROR_FIELDS = ("weighted_angle_deg", "force_mae")
STARTED = time.perf_counter()


@dataclass(frozen=True)
class Scale:
    md_steps: int  # per MD run, a frame every 10 steps
    loop_budget: int  # fine calls of the ring loop (2 cold + 4 per iteration)
    seeds: int  # random draws per baseline point
    assembly_test_frames: int
    full_budget: int  # full-structure assembly loop (1 cold + 2 per iteration)
    chunk_budget: int  # chunk loop (32 cold: 8 chunks per class, then 8 per iteration)


FULL = Scale(md_steps=600, loop_budget=42, seeds=3, assembly_test_frames=4, full_budget=5,
             chunk_budget=96)
QUICK = Scale(md_steps=200, loop_budget=14, seeds=2, assembly_test_frames=2, full_budget=3,
              chunk_budget=40)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


# ---- data ------------------------------------------------------------------------------------
def labelled(atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def xtb_frames(client, structures: list[Atoms]) -> tuple[list[Atoms], list[float]]:
    """The structures with xTB forces (one fine task each) and each calculation's wall time."""
    futures = [client.submit(fine_task, atoms, "xtb", {}, resources={FINE_RESOURCE: 1},
                             pure=False) for atoms in structures]
    results = client.gather(futures)
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        sys.exit(f"xtb failed on {len(failed)} of {len(results)} structures: {failed[0]}")
    frames = [labelled(atoms, r["energy"], r["forces"])
              for atoms, r in zip(structures, results, strict=True)]
    return frames, [r["wall_s"] for r in results]


def ring_md(client, out: Path, steps: int) -> dict[str, list[Atoms]]:
    """xTB MD frames by run (``ring-Au4/run0``, ...): two Langevin runs of each ring."""
    store = out / f"md-{steps}steps.zarr"
    md = MDSettings(temperature=500.0, steps=steps, timestep=1.0, thermostat="langevin",
                    interval=10, seed=7)
    structures = [(name, gold_thiolate_ring(n)) for name, n in RING_SIZES.items()]
    with redirect_stdout(sys.stderr):  # Dask's progress bar
        sample(store, structures, "xtb", {}, md, runs=2, client=client)
    return {s.attrs["name"]: s.read() for s in Store.open(store).segments("md")}


def rattled_rings(client, n: int, first_seed: int) -> list[Atoms]:
    """``n`` xTB-labelled rattled copies of the trained rings, taken in turn."""
    rings = [gold_thiolate_ring(RING_SIZES[name]) for name in TRAINED]
    return xtb_frames(client, [rattle(rings[i % len(rings)], RATTLE, seed=first_seed + i)
                               for i in range(n)])[0]


def md_frames(md: dict[str, list[Atoms]], names: tuple[str, ...], run: int,
              every: int = 1) -> list[Atoms]:
    """Every ``every``-th frame of MD run ``run`` of each named ring."""
    return [frame for name in names for frame in md[f"{name}/run{run}"][::every]]


def ring_assembly(sizes: tuple[int, ...], spacing: float) -> Atoms:
    """Rings centred on a grid, four per row, ``spacing`` Å apart, in one structure."""
    assembly = Atoms()
    for k, n in enumerate(sizes):
        ring = gold_thiolate_ring(n)
        ring.positions += [(k % 4) * spacing, (k // 4) * spacing, 0.0]
        assembly += ring
    return assembly


# ---- models and errors -----------------------------------------------------------------------
def train_ensemble(frames: list[Atoms], centres: list[int | None], spec: DescriptorSpec,
                   settings: LearnSettings) -> ForceEnsemble:
    """An ensemble trained as ``ActiveLearner.train`` trains the loop's (a chunk frame gives
    its central atom's row only)."""
    rows = central_rows(describe_frames(frames, spec), centres)
    fit = FitSettings(references=settings.references, seed=settings.seed)
    return ForceEnsemble.train(rows, spec, fit, settings.members, seed=fit.seed)


def atom_predictions(ensemble: ForceEnsemble, frames: list[Atoms]) -> dict[str, np.ndarray]:
    """Per atom of ``frames``: thiolate class, ensemble-mean and xTB forces, uncertainty."""
    columns: dict[str, list] = {"class": [], "pred": [], "ref": [], "delta": []}
    for frame in frames:
        prediction = ensemble.predict(frame)
        columns["class"].append(classify(frame, ensemble.spec.scheme))
        columns["pred"].append(prediction["forces"])
        columns["ref"].append(frame.get_forces())
        columns["delta"].append(prediction["uncertainty"])
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def class_masks(classes: np.ndarray) -> dict[str, np.ndarray]:
    """The atoms of each class present, and all atoms (``pooled``)."""
    masks = {str(name): classes == name for name in np.unique(classes)}
    masks["pooled"] = np.ones(len(classes), dtype=bool)
    return masks


def uncertainty_quality(atoms: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per class: rank correlation of delta_i with the force error, and its coverage."""
    error = np.linalg.norm(atoms["pred"] - atoms["ref"], axis=1)
    out = {}
    for name, mask in class_masks(atoms["class"]).items():
        rho = spearmanr(atoms["delta"][mask], error[mask]).statistic
        out[name] = {"n": int(mask.sum()), "spearman": round(float(rho), 3),
                     "error_within_delta": round(float(np.mean(error[mask]
                                                               <= atoms["delta"][mask])), 3),
                     "mean_error": round(float(error[mask].mean()), 3),
                     "mean_delta": round(float(atoms["delta"][mask].mean()), 3)}
    return out


def force_errors(atoms: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per class and pooled: |F|^2-weighted angle (deg) and force-component MAE (eV/Å)."""
    out = {}
    for name, mask in class_masks(atoms["class"]).items():
        metrics = class_metrics(atoms["ref"][mask], atoms["pred"][mask])
        out[name] = {key: round(metrics[key], 3) for key in ERROR_FIELDS}
    return out


def train_and_score(frames: list[Atoms], centres: list[int | None], spec: DescriptorSpec,
                    settings: LearnSettings, heldout: list[Atoms]) -> dict[str, dict]:
    """Dask task: force errors on ``heldout`` of an ensemble trained on ``frames``."""
    ensemble = train_ensemble(frames, centres, spec, settings)
    return force_errors(atom_predictions(ensemble, heldout))


def mean_errors(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Each figure averaged over runs (the seeds of a random baseline)."""
    return {name: {key: round(float(np.mean([run[name][key] for run in runs])), 3)
                   for key in ERROR_FIELDS} for name in runs[0]}


def pooled_angle(point: dict) -> float:
    return point["errors"]["pooled"]["weighted_angle_deg"]


def fine_calls_to_reach(curve: list[dict], target: float) -> int | None:
    """The first fine-call count of ``curve`` whose pooled weighted angle is <= ``target``."""
    return next((p["fine_calls"] for p in curve if pooled_angle(p) <= target), None)


# ---- loops -----------------------------------------------------------------------------------
def run_loop(client, store: Path, name: str, structures: list[tuple[str, Atoms]],
             settings: LearnSettings) -> dict:
    """``learn()`` on a fresh store; its summary, with the atoms and xTB seconds of its fine
    calculations."""
    shutil.rmtree(store, ignore_errors=True)

    def progress(entry: dict) -> None:
        u = entry["max_uncertainty"]
        log(f"{name}: iteration {entry['iteration']}: checked {entry['checked']}, added "
            f"{entry['additions']}, max delta {'-' if u is None else f'{u:.3g}'} eV/Å, "
            f"fine calls {entry['fine_calls']}")

    summary = learn(store, name, structures, client, "xtb", settings=settings,
                    on_iteration=progress)
    fine = [s for s in Store.open(store).segments("fine") if s.attrs.get("active") == name]
    history = loop_state(store, name)["history"]
    summary.update(fine_atoms=sum(s.n_atoms for s in fine),
                   fine_xtb_s=round(sum(a["wall_s"] for s in fine for a in s.attrs["attempts"]),
                                    1),
                   failed=sum(entry["failed"] for entry in history))
    return summary


def loop_state(store: Path, name: str) -> dict:
    return Store.open(store).root[f"active/{name}"].attrs["state"]


def loop_training_sets(store: Path, name: str) -> list[tuple[int, list[Atoms],
                                                           list[int | None]]]:
    """(fine calls, training frames, chunk centres) after each iteration that made fine
    calls, rebuilt from the loop's recorded state (frames are listed in order of addition)."""
    state, opened = loop_state(store, name), Store.open(store)
    frames = [opened.segment(s).read(f, f + 1)[0] for s, f, _ in state["training"]]
    centres = [None if c < 0 else c for _, _, c in state["training"]]
    out, added = [], 0
    for entry in state["history"]:
        added += entry["additions"]
        if entry["checked"]:
            out.append((entry["fine_calls"], frames[:added], centres[:added]))
    return out


def loop_curve(client, store: Path, name: str, spec: DescriptorSpec, settings: LearnSettings,
               heldout) -> list[dict]:
    sets = loop_training_sets(store, name)
    futures = [client.submit(train_and_score, frames, centres, spec, settings, heldout,
                             pure=False) for _, frames, centres in sets]
    return [{"fine_calls": calls, "training_frames": len(frames), "errors": errors}
            for (calls, frames, _), errors in zip(sets, client.gather(futures), strict=True)]


def random_curve(client, pool: list[Atoms], counts: list[int], seeds: int,
                 spec: DescriptorSpec, settings: LearnSettings, heldout) -> list[dict]:
    """Errors of ensembles trained on ``n`` random frames of ``pool`` (one fine call each),
    averaged over ``seeds`` draws, for each ``n`` in ``counts``."""
    futures = {}
    for n in counts:
        draws = [np.random.default_rng([seed, n]).choice(len(pool), n, replace=False)
                 for seed in range(seeds)]
        futures[n] = [client.submit(train_and_score, [pool[i] for i in draw], [None] * n,
                                    spec, settings, heldout, pure=False) for draw in draws]
    return [{"fine_calls": n, "errors": mean_errors(client.gather(fs))}
            for n, fs in futures.items()]


# ---- the three measurements ------------------------------------------------------------------
def uncertainty_section(md: dict[str, list[Atoms]], spec: DescriptorSpec) -> dict:
    training = md_frames(md, TRAINED, run=0)
    ensemble = train_ensemble(training, [None] * len(training), spec, BASE)
    heldout = {"other_run": md_frames(md, TRAINED, run=1, every=2),
               UNSEEN: md_frames(md, (UNSEEN,), run=0, every=2)
               + md_frames(md, (UNSEEN,), run=1, every=2)}
    out = {"training_frames": len(training)}
    for label, frames in heldout.items():
        quality = uncertainty_quality(atom_predictions(ensemble, frames))
        out[label] = {"frames": len(frames), "classes": quality}
        log(f"uncertainty, {label}: Spearman rho " + ", ".join(
            f"{name} {q['spearman']:.2f}" for name, q in quality.items()))
    return out


def efficiency_section(client, out: Path, md: dict[str, list[Atoms]], spec: DescriptorSpec,
                       scale: Scale) -> dict:
    settings = replace(BASE, budget=scale.loop_budget)
    heldout_frames = md_frames(md, TRAINED, run=1, every=2)
    [heldout] = client.scatter([heldout_frames], broadcast=True)
    store = out / "loops" / "rings.zarr"
    structures = [(name, gold_thiolate_ring(RING_SIZES[name])) for name in TRAINED]
    summary = run_loop(client, store, "rings", structures, settings)
    loop = loop_curve(client, store, "rings", spec, settings, heldout)
    log(f"loop curve: {[(p['fine_calls'], pooled_angle(p)) for p in loop]}")

    calls = [p["fine_calls"] for p in loop]
    budget = calls[-1]
    counts = sorted({*calls[::2], budget, 3 * budget // 2, 2 * budget})
    pools = {"random_rattled": rattled_rings(client, 2 * budget, first_seed=10**6),
             "random_md_pool": md_frames(md, TRAINED, run=0)}
    curves = {"loop": loop}
    for label, pool in pools.items():
        curves[label] = random_curve(client, pool, counts, scale.seeds, spec, settings, heldout)
        log(f"{label} curve: {[(p['fine_calls'], pooled_angle(p)) for p in curves[label]]}")
    target = next(pooled_angle(p) for p in curves["random_rattled"] if p["fine_calls"] == budget)
    reach = {label: fine_calls_to_reach(curve, target) for label, curve in curves.items()}
    log(f"target {target:.2f} deg (random rattled at {budget} fine calls); reached at {reach}")
    return {"heldout_frames": len(heldout_frames), "loop": summary, "curves": curves,
            "target_weighted_angle_deg": target, "fine_calls_to_target": reach,
            "random_pool_sizes": {label: len(pool) for label, pool in pools.items()}}


def chunk_fidelity(client, frame: Atoms, per_class: int) -> dict[str, dict]:
    """Per class: |f_centre(chunk) - f(full)| (eV/Å) of chunks cut from a labelled frame
    around ``per_class`` atoms of the class, evenly spread over its atoms."""
    classes = classify(frame, "thiolate")
    centres = np.concatenate([members[np.linspace(0, len(members) - 1, per_class).astype(int)]
                              for members in (np.flatnonzero(classes == name)
                                              for name in np.unique(classes))])
    chunks = [cut_chunk(frame, int(a), CHUNK_CUTOFF, BASE.vacuum) for a in centres]
    computed, _ = xtb_frames(client, [chunk.atoms for chunk in chunks])
    error = np.array([np.linalg.norm(c.get_forces()[chunk.centre] - frame.get_forces()[a])
                      for c, chunk, a in zip(computed, chunks, centres, strict=True)])
    force = np.linalg.norm(frame.get_forces()[centres], axis=1)
    return {str(name): {"mean": round(float(error[mask].mean()), 3),
                        "max": round(float(error[mask].max()), 3),
                        "mean_force": round(float(force[mask].mean()), 3)}
            for name, mask in ((n, classes[centres] == n) for n in np.unique(classes))}


def chunks_section(client, out: Path, scale: Scale) -> dict:
    assembly = ring_assembly(ASSEMBLY_SIZES, ASSEMBLY_SPACING)
    tests, walls = xtb_frames(client, [rattle(assembly, RATTLE, seed=2 * 10**6 + i)
                                       for i in range(scale.assembly_test_frames)])
    log(f"assembly: {len(assembly)} atoms, xTB {np.mean(walls):.1f} s per call")
    fidelity = chunk_fidelity(client, tests[0], per_class=4)
    log("chunk centre force error vs full structure (eV/Å): " + ", ".join(
        f"{name} {f['mean']:.3f} (max {f['max']:.3f})" for name, f in fidelity.items()))
    variants = {
        "full": replace(BASE, budget=scale.full_budget, per_iteration=2),
        "chunks": replace(BASE, budget=scale.chunk_budget, per_iteration=8,
                          chunk_cutoff=CHUNK_CUTOFF),
    }
    result = {"atoms": len(assembly), "xtb_s_per_call": round(float(np.mean(walls)), 2),
              "test_frames": len(tests), "chunk_centre_force_error": fidelity}
    for name, settings in variants.items():
        store = out / "loops" / f"assembly-{name}.zarr"
        summary = run_loop(client, store, name, [("assembly", assembly)], settings)
        errors = force_errors(atom_predictions(ForceEnsemble.load(store, name), tests))
        result[name] = {key: summary[key] for key in ("fine_calls", "fine_atoms", "fine_xtb_s",
                                                      "failed", "additions", "iterations",
                                                      "wall_s", "stopped")}
        result[name]["errors"] = errors
        pooled = errors["pooled"]
        log(f"{name}: {summary['fine_calls']} fine calls, {summary['fine_atoms']} fine atoms, "
            f"xTB {summary['fine_xtb_s']} s, wall {summary['wall_s']:.0f} s, weighted angle "
            f"{pooled['weighted_angle_deg']} deg, force MAE {pooled['force_mae']} eV/Å")
    return result


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short MD, small budgets")
    parser.add_argument("--out", default="/tmp/oamlm-active-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = QUICK if args.quick else FULL
    spec = default_spec([(name, gold_thiolate_ring(n)) for name, n in RING_SIZES.items()])
    timings = {}
    with get_client(quiet=True) as client:
        t = time.perf_counter()
        md = ring_md(client, out, scale.md_steps)
        timings["md_s"] = time.perf_counter() - t
        log(f"MD: {', '.join(f'{name} {len(frames)}' for name, frames in md.items())} frames")
        t = time.perf_counter()
        uncertainty = uncertainty_section(md, spec)
        timings["uncertainty_s"] = time.perf_counter() - t
        t = time.perf_counter()
        efficiency = efficiency_section(client, out, md, spec, scale)
        timings["efficiency_s"] = time.perf_counter() - t
        t = time.perf_counter()
        chunks = chunks_section(client, out, scale)
        timings["chunks_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - STARTED
    summary = {"benchmark": "active", "quick": args.quick, "scale": asdict(scale),
               "settings": {"references": BASE.references, "members": BASE.members,
                            "rattle": RATTLE, "chunk_cutoff": CHUNK_CUTOFF,
                            "md": "Langevin 500 K, 1 fs, every 10th step"},
               "uncertainty": uncertainty, "efficiency": efficiency, "chunks": chunks,
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "machine": machine_facts()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
