"""The ``evaluate`` stage: a model's force errors on test trajectories, per class.

Test frames are described with the model's own descriptor settings in Dask tasks (one per
chunk of frames) and predicted there; the client only gathers per-atom results. The metric of
the primary sources is the weighted-average angle between predicted and reference forces
with weights |F_ref|².
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from oamlm_dist.describe import describe_frames
from oamlm_dist.errors import InputError
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.ingest import validate_file
from oamlm_dist.models.oamlm import angles_deg, median_angle_deg, weighted_angle_deg


def predict_chunk(store_path: str, model: str, frames: list, method: str | None) -> dict:
    """Dask task: per class, reference and predicted forces of a chunk of frames."""
    force_model = ForceModel.load(store_path, model)
    rows = describe_frames(frames, force_model.spec)
    predictions = force_model.predict_rows(rows, method)
    return {cls: {"ref": rows[cls]["Y"] * rows[cls]["norm"][:, None],
                  "pred": predictions[cls]["forces"]} for cls in rows}


def class_metrics(ref: np.ndarray, pred: np.ndarray) -> dict:
    """The evaluation figures of one class."""
    ref_norm, pred_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(pred, axis=1)
    return {
        "n": int(len(ref)),
        "weighted_angle_deg": float(weighted_angle_deg(pred, ref)),
        "mean_angle_deg": float(np.mean(angles_deg(pred, ref))),
        "median_angle_deg": float(median_angle_deg(pred, ref)),
        "norm_mae": float(np.mean(np.abs(pred_norm - ref_norm))),
        "norm_rmse": float(np.sqrt(np.mean((pred_norm - ref_norm) ** 2))),
        "force_mae": float(np.mean(np.abs(pred - ref))),
    }


def evaluate(store_path: str | os.PathLike, model: str, test_files: list[str], client,
             method: str | None = None, chunk_frames: int = 20,
             plots: str | os.PathLike | None = None) -> dict:
    """Errors per class on the frames of ``test_files`` (validated like ingest input)."""
    force_model = ForceModel.load(store_path, model)  # fail early: missing or untrained
    known = force_model.spec.soap.species
    frames = []
    for path in test_files:
        for index, atoms in enumerate(validate_file(path, skip_bad=False)[0]):
            symbols = atoms.get_chemical_symbols()
            unknown = [i for i, symbol in enumerate(symbols) if symbol not in known]
            if unknown:
                atom, symbol = unknown[0], symbols[unknown[0]]
                raise InputError(f"{path}, frame {index}, atom {atom} ({symbol}): element "
                                 f"{symbol} is unknown to model {model!r} (it knows "
                                 f"{', '.join(known)})")
            frames.append(atoms)
    run = uuid.uuid4().hex[:8]  # chunks of different test files must not share keys
    futures = [client.submit(predict_chunk, str(store_path), model,
                             frames[i:i + chunk_frames], method, pure=False,
                             key=f"evaluate-{model}-{run}-{i}")
               for i in range(0, len(frames), chunk_frames)]
    from distributed import progress

    progress(futures)
    parts: dict[str, dict[str, list]] = {}
    for result in client.gather(futures):
        for cls, values in result.items():
            for k, v in values.items():
                parts.setdefault(cls, {"ref": [], "pred": []})[k].append(v)
    collected = {cls: {k: np.concatenate(v) for k, v in d.items()} for cls, d in parts.items()}
    report = {"model": model, "frames": len(frames), "method": method,
              "classes": {cls: class_metrics(d["ref"], d["pred"])
                          for cls, d in collected.items()}}
    if plots:
        report["plots"] = write_plots(collected, Path(plots), model)
    return report


def write_plots(collected: dict[str, dict], out_dir: Path, model: str) -> list[str]:
    """Angle-vs-|F| density and predicted-vs-reference norms per class (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for cls, d in collected.items():
        ref_norm = np.linalg.norm(d["ref"], axis=1)
        pred_norm = np.linalg.norm(d["pred"], axis=1)
        angle = angles_deg(d["pred"], d["ref"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].hexbin(ref_norm, angle, gridsize=40, bins="log", mincnt=1)
        axes[0].set(xlabel="|F| reference (eV/Å)", ylabel="angle (°)",
                    title=f"{cls}: w.a. {weighted_angle_deg(d['pred'], d['ref']):.1f}°")
        top = float(max(ref_norm.max(initial=0), pred_norm.max(initial=0))) or 1.0
        axes[1].hexbin(ref_norm, pred_norm, gridsize=40, bins="log", mincnt=1)
        axes[1].plot([0, top], [0, top], "k--", lw=0.8)
        axes[1].set(xlabel="|F| reference (eV/Å)", ylabel="|F| predicted (eV/Å)",
                    title=f"{cls}: norm RMSE "
                          f"{np.sqrt(np.mean((pred_norm - ref_norm) ** 2)):.3f} eV/Å")
        fig.suptitle(f"model {model}")
        fig.tight_layout()
        path = out_dir / f"{model}-{cls}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def format_report(report: dict) -> str:
    lines = [f"model {report['model']}: {report['frames']} test frames",
             f"{'class':<8}{'n':>8}{'w.angle°':>10}{'mean°':>8}{'median°':>9}"
             f"{'normMAE':>9}{'normRMSE':>10}{'F MAE':>8}"]
    for cls, m in report["classes"].items():
        lines.append(f"{cls:<8}{m['n']:>8}{m['weighted_angle_deg']:>10.2f}"
                     f"{m['mean_angle_deg']:>8.2f}{m['median_angle_deg']:>9.2f}"
                     f"{m['norm_mae']:>9.3f}{m['norm_rmse']:>10.3f}{m['force_mae']:>8.3f}")
    for path in report.get("plots", []):
        lines.append(f"plot: {path}")
    lines.append(json.dumps({"model": report["model"], "classes": report["classes"]}))
    return "\n".join(lines)
