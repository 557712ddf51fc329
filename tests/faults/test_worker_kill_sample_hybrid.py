"""A worker process SIGKILLed in the middle of ``sample`` (an MD run that has committed part of
its frames) and of a hybrid optimisation (a fine single point): the scheduler reruns the lost
task on the remaining or restarted worker, and the result and the store equal an undisturbed
run's (bit for bit: MD and EMT are deterministic, and so is the client-side ML)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from ase.cluster import Icosahedron, Octahedron

from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.optimize import hybrid
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import parse_structures, rattle

from .common import (
    arrays_under,
    assert_same_arrays,
    run_and_kill_when,
    running_tasks,
    task_story,
)


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


# ---- sample --------------------------------------------------------------------------------

STRUCTURES = "alkanes:2-3"  # ethane and propane, EMT
RUNS = 2  # 4 MD tasks on 2 dft slots: two run while two wait
FRAMES = 80  # per run
FLUSH = 8  # frames per commit
RUN_NAMES = [f"alkane-C{n}/run{r}" for n in (2, 3) for r in range(RUNS)]


def md_settings(thermostat: str) -> MDSettings:
    return MDSettings(temperature=500, steps=2 * FRAMES, timestep=1.0, interval=2, seed=11,
                      thermostat=thermostat, flush_every=FLUSH)


def run_sample(path, thermostat: str, client) -> dict:
    return sample(path, parse_structures(STRUCTURES), "emt", {}, md_settings(thermostat),
                  runs=RUNS, client=client)


def assert_consistent_extent(segment) -> None:
    """The committed extent: atom count = sum of the committed frames' sizes = atom rows."""
    natoms = int(segment.group["natoms"][: segment.n_frames].sum())
    assert segment.n_atoms == natoms == segment.group["positions"].shape[0], (
        f"segment {segment.attrs['name']}: {segment.n_frames} frames of {natoms} atoms "
        f"committed with n_atoms={segment.n_atoms} and "
        f"{segment.group['positions'].shape[0]} atom rows")


def frames_by_run(path) -> dict[str, dict[str, np.ndarray]]:
    """Every array of every MD segment (positions, forces, momenta, energy, ...), by run name."""
    out = {}
    for segment in Store.open(path).segments("md"):
        assert segment.attrs["complete"] and segment.n_frames == FRAMES, segment.attrs
        assert_consistent_extent(segment)
        out[segment.attrs["name"]] = arrays_under(path / "frames" / f"{segment.id:06d}")
    return out


@pytest.fixture(scope="module", params=["verlet", "langevin"])
def md_reference(request, tmp_path_factory, client):
    """Two undisturbed ``sample`` runs of the same request: MD must be deterministic for
    "identical to an undisturbed run" to mean anything."""
    thermostat = request.param
    root = tmp_path_factory.mktemp(f"md-{thermostat}")
    first = run_sample(root / "first.zarr", thermostat, client)
    second = run_sample(root / "second.zarr", thermostat, client)
    assert first["frames"] == second["frames"] == RUNS * 2 * FRAMES
    reference = frames_by_run(root / "first.zarr")
    assert sorted(reference) == RUN_NAMES
    again = frames_by_run(root / "second.zarr")
    for name in RUN_NAMES:
        assert_same_arrays(again[name], reference[name])
    return thermostat, reference


def mid_run_md_task(client, path):
    """The worker to kill: it runs an MD task whose segment has committed some of its frames
    and has at least two commits to go, while another run is complete and yet another is
    not (some runs written, others in flight or waiting)."""

    def pick() -> dict | None:
        # Tasks first, store second: a task seen executing whose segment, read afterwards,
        # still lacks two commits cannot finish in the microseconds before the kill.
        running = running_tasks(client)
        try:
            segments = Store.open(path).segments("md")
            frames = {s.attrs["run_key"]: (s.attrs["name"], s.n_frames) for s in segments}
        except Exception:  # the store or a segment is still being created
            return None
        if len(frames) < len(RUN_NAMES) or FRAMES not in [n for _, n in frames.values()]:
            return None
        for pid, keys in running.values():
            for key in keys:
                for run_key, (name, n) in frames.items():
                    others = [m for other, (_, m) in frames.items() if other != run_key]
                    if (key.startswith("md-") and f"-{run_key}-" in key
                            and 1 <= n <= FRAMES - 2 * FLUSH and min(others) < FRAMES):
                        return {"pid": pid, "key": key, "run": name, "frames_at_kill": n,
                                "frames_by_run": dict(frames.values())}
        return None

    return pick


def test_sample_survives_a_worker_killed_mid_run(tmp_path, client, md_reference):
    thermostat, reference = md_reference
    path = tmp_path / "s.zarr"
    before = worker_pids(client)
    start = time.perf_counter()
    result, killed = run_and_kill_when(client, lambda: run_sample(path, thermostat, client),
                                       mid_run_md_task(client, path))
    assert killed, "sample finished before a worker could be killed mid-run"
    print(f"sample ({thermostat}): killed {killed['run']} with {killed['frames_at_kill']}/"
          f"{FRAMES} frames committed (all runs: {killed['frames_by_run']}); finished "
          f"{killed['recovered_s']:.1f} s later, {time.perf_counter() - start:.1f} s in all")
    # The kill: a worker of this cluster, in the middle of a run, with other runs complete
    # and still to finish; the process is gone and its task was rerun elsewhere.
    assert killed["pid"] in before and killed["pid"] not in worker_pids(client)
    assert 1 <= killed["frames_at_kill"] <= FRAMES - 2 * FLUSH
    assert FRAMES in killed["frames_by_run"].values()
    assert min(killed["frames_by_run"].values()) < FRAMES
    story = task_story(client, killed["key"])
    assert story["lost_with_worker"] == 1 and story["started"] >= 2, story["transitions"]
    # The stage: every run, every frame.
    assert result["runs"] == result["ran"] == len(RUN_NAMES)
    assert result["frames"] == len(RUN_NAMES) * FRAMES
    # The store: each run's frames (positions, momenta, forces, energies, cells) bit-identical
    # to the undisturbed run's, the resumed run included; nothing beyond the committed extent.
    stored = frames_by_run(path)
    assert sorted(stored) == RUN_NAMES
    for name in RUN_NAMES:
        assert_same_arrays(stored[name], reference[name])


class Killed(Exception):
    """Stands for the death of the writing process at the point where it is raised."""


def test_md_run_killed_inside_a_commit_resumes_identically(tmp_path, monkeypatch):
    """The worker kill of the test above, placed deterministically: inside the metadata write
    that commits the second block of an MD run. Whatever that write had done, the resumed
    run must find a consistent committed extent and end bit-identical to an undisturbed run.
    (The kill test above may hit this window too: it kills as soon as it sees a run's frame
    count grow.)"""
    from zarr.core.group import AsyncGroup

    from oamlm_dist.sample import plan_runs, run_md

    settings = md_settings("verlet")
    [(name, atoms)] = parse_structures("alkanes:3")

    def new_run(path) -> tuple[str, int]:
        store = Store.create(path)
        [plan] = plan_runs(store, [(name, atoms)], "emt", {}, settings, 1)
        return str(store.path), plan["segment"].id

    reference = new_run(tmp_path / "reference.zarr")
    run_md(*reference, atoms, "emt", {}, settings, 0)

    second_commit = 2 * FLUSH * len(atoms)  # n_atoms once the second block is committed
    save_metadata = AsyncGroup._save_metadata

    async def dying_save(self, *args, **kwargs):
        if self.metadata.attributes.get("n_atoms") == second_commit:
            raise Killed("writer killed while committing the second block")
        return await save_metadata(self, *args, **kwargs)

    killed = new_run(tmp_path / "killed.zarr")
    monkeypatch.setattr(AsyncGroup, "_save_metadata", dying_save)
    with pytest.raises(Killed):
        run_md(*killed, atoms, "emt", {}, settings, 0)
    monkeypatch.undo()
    # What the dead writer left: a committed extent that is one of its commits, whole.
    segment = Store.open(killed[0]).segment(killed[1])
    natoms = int(segment.group["natoms"][: segment.n_frames].sum())
    assert segment.n_frames in (FLUSH, 2 * FLUSH) and segment.n_atoms == natoms, (
        f"torn commit: n_frames={segment.n_frames}, n_atoms={segment.n_atoms}, "
        f"the committed frames hold {natoms} atoms")
    # The retried task: resumes and ends as the undisturbed run.
    result = run_md(*killed, atoms, "emt", {}, settings, 0)
    assert result["resumed_from"] == segment.n_frames
    segment = Store.open(killed[0]).segment(killed[1])
    assert_consistent_extent(segment)
    assert_same_arrays(arrays_under(tmp_path / "killed.zarr" / "frames" / f"{killed[1]:06d}"),
                       arrays_under(tmp_path / "reference.zarr" / "frames" /
                                    f"{reference[1]:06d}"))


# ---- hybrid optimisation -------------------------------------------------------------------

SOAP = "r_cut=4,n_max=3,l_max=2"
# agree_deg: a gate loose enough for the cold models' rounds (the killed call is an ML one)
SETTINGS = HybridSettings(ml_steps=20, agree_deg=35.0)
KILLED_CALL = "au13-call3"  # its geometry comes from an ML round
SLOW_S = 4.0


def structures() -> list[tuple[str, object]]:
    au13 = Icosahedron("Au", 2)
    au13.center()
    au6 = Octahedron("Au", 2)
    au6.center(vacuum=4.0)
    return [("au13", rattle(au13, 0.15, seed=3)), ("au6", rattle(au6, 0.15, seed=5))]


def hybrid_run(path, client) -> tuple[list[dict], list[HybridOptimizer]]:
    """Two structures relaxed at once (as ``optimize`` does), each with its own cold model."""
    store = Store.create(path)
    optimizers = [
        HybridOptimizer(atoms, OnlineModel.cold_start(["Au"], scheme="element",
                                                      soap=SoapSettings.parse(SOAP)),
                        "emt", settings=SETTINGS, name=name, store=store)
        for name, atoms in structures()]
    return optimize_many(optimizers, client), optimizers


def slow_once(claim: str, call: str, seconds: float):
    """``fine_task`` whose first attempt at fine call ``call`` (e.g. ``au13-call3``) takes
    ``seconds`` longer: it writes the time to the new file ``claim``, then sleeps before
    calculating. Returned as a closure, so Dask ships it by value: the workers need not
    import the tests."""
    real = hybrid.fine_task

    def fine_task(atoms, calculator, params, series=None):
        from distributed import get_worker

        if f"fine-{call}-" in str(get_worker().get_current_task()):
            try:
                handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # the rerun after the kill: not slow
                pass
            else:
                os.write(handle, repr(time.time()).encode())
                os.close(handle)
                time.sleep(seconds)
        return real(atoms, calculator, params, series)

    return fine_task


def fine_frames(path) -> dict[str, dict[str, np.ndarray]]:
    """Every stored fine frame, by name (``au13/fine3``): segment ids depend on the order in
    which the two optimisations' results arrive, names do not."""
    out = {}
    for segment in Store.open(path).segments("fine"):
        assert segment.attrs["complete"] and segment.n_frames == 1, segment.attrs
        frame = segment.read()[0]  # readable, with its energy and forces
        assert np.isfinite(frame.get_potential_energy()) and frame.get_forces().shape == (
            len(frame), 3)
        out[segment.attrs["name"]] = arrays_under(path / "frames" / f"{segment.id:06d}")
    return out


@pytest.fixture(scope="module")
def hybrid_reference(tmp_path_factory, client):
    path = tmp_path_factory.mktemp("hybrid") / "s.zarr"
    results, optimizers = hybrid_run(path, client)
    assert all(r["converged"] for r in results)
    # Call 3 of au13 is not its last: the kill happens in the middle of the optimisation.
    assert results[0]["fine_calls"] > 3 and optimizers[0].state.rounds[2]["kind"] == "ml"
    return results, optimizers, fine_frames(path)


def test_hybrid_optimisation_survives_a_worker_killed_in_a_fine_calculation(
        tmp_path, client, hybrid_reference, monkeypatch):
    ref_results, ref_optimizers, ref_frames = hybrid_reference
    claim = tmp_path / "slow-call-started"
    monkeypatch.setattr(hybrid, "fine_task", slow_once(str(claim), KILLED_CALL, SLOW_S))
    path = tmp_path / "s.zarr"
    before = worker_pids(client)

    def in_the_slow_call() -> dict | None:
        # The claim exists once the first attempt of the call sleeps inside its task.
        try:
            claimed_at = float(claim.read_text())
        except (OSError, ValueError):  # not yet (or not yet written)
            return None
        for pid, keys in running_tasks(client).values():
            for key in keys:
                if key.startswith(f"fine-{KILLED_CALL}-"):
                    return {"pid": pid, "key": key, "claimed_at": claimed_at}
        return None

    start = time.perf_counter()
    (results, optimizers), killed = run_and_kill_when(
        client, lambda: hybrid_run(path, client), in_the_slow_call)
    took = time.perf_counter() - start
    assert killed, "the optimisation finished before the fine calculation could be killed"
    print(f"hybrid: killed the worker running {killed['key']}, optimisation finished "
          f"{killed['recovered_s']:.1f} s later, {took:.1f} s in all")
    # The kill: in the middle of the slow call, before it could have returned; the process
    # is gone, and the scheduler took the task back from it and ran it again.
    assert killed["killed_at"] - killed["claimed_at"] < SLOW_S
    assert killed["pid"] in before and killed["pid"] not in worker_pids(client)
    story = task_story(client, killed["key"])
    assert story["lost_with_worker"] == 1 and story["started"] >= 2, story["transitions"]

    # The optimisations: converged on a fine calculation, as undisturbed, call for call.
    for result, optimizer, ref_result, ref_optimizer in zip(
            results, optimizers, ref_results, ref_optimizers, strict=True):
        assert result["converged"] and result["stopped"] is None
        assert result["fmax"] <= SETTINGS.fmax
        assert optimizer.state.rounds[-1]["fmax"] == result["fmax"]  # from a fine point
        assert result["fine_calls"] == ref_result["fine_calls"]
        assert result["ml_calls"] == ref_result["ml_calls"]
        assert abs(result["energy"] - ref_result["energy"]) < 1e-8
        # Stronger, and true: the same rounds (kinds, energies, forces agreement, trust
        # radii) and the same final geometry, bit for bit.
        assert optimizer.state.rounds == ref_optimizer.state.rounds
        assert np.array_equal(optimizer.final_atoms().positions,
                              ref_optimizer.final_atoms().positions)
    # The store: every fine call of both optimisations, complete, readable and identical
    # to the undisturbed run's (the killed call's frame included); no failure recorded.
    stored = fine_frames(path)
    expected = {f"{r['name']}/fine{i}" for r in ref_results for i in
                range(1, r["fine_calls"] + 1)}
    assert set(stored) == set(ref_frames) == expected
    for name, arrays in ref_frames.items():
        assert_same_arrays(stored[name], arrays)
    assert "failures" not in Store.open(path).root
