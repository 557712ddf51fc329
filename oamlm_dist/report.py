"""A Markdown summary of a store (and optionally of the campaign that filled it).

The report reads everything from the store, opened read-only: frames per kind and segments,
descriptor sets with their rows per class, models with their settings, the hybrid
optimisations recorded as fine segments (re-plotted from the stored frames) and recorded
failures. Evaluation results are not kept in the store; give the JSON files written by
``oamlm-dist evaluate --json`` to include them with their plots.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from oamlm_dist.errors import InputError
from oamlm_dist.store import Store, now_iso, version_in_force

MAX_SEGMENT_ROWS = 50
REACHED_ORDER = ("start", "ml", "fine-step", "backtrack")


# ---- collecting ----------------------------------------------------------------------------

def optimisation_runs(store: Store) -> list[dict]:
    """The hybrid optimisations recorded in ``store``, from its fine segments.

    Fine segments are grouped by their ``optimisation`` attribute in segment order; a fine-call
    number that does not increase starts a new run of the same name (an optimisation run again
    into the same store). Each run: name, label, calculator, rounds (fine_call, kind, energy,
    fmax, segment), fine_calls, final energy/fmax (last fine frame), best energy and the
    number of geometries reached each way.
    """
    runs: list[dict] = []
    current: dict[str, dict] = {}
    for segment in store.segments("fine"):
        attrs = segment.attrs
        if not segment.n_frames:
            continue
        name = attrs.get("optimisation") or str(attrs.get("name", "fine")).split("/")[0]
        call = int(attrs.get("fine_call", 0))
        frame = segment.read(segment.n_frames - 1)[0]
        energy = frame.calc.results.get("energy")
        forces = frame.calc.results["forces"]
        fmax = float(np.linalg.norm(forces, axis=1).max(initial=0.0))
        run = current.get(name)
        if run is None or call <= run["rounds"][-1]["fine_call"]:
            run = {"name": name, "calculator": attrs.get("calculator"), "rounds": []}
            current[name] = run
            runs.append(run)
        run["rounds"].append({"fine_call": call, "kind": attrs.get("reached_by", "unknown"),
                              "energy": None if energy is None else float(energy),
                              "fmax": fmax, "segment": segment.id,
                              "time": attrs.get("created")})
    repeats = Counter(run["name"] for run in runs)
    seen: Counter = Counter()
    for run in runs:
        seen[run["name"]] += 1
        run["label"] = (f"{run['name']} (run {seen[run['name']]})" if repeats[run["name"]] > 1
                        else run["name"])
        rounds = run["rounds"]
        energies = [r["energy"] for r in rounds if r["energy"] is not None]
        run["fine_calls"] = len(rounds)
        run["energy"] = rounds[-1]["energy"]
        run["fmax"] = rounds[-1]["fmax"]
        run["best_energy"] = min(energies) if energies else None
        counts = Counter(r["kind"] for r in rounds)
        run["reached_by"] = {k: counts[k] for k in (*REACHED_ORDER, *sorted(counts))
                             if counts.get(k)}
    return runs


def failures(store: Store) -> list[dict]:
    """Recorded fine-calculation failures (``failures/<optimisation>-fine<n>``)."""
    if "failures" not in store.root:
        return []
    records = []
    group = store.root["failures"]
    for key in sorted(group.group_keys()):
        attrs = dict(group[key].attrs)
        call = re.search(r"-fine(\d+)$", key)
        records.append({"key": key, "optimisation": attrs.get("optimisation"),
                        "fine_call": int(call.group(1)) if call else None,
                        "reason": attrs.get("reason", ""),
                        "attempts": len(attrs.get("attempts") or []),
                        "time": attrs.get("time")})
    return records


def models(store: Store) -> list[dict]:
    """Per model: settings, descriptor set, classes with their references and trained rows."""
    out = []
    if "models" not in store.root:
        return out
    group = store.root["models"]
    for name in sorted(group.group_keys()):
        attrs = dict(group[name].attrs)
        classes = []
        for cls in attrs.get("classes", []):
            path = f"models/{name}/{cls}"
            if path not in store.root:
                classes.append({"class": cls, "references": None, "trained_rows": None})
                continue
            cgroup = store.root[path]
            solved = version_in_force(cgroup)
            refs = solved["ref_Q"].shape[0] if "ref_Q" in solved else None
            classes.append({"class": cls, "references": refs,
                            "trained_rows": cgroup.attrs.get("trained_rows")})
        out.append({"name": name, "descriptor_set": attrs.get("descriptor_set"),
                    "settings": attrs.get("settings", {}), "created": attrs.get("created"),
                    "classes": classes})
    return out


def load_evaluation(path: str | os.PathLike) -> dict:
    """An ``evaluate --json`` file, with its plot paths resolved to existing files."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read evaluation file ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise InputError(f"{path}: not an evaluation result (write one with "
                         "`oamlm-dist evaluate --json FILE`)")
    plots = []
    for plot in data.get("plots", []):
        candidates = [Path(plot)] if os.path.isabs(plot) else [path.parent / plot, Path(plot)]
        found = next((c for c in candidates if c.is_file()), None)
        plots.append({"path": str(found or plot), "exists": found is not None})
    data["plots"] = plots
    data["source"] = str(path)
    return data


def campaign_section(campaign) -> dict:
    """Stage status and the files a campaign's evaluate and optimize stages wrote."""
    from oamlm_dist.campaign import STAGES, campaign_status

    status = campaign_status(campaign)
    settings = {}
    for stage in STAGES:
        spec = getattr(campaign, stage)
        if spec is not None:
            settings[stage] = {k: v for k, v in vars(spec).items() if v not in (None, {}, [])}
    artefacts: dict[str, list[str]] = {"evaluate": [], "optimize": []}
    if campaign.evaluate and campaign.evaluate.plots and campaign.fit:
        plots_dir = Path(campaign.evaluate.plots)
        if plots_dir.is_dir():
            artefacts["evaluate"] = [str(p) for p in
                                     sorted(plots_dir.glob(f"{campaign.fit.model}-*.png"))]
    if campaign.optimize:
        out = Path(campaign.optimize.out)
        for structure in campaign.optimize.structures:
            stem = Path(structure).stem
            for suffix in ("-hybrid.png", "-final.extxyz", "-hybrid.traj"):
                if (out / f"{stem}{suffix}").is_file():
                    artefacts["optimize"].append(str(out / f"{stem}{suffix}"))
    return {"name": campaign.name, "store": campaign.store, "stages": status["stages"],
            "settings": settings, "artefacts": artefacts,
            "fmax": campaign.optimize.fmax if campaign.optimize else None}


def collect(store_path: str | os.PathLike, campaign=None,
            evaluations: list[str | os.PathLike] = ()) -> dict:
    """Everything the report shows, as one JSON-able dict."""
    from oamlm_dist.info import store_info

    store = Store.open(store_path, mode="r")
    info = store_info(store_path)
    runs, failed = optimisation_runs(store), failures(store)
    _attach_failures(runs, failed)
    return {"store": info, "models": models(store), "optimisations": runs, "failures": failed,
            "evaluations": [load_evaluation(path) for path in evaluations],
            "campaign": campaign_section(campaign) if campaign is not None else None}


# ---- writing -------------------------------------------------------------------------------

def write_report(store_path: str | os.PathLike, out: str | os.PathLike = "report.md",
                 campaign=None, evaluations: list[str | os.PathLike] = (),
                 fmax_target: float | None = None) -> dict:
    """Write the Markdown report to ``out`` and one plot per optimisation next to it.

    Parameters
    ----------
    store_path : path
        The store (opened read-only).
    out : path
        The Markdown file; the plots go to ``<out stem>-figures/`` beside it, and links in
        the report are relative to its directory.
    campaign : Campaign, optional
        A loaded :class:`~oamlm_dist.campaign.Campaign`: adds its stage status and the
        files its stages wrote; its optimize ``fmax`` is the plots' target line.
    evaluations : list of paths
        ``evaluate --json`` files to include with their plots.
    fmax_target : float, optional
        Target line in the optimisation plots (overrides the campaign's).

    Returns
    -------
    dict
        ``{"report": path, "plots": [paths]}``.

    Raises
    ------
    StoreError, InputError
        No store at ``store_path``; an unreadable or malformed evaluation file.
    """
    from oamlm_dist.optimize.plots import plot_rounds

    data = collect(store_path, campaign, evaluations)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmax_target is None and data["campaign"]:
        fmax_target = data["campaign"]["fmax"]
    plots = []
    plot_dir = out.parent / f"{out.stem}-figures"
    for run in data["optimisations"]:
        plot_dir.mkdir(exist_ok=True)
        path = plot_dir / f"{_slug(run['label'])}.png"
        if str(path) in plots:  # two names with the same file-safe form
            path = plot_dir / f"{_slug(run['label'])}-{len(plots)}.png"
        rounds = [{**r, "energy": math.nan if r["energy"] is None else r["energy"]}
                  for r in run["rounds"]]
        plot_rounds(rounds, path, title=f"{run['label']}: fine calls from the store",
                    fmax_target=fmax_target)
        run["plot"] = str(path)
        plots.append(str(path))
    out.write_text(render(data, out.parent, fmax_target))
    return {"report": str(out), "plots": plots}


def _attach_failures(runs: list[dict], failed: list[dict]) -> None:
    """Give each failure to the run it stopped: same name, ended one fine call before it
    (the latest such run, as a failure record of a rerun replaces the earlier one)."""
    for record in failed:
        for run in reversed(runs):
            if run["name"] == record["optimisation"] and (
                    record["fine_call"] is None or run["fine_calls"] == record["fine_call"] - 1):
                run.setdefault("failures", []).append(record)
                break


def render(data: dict, base: Path, fmax_target: float | None = None) -> str:
    """The Markdown text of :func:`collect`'s data; links are relative to ``base``."""
    info = data["store"]
    lines = [f"# oamlm-dist report: {Path(info['path']).name}", "",
             f"- store: `{info['path']}` (layout {info['layout_version']}, created "
             f"{info['created']})",
             f"- written: {now_iso()}",
             f"- {info['frames']} frames in {info['segments']} segments, {info['atoms']} atoms, "
             f"elements {' '.join(info['elements']) or '-'}", ""]
    if data["campaign"]:
        lines += _campaign_lines(data["campaign"], base)
    lines += _frame_lines(info)
    lines += _descriptor_lines(info["descriptor_sets"])
    lines += _model_lines(data["models"])
    lines += _evaluation_lines(data["evaluations"], base)
    lines += _optimisation_lines(data["optimisations"], base, fmax_target)
    lines += _failure_lines(data["failures"])
    return "\n".join(lines).rstrip() + "\n"


def _campaign_lines(campaign: dict, base: Path) -> list[str]:
    lines = [f"## Campaign `{campaign['name']}`", "", f"Store in the campaign file: "
             f"`{campaign['store']}`", "", "| stage | state | progress | settings |",
             "| --- | --- | --- | --- |"]
    for stage, entry in campaign["stages"].items():
        progress = ", ".join(f"{k} {_fmt_value(v)}" for k, v in entry.items() if k != "done")
        settings = ", ".join(f"{k}={_fmt_value(v)}"
                             for k, v in campaign["settings"].get(stage, {}).items())
        lines.append(_row(stage, "done" if entry["done"] else "pending", progress or "-",
                          settings))
    lines.append("")
    files = campaign["artefacts"]["optimize"] + campaign["artefacts"]["evaluate"]
    if files:
        lines += ["Files written by the campaign:", ""]
        lines += [f"- [{Path(f).name}]({_link(f, base)})" for f in files]
        lines.append("")
    for image in campaign["artefacts"]["evaluate"]:
        lines += [f"![{Path(image).stem}]({_link(image, base)})", ""]
    return lines


def _frame_lines(info: dict) -> list[str]:
    lines = ["## Frames", ""]
    if not info["segments_detail"]:
        return lines + ["The store holds no frames.", ""]
    by_kind: dict[str, dict] = {}
    for seg in info["segments_detail"]:
        entry = by_kind.setdefault(seg["kind"], {"segments": 0, "frames": 0, "partial": 0})
        entry["segments"] += 1
        entry["frames"] += seg["frames"]
        entry["partial"] += not seg["complete"]
    lines += ["| kind | segments | frames | incomplete segments |", "| --- | ---: | ---: | ---: |"]
    lines += [_row(kind, e["segments"], e["frames"], e["partial"])
              for kind, e in sorted(by_kind.items())]
    listed = [s for s in info["segments_detail"] if s["kind"] != "fine"]
    if listed:
        lines += ["", "Segments other than fine calculations (those are listed under "
                  "Optimisations):", "", "| id | kind | frames | state | source |",
                  "| ---: | --- | ---: | --- | --- |"]
        for seg in listed[:MAX_SEGMENT_ROWS]:
            lines.append(_row(seg["id"], seg["kind"], seg["frames"],
                              "complete" if seg["complete"] else "partial",
                              f"`{seg['source']}`" if seg["source"] else "-"))
        if len(listed) > MAX_SEGMENT_ROWS:
            lines.append(f"\n... and {len(listed) - MAX_SEGMENT_ROWS} more segments "
                         "(`oamlm-dist info` lists all).")
    return lines + [""]


def _descriptor_lines(sets: list[dict]) -> list[str]:
    lines = ["## Descriptor sets", ""]
    if not sets:
        return lines + ["None (run `oamlm-dist describe`).", ""]
    for dset in sets:
        spec, soap = dset["spec"], dset["spec"]["soap"]
        lines += [f"### `{dset['name']}`", "",
                  f"scheme {spec['scheme']}, SOAP r_cut={soap['r_cut']} n_max={soap['n_max']} "
                  f"l_max={soap['l_max']} sigma={soap['sigma']}, species "
                  f"{' '.join(soap.get('species', [])) or '-'}, neighbours M={spec['neighbours']};"
                  f" {dset['blocks_done']} of {dset['blocks_planned']} blocks of the frames now "
                  "in the store described", "",
                  "| class | rows |", "| --- | ---: |"]
        lines += [_row(cls, n) for cls, n in dset["rows"].items()]
        lines.append(_row("**total**", f"**{sum(dset['rows'].values())}**"))
        lines.append("")
    return lines


def _model_lines(model_list: list[dict]) -> list[str]:
    lines = ["## Models", ""]
    if not model_list:
        return lines + ["None (run `oamlm-dist fit`).", ""]
    for model in model_list:
        settings = ", ".join(f"{k}={_fmt_value(v)}" for k, v in model["settings"].items()
                             if v is not None)
        lines += [f"### `{model['name']}`", "",
                  f"- descriptor set: `{model['descriptor_set']}`",
                  f"- created: {model['created']}", f"- settings: {settings}", "",
                  "| class | references | trained rows |", "| --- | ---: | ---: |"]
        lines += [_row(c["class"], _fmt_value(c["references"]), _fmt_value(c["trained_rows"]))
                  for c in model["classes"]]
        lines.append("")
    return lines


def _evaluation_lines(evaluations: list[dict], base: Path) -> list[str]:
    if not evaluations:
        return []
    lines = ["## Evaluation", ""]
    for ev in evaluations:
        lines += [f"### model `{ev.get('model')}` on {ev.get('frames', '?')} test frames", "",
                  f"From `{ev['source']}`; direction loss {ev.get('method') or 'the model’s'}."
                  " Weighted-average angle with |F|² weights.", "",
                  "| class | n | w. angle (°) | mean (°) | median (°) | norm MAE | norm RMSE "
                  "| F MAE |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for cls, m in ev["classes"].items():
            lines.append(_row(cls, m.get("n", "-"), *(_num(m.get(k), 2) for k in (
                "weighted_angle_deg", "mean_angle_deg", "median_angle_deg")),
                *(_num(m.get(k), 3) for k in ("norm_mae", "norm_rmse", "force_mae"))))
        lines.append("")
        for plot in ev["plots"]:
            if plot["exists"]:
                lines += [f"![{Path(plot['path']).stem}]({_link(plot['path'], base)})", ""]
            else:
                lines += [f"(plot `{plot['path']}` not found)", ""]
    return lines


def _optimisation_lines(runs: list[dict], base: Path, fmax_target: float | None) -> list[str]:
    lines = ["## Optimisations", ""]
    if not runs:
        return lines + ["No fine calculations in this store.", ""]
    lines += ["Energies and fmax (eV/Å, over all atoms) of the last fine calculation; "
              "*reached by* counts how each fine geometry was reached: `start`, `ml` (an ML-BFGS "
              "round), `fine-step` (a Gaussian-process or BFGS step on the fine results) or "
              "`backtrack` (a step from the best point after an uphill ML round).", ""]
    header = "| optimisation | calculator | fine calls | final energy (eV) | final fmax | " \
             "best energy (eV) | reached by |"
    if fmax_target is not None:
        header += f" fmax ≤ {fmax_target} |"
    lines += [header, "| --- " * (8 if fmax_target is not None else 7) + "|"]
    for run in runs:
        cells = [run["label"], run["calculator"] or "-", run["fine_calls"],
                 _num(run["energy"], 4), _num(run["fmax"], 4), _num(run["best_energy"], 4),
                 ", ".join(f"{k} {n}" for k, n in run["reached_by"].items())]
        if fmax_target is not None:
            cells.append("yes" if run["fmax"] <= fmax_target else "no")
        lines.append(_row(*cells))
    lines.append("")
    for run in runs:
        lines += [f"### {run['label']}", ""]
        for stop in run.get("failures", []):
            lines += [f"Stopped by a failed fine calculation (`{stop['key']}`): "
                      f"{_cell(stop['reason'])}", ""]
        if run.get("plot"):
            lines += [f"![{run['label']}]({_link(run['plot'], base)})", ""]
        lines += ["<details><summary>fine calls</summary>", "",
                  "| fine call | reached by | energy (eV) | fmax (eV/Å) | segment |",
                  "| ---: | --- | ---: | ---: | ---: |"]
        lines += [_row(r["fine_call"], r["kind"], _num(r["energy"], 4), _num(r["fmax"], 4),
                       r["segment"]) for r in run["rounds"]]
        lines += ["", "</details>", ""]
    return lines


def _failure_lines(failed: list[dict]) -> list[str]:
    lines = ["## Failures", ""]
    if not failed:
        return lines + ["No failed fine calculations recorded.", ""]
    lines += ["| record | optimisation | attempts | reason | time |",
              "| --- | --- | ---: | --- | --- |"]
    lines += [_row(f"`{f['key']}`", f["optimisation"] or "-", f["attempts"], f["reason"],
                   f["time"] or "-") for f in failed]
    return lines + [""]


# ---- helpers -------------------------------------------------------------------------------

def _cell(value) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _row(*cells) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return str(value)


def _link(path: str | os.PathLike, base: Path) -> str:
    """``path`` relative to the report's directory, with forward slashes and spaces escaped."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    return Path(relative).as_posix().replace(" ", "%20")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "optimisation"
