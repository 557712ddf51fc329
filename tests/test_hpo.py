"""Particle swarm hyper-parameter optimisation: swarm, Dask evaluation, resume, objectives."""

import json
import math
import time

import numpy as np
import pytest
from test_training import add_segment, md_frames

from oamlm_dist.cli import main
from oamlm_dist.errors import InputError
from oamlm_dist.hpo import (
    ForceObjective,
    KernelObjective,
    RunRecord,
    SearchSpace,
    Split,
    Swarm,
    hpo_report,
    run_hpo,
    run_swarm,
)
from oamlm_dist.store import Store

SHIFT = np.array([2.0, -0.5, 3.0, 0.7])
MINIMUM = {"a": 3, "b": 0.5, "c": 4, "d": 1.7}  # SHIFT + 1
SPACE = {"a": {"low": 0, "high": 6, "type": "int"}, "b": {"low": -3.0, "high": 3.0},
         "c": {"low": 0, "high": 8, "type": "int"}, "d": {"low": -3.0, "high": 4.0}}


def rosenbrock(params):
    """Shifted 4-D Rosenbrock; a and c are integers."""
    y = np.array([params["a"], params["b"], params["c"], params["d"]]) - SHIFT
    return float(np.sum(100.0 * (y[1:] - y[:-1] ** 2) ** 2 + (1.0 - y[:-1]) ** 2))


def flaky(params):
    """Fails (raises) or stalls for some parameters, Rosenbrock otherwise."""
    if params["a"] == 0:
        raise RuntimeError("diverged")
    if params["a"] == 6:
        time.sleep(2.0)
    return rosenbrock(params)


def space():
    return SearchSpace.from_dict(SPACE)


@pytest.fixture(scope="module")
def threads():
    """An in-process cluster: one worker with a thread per particle, so a stalled task
    holds one thread only."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=6, processes=False,
                           dashboard_address=":0")
    client = Client(cluster)
    yield client
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    client.close()
    cluster.close()


def test_swarm_finds_shifted_rosenbrock_minimum():
    # The seed's update (c1 = 1, c2 = 2) with inertia 0.5 and collapse restarts.
    result = run_swarm(rosenbrock, Swarm(space(), 24, seed=6, inertia=0.5, restart=1e-3), 150)
    assert result.objective < 1e-6
    assert result.best["a"] == MINIMUM["a"] and result.best["c"] == MINIMUM["c"]
    assert isinstance(result.best["a"], int)
    assert abs(result.best["b"] - MINIMUM["b"]) < 1e-3
    assert abs(result.best["d"] - MINIMUM["d"]) < 1e-3
    again = run_swarm(rosenbrock, Swarm(space(), 24, seed=6, inertia=0.5, restart=1e-3), 150)
    assert again.best == result.best and again.swarm.state_dict() == result.swarm.state_dict()


def test_swarm_rules():
    sw = Swarm(space(), 8, seed=1)
    lower, upper = sw.lower, sw.upper
    assert np.all(sw.v == 0) and np.all((sw.x >= lower) & (sw.x <= upper))
    x0 = sw.x.copy()
    scores = [rosenbrock(p) for p in sw.candidates()]
    scores[3] = math.inf  # failed particle
    sw.tell(scores)
    assert np.all((sw.x >= lower) & (sw.x <= upper))
    assert np.all(sw.v[3] == 0) and not np.allclose(sw.x[3], x0[3])
    assert sw.global_f == min(s for s in scores if math.isfinite(s))
    log = SearchSpace.from_dict({"k": {"low": 1, "high": 1000, "type": "int", "log": True}})
    values = [p["k"] for p in Swarm(log, 200, seed=0).candidates()]
    assert all(isinstance(v, int) and 1 <= v <= 1000 for v in values)
    assert np.median(values) < 100  # uniform in ln k
    with pytest.raises(InputError):
        SearchSpace.from_dict({"a": {"low": 2, "high": 1}})


def test_dask_path_matches_in_process_and_records(tmp_path, threads):
    store = Store.create(tmp_path / "s.zarr")
    local = run_swarm(rosenbrock, Swarm(space(), 6, seed=3), 4)
    dist = run_swarm(rosenbrock, Swarm(space(), 6, seed=3), 4, client=threads,
                     record=RunRecord(store, "hpo/r"))
    assert dist.swarm.state_dict() == local.swarm.state_dict()
    evals = RunRecord(store, "hpo/r").evaluations()
    assert len(evals) == 24 and {e["status"] for e in evals} == {"ok"}
    assert all(e["worker"].startswith(("tcp://", "inproc://")) for e in evals)
    assert min(e["objective"] for e in evals) == pytest.approx(dist.objective)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    store = Store.create(tmp_path / "s.zarr")
    full = run_swarm(rosenbrock, Swarm(space(), 5, seed=2), 6, record=RunRecord(store, "hpo/a"))
    run_swarm(rosenbrock, Swarm(space(), 5, seed=2), 3, record=RunRecord(store, "hpo/b"))
    # A fresh process: nothing but the store carries the state.
    fresh = Swarm(space(), 5, seed=2)
    resumed = run_swarm(rosenbrock, fresh, 6, record=RunRecord(store, "hpo/b"))
    assert resumed.swarm.state_dict() == full.swarm.state_dict()
    assert resumed.best == full.best and resumed.objective == full.objective
    records = [RunRecord(store, f"hpo/{r}").evaluations() for r in "ab"]
    assert [e["params"] for e in records[0]] == [e["params"] for e in records[1]]
    with pytest.raises(InputError, match="other settings"):
        run_swarm(rosenbrock, Swarm(space(), 5, seed=9), 6, record=RunRecord(store, "hpo/b"))


def test_failed_and_slow_evaluations_are_redrawn(tmp_path, threads):
    store = Store.create(tmp_path / "s.zarr")
    sw = Swarm(space(), 6, seed=0)
    sw.x[:, 0] = 3.0
    sw.x[0, 0], sw.x[1, 0] = 0.0, 6.0  # particle 0 raises, particle 1 stalls
    start = time.perf_counter()
    run_swarm(flaky, sw, 1, client=threads, timeout=0.5, record=RunRecord(store, "hpo/f"))
    assert time.perf_counter() - start < 1.9
    evals = RunRecord(store, "hpo/f").evaluations()
    assert evals[0]["status"] == "error" and "diverged" in evals[0]["error"]
    assert evals[1]["status"] == "timeout" and evals[1]["worker"].startswith("inproc://")
    assert all(e["status"] == "ok" for e in evals[2:])
    assert np.all(sw.v[:2] == 0)  # re-drawn with zero velocity
    assert math.isinf(sw.local_f[0]) and math.isinf(sw.local_f[1])


@pytest.fixture(scope="module")
def alkanes(tmp_path_factory):
    path = tmp_path_factory.mktemp("hpo") / "s.zarr"
    store = Store.create(path)
    add_segment(store, md_frames(6, 1), "run0")
    add_segment(store, md_frames(3, 2), "run1")
    return str(path)


def test_force_and_kernel_objectives_on_alkanes(alkanes):
    split = Split(train="name:run0", validation="name:run1")
    params = {"r_cut": 3.0, "n_max": 3, "l_max": 2, "sigma": 0.4, "references": 15,
              "beta": 1e-6, "sigma1": 0.25, "sigma2": 0.5}
    out = ForceObjective(alkanes, split, scheme="element").evaluate(params)
    assert math.isfinite(out["objective"]) and set(out["classes"]) == {"C", "H"}
    assert all(0 <= c["angle_deg"] <= 180 for c in out["classes"].values())
    kernel = KernelObjective(alkanes, Split(fraction=0.3)).evaluate(
        {"r_cut": 3.0, "n_max": 3, "l_max": 2, "zeta": 2.0})
    assert math.isfinite(kernel["objective"])
    assert all(0 < c["std"] < 0.5 for c in kernel["classes"].values())


def test_strategy_2_and_cli_report(alkanes, tmp_path, capsys):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("r_cut: {low: 2.5, high: 3.5}\nn_max: {low: 2, high: 3, type: int}\n"
                          "l_max: {value: 2}\nreferences: {low: 5, high: 20, type: int}\n"
                          "beta: {low: 1.0e-8, high: 1.0e-3, log: true}\n")
    result = run_hpo(alkanes, SearchSpace.from_yaml(space_file), particles=2, iterations=1,
                     strategy=2, run="s2", split=Split(train="name:run0",
                                                       validation="name:run1"))
    assert set(result["stage1"]["best"]) == {"r_cut", "n_max", "l_max"}
    assert set(result["best"]) == {"r_cut", "n_max", "l_max", "references", "beta"}
    assert math.isfinite(result["objective"])
    report = hpo_report(alkanes, "s2", plot=tmp_path / "c.png")
    assert report["stages"]["stage1"]["evaluations"] == 2
    assert (tmp_path / "c.png").stat().st_size > 0
    code = main(["hpo", alkanes, "--space", str(space_file), "--particles", "2",
                 "--iterations", "1", "--run", "cli", "--in-process", "--train", "name:run0",
                 "--validation", "name:run1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[0].startswith("iteration 1/1")
    assert math.isfinite(float(json.loads(lines[-1])["objective"]))
    assert main(["hpo", alkanes, "--report", "--run", "cli", "--plot",
                 str(tmp_path / "cli.png")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("cli.png")
