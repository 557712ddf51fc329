"""The ``oamlm-dist`` command. Errors a user can cause end as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys

from oamlm_dist import __version__
from oamlm_dist.errors import InputError, OamlmError

EXIT_USER_ERROR = 2


def _cmd_ingest(args: argparse.Namespace) -> None:
    from oamlm_dist.ingest import ingest

    reports = ingest(args.store, args.files, skip_bad=args.skip_bad)
    for report in reports:
        print(report.line())
        for problem in report.problems:
            print(f"  skipped: {problem}")


def _cmd_info(args: argparse.Namespace) -> None:
    from oamlm_dist.info import store_info

    info = store_info(args.store)
    if args.json:
        print(json.dumps(info))
    else:
        from oamlm_dist.info import format_info

        print(format_info(info))


def _cmd_sample(args: argparse.Namespace) -> None:
    from oamlm_dist.cluster import get_client
    from oamlm_dist.sample import MDSettings, sample

    settings = MDSettings(
        temperature=args.temperature, steps=args.steps, timestep=args.timestep,
        thermostat=args.thermostat, friction=args.friction, interval=args.interval,
        seed=args.seed,
    )
    calc_params = _parse_params(args.calc_param)
    settings.validate()  # settings errors before a cluster is started
    if args.runs < 1:
        raise InputError(f"sample: --runs must be >= 1, got {args.runs}")
    with get_client(args.scheduler, n_workers=args.workers) as client:
        summary = sample(args.store, args.structures, args.calculator, calc_params, settings,
                         runs=args.runs, client=client)
    print(json.dumps(summary))


def _cmd_describe(args: argparse.Namespace) -> None:
    from oamlm_dist.cluster import get_client
    from oamlm_dist.describe import describe

    with get_client(args.scheduler, n_workers=args.workers) as client:
        summary = describe(args.store, args.scheme, args.soap, client,
                           neighbours=args.neighbours, max_permutations=args.max_permutations,
                           block_frames=args.block_frames)
    print(json.dumps(summary))


def _cmd_fit(args: argparse.Namespace) -> None:
    from oamlm_dist.cluster import get_client
    from oamlm_dist.training import FitSettings, fit, update

    settings = FitSettings(
        references=args.references, robust_epsilon=args.robust, seed=args.seed,
        pool_size=args.pool_size, method=args.loss, accept=args.accept,
        frames=args.frames, train_rows=args.train_rows)
    if not args.update:
        settings.validate()  # settings errors before a cluster is started
    with get_client(args.scheduler, n_workers=args.workers) as client:
        if args.update:
            summary = update(args.store, args.model, client, new_weight=args.new_weight)
        else:
            summary = fit(args.store, args.model, client, settings, classes=args.classes,
                          descriptor_set=args.set)
    print(json.dumps(summary))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from oamlm_dist.cluster import get_client
    from oamlm_dist.evaluate import evaluate, format_report

    with get_client(args.scheduler, n_workers=args.workers) as client:
        report = evaluate(args.store, args.model, args.test, client, method=args.loss,
                          plots=args.plots)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    print(format_report(report))


def _cmd_optimize(args: argparse.Namespace) -> None:
    from oamlm_dist.cluster import get_client
    from oamlm_dist.optimize.hybrid import HybridSettings
    from oamlm_dist.optimize.run import check_fine_only, optimize

    check_fine_only(args.fine_only, args.model, args.ensemble)
    if args.max_uncertainty is not None and not args.ensemble:
        raise InputError("optimize: --max-uncertainty needs --ensemble NAME (the ensemble "
                         "whose uncertainty it limits)")
    given = {name: value for name, value in (("max_uncertainty", args.max_uncertainty),
                                             ("agree_deg", args.agree_deg)) if value is not None}
    settings = HybridSettings(fmax=args.fmax, max_fine=args.max_fine, ml_maxstep=args.maxstep,
                              fine_timeout_s=args.fine_timeout, speculate=args.speculate,
                              fine_gp=args.fine_gp, **given)
    with get_client(args.scheduler, n_workers=args.workers) as client:
        results = optimize(args.structures, args.store, client, args.calculator,
                           _parse_params(args.calc_param), settings, model=args.model,
                           scheme=args.scheme, out_dir=args.out, ensemble=args.ensemble,
                           fine_only=args.fine_only)
    keys = ("converged", "fine_calls", "ml_calls", "energy", "fmax", "wall_s", "trajectory")
    lines = [{k: r[k] for k in ("name", *keys)} | {"stopped": r["stopped"]} for r in results]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    if len(results) == 1:
        print(json.dumps({k: results[0][k] for k in keys}))
    else:
        for line in lines:
            print(json.dumps(line))
        print(json.dumps({"converged": all(r["converged"] for r in results),
                          "fine_calls": sum(r["fine_calls"] for r in results),
                          "ml_calls": sum(r["ml_calls"] for r in results),
                          "structures": len(results),
                          "wall_s": max(r["wall_s"] for r in results)}))
    if not all(r["converged"] for r in results):
        for r in results:
            if r["stopped"]:
                print(f"oamlm-dist optimize: {r['name']}: {r['stopped']}", file=sys.stderr)


def _cmd_campaign(args: argparse.Namespace) -> None:
    from oamlm_dist.campaign import campaign_status, load_campaign, run_campaign

    campaign = load_campaign(args.file)
    if args.action == "status":
        status = campaign_status(campaign)
        for stage, entry in status["stages"].items():
            extra = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "done")
            print(f"{stage:<9} {'done' if entry['done'] else 'pending':<8} {extra}")
        print(json.dumps(status))
        return
    from oamlm_dist.cluster import get_client

    with get_client(campaign.cluster.scheduler, n_workers=campaign.cluster.workers) as client:
        results = run_campaign(campaign, client)
    summary = {"campaign": campaign.name, "store": campaign.store,
               "stages_run": list(results)}
    if "optimize" in results:
        summary["optimize"] = [{k: r[k] for k in ("name", "converged", "fine_calls", "energy")}
                               for r in results["optimize"]]
    if "evaluate" in results:
        summary["evaluate"] = {c: round(m["weighted_angle_deg"], 2)
                               for c, m in results["evaluate"]["classes"].items()}
    print(json.dumps(summary))


def _cmd_report(args: argparse.Namespace) -> None:
    from oamlm_dist.report import write_report

    campaign = None
    if args.campaign:
        from oamlm_dist.campaign import load_campaign

        campaign = load_campaign(args.campaign)
    store = args.store or (campaign.store if campaign else None)
    if store is None:
        raise OamlmError("give a STORE or --campaign FILE")
    result = write_report(store, args.out, campaign=campaign, evaluations=args.evaluation or [],
                          fmax_target=args.fmax)
    print(f"report: {result['report']} ({len(result['plots'])} optimisation plots)")
    print(json.dumps(result))


def _cmd_learn(args: argparse.Namespace) -> None:
    from oamlm_dist.active.loop import LearnSettings, learn
    from oamlm_dist.cluster import get_client
    from oamlm_dist.structures import parse_structures

    settings = LearnSettings(
        members=args.members, references=args.references, tolerance=args.tolerance,
        threshold=args.threshold, budget=args.budget, max_iterations=args.max_iterations,
        per_iteration=args.per_iteration, patience_additions=args.patience,
        patience_improvement=args.stall,
        sampler=args.sampler, candidates=args.candidates, rattle=args.rattle,
        md_steps=args.md_steps, md_temperature=args.temperature,
        chunk_cutoff=args.chunk_cutoff, vacuum=args.vacuum, seed=args.seed)
    settings.validate()  # settings errors before a cluster is started
    structures = parse_structures(args.structures)
    params = _parse_params(args.calc_param)

    def line(entry: dict) -> None:
        u = entry["max_uncertainty"]
        print(f"iteration {entry['iteration']}: additions {entry['additions']}, "
              f"max uncertainty {'-' if u is None else f'{u:.3f} eV/Å'}, "
              f"fine calls {entry['fine_calls']}"
              + ("" if entry.get("covered", True) else " (classes with < 2 training rows)"),
              flush=True)

    with get_client(args.scheduler, n_workers=args.workers) as client:
        summary = learn(args.store, args.model, structures, client, args.calculator, params,
                        settings, initial=args.frames, on_iteration=line)
    print(json.dumps(summary))


def _cmd_hpo(args: argparse.Namespace) -> None:
    from oamlm_dist.hpo import SearchSpace, Split, hpo_report, run_hpo

    if args.report:
        report = hpo_report(args.store, args.run, plot=args.plot)
        print(f"run {report['run']}")
        for stage, s in report["stages"].items():
            failed = ", ".join(f"{k} {v}" for k, v in s["failed"].items()) or "none"
            print(f"{stage}: {s['evaluations']} evaluations in {s['iterations']} iterations "
                  f"(failed: {failed}), mean {s['mean_wall_s']:.2f} s on "
                  f"{len(s['workers'])} worker(s); best {s['objective']} at "
                  f"{json.dumps(s['best'])}")
        print(f"plot: {report['plot']}")
        return
    if not args.space:
        raise InputError("hpo: give --space FILE (or --report)")
    if args.particles < 1 or args.iterations < 1:
        raise InputError("hpo: --particles and --iterations must be >= 1")
    space = SearchSpace.from_yaml(args.space)
    split = Split(train=args.train, validation=args.validation,
                  fraction=args.validation_fraction, seed=args.seed)
    options = dict(particles=args.particles, iterations=args.iterations,
                   strategy=args.strategy, run=args.run, split=split, timeout=args.timeout,
                   seed=args.seed, scheme=args.scheme, norm_weight=args.norm_weight,
                   skew_weight=args.skew_weight, zeta=args.zeta, inertia=args.inertia,
                   restart=args.restart, progress=lambda line: print(line, flush=True))
    if args.in_process:
        result = run_hpo(args.store, space, **options)
    else:
        import os

        from oamlm_dist.cluster import get_client

        workers = args.workers or min(args.particles, os.cpu_count() or 1)
        with get_client(args.scheduler, n_workers=workers) as client:
            result = run_hpo(args.store, space, client=client, **options)
    print(json.dumps(result))


def _parse_params(items: list[str] | None) -> dict:
    """``key=value`` pairs; values parsed as JSON when possible (numbers, booleans)."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise OamlmError(f"calculator parameter {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oamlm-dist",
        description="Dask-distributed active optimisation of atomic structures with "
        "EMLM/OAMLM force models.",
    )
    parser.add_argument("--version", action="version", version=f"oamlm-dist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="add ASE trajectories with forces to a store")
    p.add_argument("store")
    p.add_argument("files", nargs="+")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip frames that fail validation instead of stopping")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("info", help="show what a store holds")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("sample", help="run MD with a fine calculator on Dask workers")
    p.add_argument("store")
    p.add_argument("--calculator", default="xtb", help="xtb (default), gpaw or emt")
    p.add_argument("--calc-param", action="append", metavar="KEY=VALUE",
                   help="calculator setting, e.g. method=GFN1-xTB (repeatable)")
    p.add_argument("--structures", required=True,
                   help="e.g. rings:4-6,alkanes:2-7,au38 or a structure file")
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--timestep", type=float, default=1.5, help="fs")
    p.add_argument("--thermostat", choices=["verlet", "langevin"], default="verlet")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--interval", type=int, default=1, help="store every n-th step")
    p.add_argument("--runs", type=int, default=1, help="independent runs per structure")
    p.add_argument("--seed", type=int, default=0)
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("describe", help="atom classes, neighbourhoods and SOAP rows per class")
    p.add_argument("store")
    p.add_argument("--scheme", choices=["thiolate", "element"], default="thiolate")
    p.add_argument("--soap", default=None,
                   help="e.g. r_cut=4,n_max=7,l_max=4,sigma=0.25 (the defaults)")
    p.add_argument("--neighbours", type=int, default=4, help="M of the element scheme")
    p.add_argument("--max-permutations", type=int, default=None,
                   help="element scheme: pair only neighbours of equal element, with at most "
                        "this many permutations (default: all M! on bare positions)")
    p.add_argument("--block-frames", type=int, default=100, help="frames per Dask task")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_describe)

    p = sub.add_parser("fit", help="train EMLM norms and OAMLM directions per class")
    p.add_argument("store")
    p.add_argument("--model", required=True, help="model name (models/NAME in the store)")
    p.add_argument("--references", type=int, default=2500, help="K per class")
    p.add_argument("--robust", type=float, default=None, metavar="EPS",
                   help="Huber-robust directions with this epsilon in [1, 2]")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes")
    p.add_argument("--frames", default=None,
                   help="training segments: ids, a-b, name:GLOB, kind:KIND, ~ excludes")
    p.add_argument("--loss", choices=["analytic", "exact", "sqp"], default="analytic",
                   help="default direction loss of the model")
    p.add_argument("--accept", action="store_true",
                   help="use only references with g_j - d_g,j <= 0 when predicting")
    p.add_argument("--train-rows", choices=["all", "references"], default="all",
                   help="train on all rows of the selected frames, or only on the K "
                   "references (N = K, the sources' protocol)")
    p.add_argument("--seed", type=int, default=0, help="RS-maximin random start")
    p.add_argument("--pool-size", type=int, default=None, help="RS-maximin candidate pool")
    p.add_argument("--set", default=None, help="descriptor set (default: the newest)")
    p.add_argument("--update", action="store_true",
                   help="add newly described frames to an existing model")
    p.add_argument("--new-weight", type=float, default=1.0,
                   help="with --update: weight of the new rows")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("evaluate", help="force errors of a model on test trajectories")
    p.add_argument("store")
    p.add_argument("--model", required=True)
    p.add_argument("--test", nargs="+", required=True, help="trajectories with forces")
    p.add_argument("--loss", choices=["analytic", "exact", "sqp"], default=None,
                   help="direction loss (default: the model's)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--plots", default=None, help="directory for the per-class plots")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("optimize", help="hybrid ML/fine relaxation of structures")
    p.add_argument("structures", nargs="+", help="structure files (the last frame is used)")
    p.add_argument("--store", required=True, help="store for fine results (created if missing)")
    p.add_argument("--model", default=None, help="pre-trained model (default: cold start)")
    p.add_argument("--calculator", default="xtb", help="xtb (default), gpaw or emt")
    p.add_argument("--calc-param", action="append", metavar="KEY=VALUE")
    p.add_argument("--fmax", type=float, default=0.05, help="eV/Å, on fine forces")
    p.add_argument("--max-fine", type=int, default=100, help="fine-call budget per structure")
    p.add_argument("--maxstep", type=float, default=0.1, help="ML-BFGS step cap (Å)")
    p.add_argument("--no-speculate", dest="speculate", action="store_false",
                   help="do not relax on the ML model while a fine calculation runs")
    p.add_argument("--fine-bfgs", dest="fine_gp", action="store_false",
                   help="BFGS steps on fine results where the model disagrees (default: "
                        "a Gaussian process over inverse distances while it fits in about "
                        "300 MB)")
    p.add_argument("--agree-deg", type=float, default=None, metavar="DEG",
                   help="an ML round follows where the model's force changes agree with the "
                        "fine ones to this angle (default 10)")
    p.add_argument("--fine-only", action="store_true",
                   help="no model: only the steps on fine results (with --fine-bfgs, BFGS's)")
    p.add_argument("--fine-timeout", type=float, default=None, metavar="SECONDS",
                   help="a fine calculation running longer counts as failed (default: none)")
    p.add_argument("--scheme", choices=["thiolate", "element"], default=None,
                   help="cold start: atom-class scheme (default from the elements)")
    p.add_argument("--ensemble", default=None, metavar="NAME",
                   help="bootstrap ensemble of the store (from learn): an ML round ends where "
                        "its uncertainty exceeds --max-uncertainty")
    p.add_argument("--max-uncertainty", type=float, default=None, metavar="EV_PER_A",
                   help="uncertainty limit of an ML round with --ensemble (default 1.0)")
    p.add_argument("--out", default=".", help="directory for trajectories and final frames")
    p.add_argument("--json", default=None, help="write all results here")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_optimize)

    p = sub.add_parser("campaign", help="run, resume or inspect a campaign file")
    p.add_argument("action", choices=["run", "resume", "status"])
    p.add_argument("file", help="campaign YAML")
    p.set_defaults(func=_cmd_campaign)

    p = sub.add_parser("report", help="write a Markdown summary of a store or campaign")
    p.add_argument("store", nargs="?", default=None,
                   help="the store (default: the --campaign file's store)")
    p.add_argument("--campaign", default=None, help="campaign YAML: stage status and its files")
    p.add_argument("--evaluation", action="append", metavar="JSON",
                   help="an `evaluate --json` result to include with its plots (repeatable)")
    p.add_argument("--fmax", type=float, default=None,
                   help="fmax target line in the optimisation plots (default: the campaign's)")
    p.add_argument("--out", default="report.md",
                   help="Markdown file; plots go to <stem>-figures/ beside it")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("learn", help="active learning: ensemble uncertainty, fine checks, "
                       "retraining")
    p.add_argument("store")
    p.add_argument("--model", required=True,
                   help="loop name; state in active/NAME, ensemble in models/NAME-m<j>")
    p.add_argument("--structures", required=True,
                   help="start structures: e.g. rings:4-6, alkanes:2-3, au38 or a structure file")
    p.add_argument("--calculator", choices=["xtb", "gpaw", "emt"], default="xtb")
    p.add_argument("--calc-param", action="append", metavar="KEY=VALUE")
    p.add_argument("--budget", type=int, required=True, help="fine calls in total")
    p.add_argument("--members", type=int, default=4, help="bootstrap ensemble size")
    p.add_argument("--references", type=int, default=500, help="K per class and member")
    p.add_argument("--tolerance", type=float, default=0.3,
                   help="eV/Å: a checked item whose force error exceeds this is added")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="eV/Å: stop when the largest atomic uncertainty is below this")
    p.add_argument("--max-iterations", type=int, default=20)
    p.add_argument("--per-iteration", type=int, default=4, help="fine calls per iteration")
    p.add_argument("--patience", type=int, default=5,
                   help="stop after this many iterations without additions")
    p.add_argument("--stall", type=int, default=2,
                   help="stop after this many iterations without a lower max uncertainty")
    p.add_argument("--sampler", choices=["rattle", "md"], default="rattle",
                   help="candidates: rattled copies or ML-driven MD on the ensemble mean")
    p.add_argument("--candidates", type=int, default=8, help="per start structure")
    p.add_argument("--rattle", type=float, default=0.1, help="Å, rattle sampler")
    p.add_argument("--md-steps", type=int, default=40)
    p.add_argument("--temperature", type=float, default=500.0, help="K, MD sampler")
    p.add_argument("--chunk-cutoff", type=float, default=None,
                   help="Å: check the most uncertain atoms by nearsighted chunks")
    p.add_argument("--vacuum", type=float, default=6.0, help="Å around each chunk")
    p.add_argument("--frames", default=None,
                   help="initial training segments (default: all frames in the store)")
    p.add_argument("--seed", type=int, default=0)
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("hpo", help="particle swarm search of SOAP and model hyper-parameters")
    p.add_argument("store")
    p.add_argument("--space", default=None,
                   help="YAML: per parameter low, high, type: int|float, log: true (or value)")
    p.add_argument("--particles", type=int, default=16)
    p.add_argument("--iterations", type=int, default=30, help="per stage for strategy 2")
    p.add_argument("--strategy", type=int, choices=[1, 2], default=1,
                   help="1: all parameters on the force error; 2: SOAP from the kernel "
                   "distribution first, then the model parameters")
    p.add_argument("--run", default=None,
                   help="run name (default: from the settings; rerun to resume)")
    p.add_argument("--train", default=None, help="training segments (selector as for fit)")
    p.add_argument("--validation", default=None, help="validation segments")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="without selectors: random fraction of frames that validates")
    p.add_argument("--scheme", choices=["thiolate", "element"], default=None,
                   help="atom classes (default from the elements)")
    p.add_argument("--norm-weight", type=float, default=90.0,
                   help="objective = angle (deg) + w x normalised norm RMSE")
    p.add_argument("--skew-weight", type=float, default=0.05,
                   help="strategy 2 stage 1: -std + w x |skew| of the kernel")
    p.add_argument("--zeta", type=float, default=2.0, help="kernel exponent (stage 1)")
    p.add_argument("--inertia", type=float, default=0.0, help="swarm inertia (seed: 0)")
    p.add_argument("--restart", type=float, default=0.0,
                   help="re-draw a swarm collapsed within this fraction of every range")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per iteration; unfinished evaluations fail and are re-drawn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="evaluate without Dask")
    p.add_argument("--report", action="store_true",
                   help="summarise a recorded run and write its convergence plot")
    p.add_argument("--plot", default=None, help="with --report: PNG path")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_hpo)
    return parser


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default=None,
                   help="scheduler address or deploy/*.yaml (default: a local cluster)")
    p.add_argument("--workers", type=int, default=None, help="local cluster size")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OamlmError as exc:
        print(f"oamlm-dist {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"oamlm-dist {args.command}: interrupted; stored results are kept, rerun to "
              "resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
