"""Campaign files: a whole pipeline (sample/ingest, describe, optionally a hyper-parameter
search, fit, evaluate, optimise) in one YAML file, validated completely before anything runs.

Each stage is itself resumable (done-markers per block), and a finished stage is marked done
under ``done/campaign/<name>/``, so ``campaign resume`` (the same as running again) continues
where a killed campaign stopped.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from oamlm_dist.errors import InputError
from oamlm_dist.store import Store


@dataclass
class ClusterStage:
    scheduler: str | None = None
    workers: int | None = None


@dataclass
class SampleStage:
    structures: str
    calculator: str = "xtb"
    calc_params: dict = field(default_factory=dict)
    temperature: float = 500.0
    steps: int = 1000
    timestep: float = 1.5
    interval: int = 1
    thermostat: str = "verlet"
    runs: int = 1
    seed: int = 0


@dataclass
class IngestStage:
    files: list[str]
    skip_bad: bool = False


@dataclass
class DescribeStage:
    scheme: str = "thiolate"
    soap: str | None = None
    neighbours: int = 4
    max_permutations: int | None = None
    block_frames: int = 100


@dataclass
class HpoStage:
    """A particle-swarm search whose best parameters the fit stage then uses (SOAP settings
    found by it mean a second describe with them before the fit)."""

    space: str  # search-space YAML (see oamlm_dist.hpo.SearchSpace.from_dict)
    particles: int = 16
    iterations: int = 30
    strategy: int = 1
    seed: int = 0
    timeout: float | None = None  # s per evaluation


@dataclass
class FitStage:
    model: str
    references: int = 2500
    robust: float | None = None
    frames: str | None = None
    train_rows: str = "all"
    loss: str = "analytic"
    accept: bool = False
    seed: int = 0
    pool_size: int | None = None


@dataclass
class EvaluateStage:
    test: list[str]
    loss: str | None = None
    plots: str | None = None


@dataclass
class OptimizeStage:
    """Keys it shares with :class:`~oamlm_dist.optimize.hybrid.HybridSettings`, set to None
    or left out, take that class's defaults."""

    structures: list[str]
    calculator: str = "xtb"
    calc_params: dict = field(default_factory=dict)
    fmax: float | None = None  # eV/Å, on fine forces
    max_fine: int | None = None
    fine_timeout_s: float | None = None  # None: no time limit
    speculate: bool | None = None
    fine_gp: bool | None = None  # Gaussian-process steps on fine results (False: BFGS)
    use_model: bool = True  # the fit stage's model (False, or no fit stage: a cold start)
    fine_only: bool = False  # no model at all: only the steps on fine results
    agree_deg: float | None = None  # ML rounds' agreement angle
    ensemble: str | None = None  # bootstrap ensemble of the store (from learn)
    max_uncertainty: float | None = None  # eV/Å, ends an ML round with an ensemble
    out: str = "relax"

    def hybrid_settings(self):
        """The stage's :class:`~oamlm_dist.optimize.hybrid.HybridSettings`."""
        from oamlm_dist.optimize.hybrid import HybridSettings

        shared = ({f.name for f in dataclasses.fields(self)}
                  & {f.name for f in dataclasses.fields(HybridSettings)})
        return HybridSettings(**{name: getattr(self, name) for name in shared
                                 if getattr(self, name) is not None})


@dataclass
class Campaign:
    name: str
    store: str
    cluster: ClusterStage = field(default_factory=ClusterStage)
    sample: SampleStage | None = None
    ingest: IngestStage | None = None
    describe: DescribeStage | None = None
    hpo: HpoStage | None = None
    fit: FitStage | None = None
    evaluate: EvaluateStage | None = None
    optimize: OptimizeStage | None = None


STAGES = ("ingest", "sample", "describe", "hpo", "fit", "evaluate", "optimize")


def _check(value, hint, where: str):
    """Validate ``value`` against a type hint (dataclass, Optional, list, dict, scalars)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(value, option, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise InputError(f"{where} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where} must be a mapping, got {type(value).__name__}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise InputError(f"{where} must be {hint.__name__}, got bool")
    if not isinstance(value, hint):
        raise InputError(f"{where} must be {hint.__name__}, got {type(value).__name__} "
                         f"{value!r}")
    return value


def _build(cls, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (allowed: "
                         f"{', '.join(sorted(known))})")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where}: missing key {missing[0]!r}")
    return cls(**{k: _check(v, hints[k], f"{where}.{k}" if where else k)
                  for k, v in data.items()})


def load_campaign(path: str | os.PathLike) -> Campaign:
    """Read and validate a campaign file; relative paths are taken from its directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read campaign file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: a campaign file is a mapping of stages")
    data.setdefault("name", path.stem)
    try:
        campaign = _build(Campaign, data, "")
    except InputError as exc:
        raise InputError(f"{path}: {str(exc).lstrip(': ')}") from exc
    if not any(getattr(campaign, s) for s in STAGES):
        raise InputError(f"{path}: no stages (give some of {', '.join(STAGES)})")
    if campaign.evaluate and not campaign.fit:
        raise InputError(f"{path}: evaluate needs a fit stage (the model to evaluate)")
    if campaign.hpo and not (campaign.fit and campaign.describe):
        raise InputError(f"{path}: hpo needs describe and fit stages (its results tune them)")
    base = path.parent

    def resolve(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    campaign.store = resolve(campaign.store)
    if campaign.hpo:
        from oamlm_dist.hpo import SearchSpace

        campaign.hpo.space = resolve(campaign.hpo.space)
        try:
            SearchSpace.from_yaml(campaign.hpo.space)
        except InputError as exc:
            raise InputError(f"{path}: hpo.space: {exc}") from exc
    if campaign.ingest:
        campaign.ingest.files = [resolve(f) for f in campaign.ingest.files]
    if campaign.evaluate:
        campaign.evaluate.test = [resolve(f) for f in campaign.evaluate.test]
        if campaign.evaluate.plots:
            campaign.evaluate.plots = resolve(campaign.evaluate.plots)
    if campaign.optimize:
        campaign.optimize.structures = [resolve(f) for f in campaign.optimize.structures]
        campaign.optimize.out = resolve(campaign.optimize.out)
        _check_optimize(path, campaign.optimize, campaign.store)
    return campaign


def _check_optimize(path: Path, spec: OptimizeStage, store: str) -> None:
    """Settings the optimize stage would reject only after the earlier stages ran."""
    from oamlm_dist.active.ensemble import ensemble_members
    from oamlm_dist.errors import StoreError

    bad = spec.hybrid_settings().out_of_range()
    if bad:
        name, value, unit = bad
        raise InputError(f"{path}: optimize.{name} must be > 0 {unit}, got {value}")
    if spec.fine_only and spec.ensemble:
        raise InputError(f"{path}: optimize.fine_only uses no model; drop optimize.ensemble")
    if spec.ensemble:  # campaigns have no learn stage: the ensemble must be there already
        try:
            found = len(ensemble_members(Store.open(store), spec.ensemble)) >= 2
        except StoreError:
            found = False
        if not found:
            raise InputError(f"{path}: optimize.ensemble {spec.ensemble!r}: no such ensemble "
                             f"in {store} (models/{spec.ensemble}-m<j>, written by learn)")


def _stage_key(campaign: Campaign) -> str:
    return f"campaign/{campaign.name}"


def run_campaign(campaign: Campaign, client, log=print) -> dict:
    """Run the stages that are not marked done, in pipeline order; returns their results."""
    from oamlm_dist.describe import describe
    from oamlm_dist.evaluate import evaluate
    from oamlm_dist.ingest import ingest
    from oamlm_dist.optimize.run import optimize
    from oamlm_dist.sample import MDSettings, sample
    from oamlm_dist.training import FitSettings, fit

    results = {}
    store = Store.create(campaign.store, exist_ok=True)
    done = store.done_keys(_stage_key(campaign))
    for stage in STAGES:
        spec = getattr(campaign, stage)
        if spec is None:
            continue
        if stage in done:
            log(f"campaign {campaign.name}: {stage} already done")
            continue
        log(f"campaign {campaign.name}: {stage} ...")
        if stage == "ingest":
            reports = ingest(campaign.store, spec.files, skip_bad=spec.skip_bad)
            results[stage] = [r.line() for r in reports]
        elif stage == "sample":
            md = MDSettings(temperature=spec.temperature, steps=spec.steps,
                            timestep=spec.timestep, thermostat=spec.thermostat,
                            interval=spec.interval, seed=spec.seed)
            results[stage] = sample(campaign.store, spec.structures, spec.calculator,
                                    spec.calc_params, md, runs=spec.runs, client=client)
        elif stage == "describe":
            results[stage] = describe(campaign.store, spec.scheme, spec.soap, client,
                                      neighbours=spec.neighbours,
                                      max_permutations=spec.max_permutations,
                                      block_frames=spec.block_frames)
        elif stage == "hpo":
            results[stage] = _search(campaign, client, log)
            Store.open(campaign.store, mode="a").mark_done(
                _stage_key(campaign), stage, {"best": results[stage]["best"]})
            continue
        elif stage == "fit":
            settings = FitSettings(references=spec.references, robust_epsilon=spec.robust,
                                   frames=spec.frames, train_rows=spec.train_rows,
                                   method=spec.loss, accept=spec.accept, seed=spec.seed,
                                   pool_size=spec.pool_size)
            descriptor_set = None
            if campaign.hpo:
                settings, descriptor_set = _tuned(campaign, settings, client)
            results[stage] = fit(campaign.store, spec.model, client, settings,
                                 descriptor_set=descriptor_set)
        elif stage == "evaluate":
            results[stage] = evaluate(campaign.store, campaign.fit.model, spec.test, client,
                                      method=spec.loss, plots=spec.plots)
        elif stage == "optimize":
            use_model = spec.use_model and campaign.fit and not spec.fine_only
            results[stage] = optimize(spec.structures, campaign.store, client, spec.calculator,
                                      spec.calc_params, spec.hybrid_settings(),
                                      model=campaign.fit.model if use_model else None,
                                      out_dir=spec.out, ensemble=spec.ensemble,
                                      fine_only=spec.fine_only)
        Store.open(campaign.store, mode="a").mark_done(_stage_key(campaign), stage)
    return results


def _search(campaign: Campaign, client, log) -> dict:
    from oamlm_dist.hpo import SearchSpace, run_hpo

    spec = campaign.hpo
    return run_hpo(campaign.store, SearchSpace.from_yaml(spec.space), particles=spec.particles,
                   iterations=spec.iterations, strategy=spec.strategy, seed=spec.seed,
                   timeout=spec.timeout, client=client, scheme=campaign.describe.scheme,
                   progress=lambda line: log(f"campaign {campaign.name}: hpo {line}"))


def _tuned(campaign: Campaign, settings, client) -> tuple:
    """Fit settings with the search's best parameters, and the descriptor set to fit on
    (described again when the search chose other SOAP settings; None: the newest set)."""
    from oamlm_dist.describe import DescriptorSpec, describe
    from oamlm_dist.descriptors import SoapSettings
    from oamlm_dist.hpo.objective import SOAP_PARAMETERS
    from oamlm_dist.training import resolve_descriptor_set

    store = Store.open(campaign.store)
    best = store.root[f"done/{_stage_key(campaign)}/hpo"].attrs["best"]
    descriptor_set = None
    soap_values = {k: best[k] for k in SOAP_PARAMETERS if k in best}
    if soap_values:
        spec = campaign.describe
        soap = dataclasses.replace(SoapSettings.parse(spec.soap) if spec.soap
                                   else SoapSettings(), **soap_values)
        descriptor_set = describe(campaign.store, spec.scheme, soap, client,
                                  neighbours=spec.neighbours,
                                  max_permutations=spec.max_permutations,
                                  block_frames=spec.block_frames)["set"]
    model = {k: best[k] for k in ("references", "beta", "robust_epsilon", "sigma1")
             if k in best}
    if "sigma2" in best:
        set_name = resolve_descriptor_set(store, descriptor_set)
        classes = DescriptorSpec.from_dict(store.root[f"classes/{set_name}"].attrs["spec"])
        model["sigma2"] = dict.fromkeys(classes.classes(), float(best["sigma2"]))
    return dataclasses.replace(settings, **model), descriptor_set


def campaign_status(campaign: Campaign) -> dict:
    """Per stage: done or not, with the store's own progress figures where there are any."""
    status = {"campaign": campaign.name, "store": campaign.store, "stages": {}}
    if not (Path(campaign.store) / "zarr.json").exists():
        for stage in STAGES:
            if getattr(campaign, stage):
                status["stages"][stage] = {"done": False}
        return status
    from oamlm_dist.info import store_info

    store = Store.open(campaign.store)
    done = store.done_keys(_stage_key(campaign))
    info = store_info(campaign.store)
    for stage in STAGES:
        if getattr(campaign, stage) is None:
            continue
        entry = {"done": stage in done}
        if stage in ("sample", "ingest"):
            entry["frames"] = info["frames"]
        elif stage == "describe" and info["descriptor_sets"]:
            newest = info["descriptor_sets"][-1]
            entry["blocks"] = f"{newest['blocks_done']}/{newest['blocks_planned']}"
        elif stage == "fit" and f"models/{campaign.fit.model}" in store.root:
            attrs = store.root[f"models/{campaign.fit.model}"].attrs
            entry["classes"] = attrs.get("classes", [])
        status["stages"][stage] = entry
    return status
