"""Campaign files: validation up front, a small end-to-end run, status and resume."""

import json

import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.optimize import BFGS

from oamlm_dist.campaign import campaign_status, load_campaign, run_campaign
from oamlm_dist.cli import main
from oamlm_dist.store import Store
from oamlm_dist.structures import rattle

CAMPAIGN = """
name: alkanes
store: alkanes.zarr
sample: {{structures: "alkanes:2-3", calculator: emt, temperature: 300, steps: 20, runs: 2}}
describe: {{scheme: element, soap: "r_cut=3,n_max=3,l_max=2", block_frames: 10}}
fit: {{model: m, references: 40, frames: "name:*run0*"}}
evaluate: {{test: [test.extxyz]}}
optimize: {{structures: [start.extxyz], calculator: emt, fmax: {fmax}, out: relax{extra}}}
"""


@pytest.mark.parametrize("text, message", [
    ("store: s.zarr\nfit: {model: m, referenes: 5}\n", "fit: unknown key 'referenes'"),
    ("store: s.zarr\nfit: {model: m, references: five}\n", "fit.references must be int"),
    ("store: s.zarr\nfit: {references: 5}\n", "fit: missing key 'model'"),
    ("store: s.zarr\nsurprise: 1\nfit: {model: m}\n", "unknown key 'surprise'"),
    ("store: s.zarr\nsample: [1, 2]\n", "sample must be a mapping"),
    ("store: s.zarr\nevaluate: {test: [a.xyz]}\n", "evaluate needs a fit stage"),
    ("store: s.zarr\n", "no stages"),
    ("store: [unclosed\n", "not valid YAML"),
    ("store: s.zarr\noptimize: {structures: [a.xyz], max_uncertainty: 0}\n",
     "optimize.max_uncertainty must be > 0"),
    ("store: s.zarr\noptimize: {structures: [a.xyz], fine_timeout_s: -1}\n",
     "optimize.fine_timeout_s must be > 0"),
    ("store: s.zarr\noptimize: {structures: [a.xyz], ensemble: al}\n",
     "optimize.ensemble 'al': no such ensemble"),
    ("store: s.zarr\noptimize: {structures: [a.xyz], agree_deg: 0}\n",
     "optimize.agree_deg must be > 0"),
    ("store: s.zarr\noptimize: {structures: [a.xyz], fine_only: true, ensemble: al}\n",
     "optimize.fine_only uses no model; drop optimize.ensemble"),
])
def test_bad_campaign_files_fail_in_one_line_before_running(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["campaign", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err
    assert not (tmp_path / "s.zarr").exists()


def test_optimize_stage_takes_the_hybrid_settings_defaults_and_passes_given_keys(tmp_path):
    from oamlm_dist.optimize.hybrid import HybridSettings

    path = tmp_path / "c.yaml"
    path.write_text("store: s.zarr\noptimize: {structures: [a.xyz]}\n")
    assert load_campaign(path).optimize.hybrid_settings() == HybridSettings()
    given = {"fmax": 0.02, "max_fine": 7, "fine_timeout_s": 60.0, "speculate": False,
             "fine_gp": False, "agree_deg": 20.0, "max_uncertainty": 0.3}
    path.write_text("store: s.zarr\noptimize: " + json.dumps({"structures": ["a.xyz"], **given}))
    settings = load_campaign(path).optimize.hybrid_settings()
    assert {name: getattr(settings, name) for name in given} == given


def test_small_campaign_runs_reports_status_and_resumes(tmp_path, dask_client):
    write(str(tmp_path / "start.extxyz"), rattle(molecule("C3H8"), 0.05, seed=1))
    test_frame = rattle(molecule("C2H6"), 0.05, seed=2)
    test_frame.calc = EMT()
    test_frame.get_forces()
    write(str(tmp_path / "test.extxyz"), test_frame)
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(fmax=0.1, extra=""))
    campaign = load_campaign(path)
    assert campaign_status(campaign)["stages"]["fit"] == {"done": False}
    results = run_campaign(campaign, dask_client, log=lambda _: None)
    assert list(results) == ["sample", "describe", "fit", "evaluate", "optimize"]
    assert results["sample"]["frames"] == 4 * 20
    assert results["optimize"][0]["converged"]
    status = campaign_status(campaign)
    assert all(entry["done"] for entry in status["stages"].values())
    assert results["optimize"][0]["ml_calls"] > 0  # the fit stage's model was used
    # Simulate a kill during the last stage: its marker is missing, the rest are kept. The
    # stage is resumed without the model, on BFGS steps: exactly ASE BFGS's fine calls.
    store = Store.open(campaign.store, mode="a")
    del store.root["done/campaign/alkanes/optimize"]
    path.write_text(CAMPAIGN.format(fmax=0.1, extra=", fine_only: true, fine_gp: false"))
    again = run_campaign(load_campaign(path), dask_client, log=lambda _: None)
    assert list(again) == ["optimize"]
    assert Store.open(campaign.store).n_frames() >= 4 * 20
    reference = read(str(tmp_path / "start.extxyz"))
    reference.calc = EMT()
    bfgs = BFGS(reference, logfile=None)
    bfgs.run(fmax=0.1)
    [relaxed] = again["optimize"]
    assert relaxed["converged"] and relaxed["ml_calls"] == 0
    assert relaxed["fine_calls"] == bfgs.nsteps + 1  # a fine call per step and at the start
    assert abs(relaxed["energy"] - reference.get_potential_energy()) < 1e-6


def test_status_command_prints_json(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(fmax=0.1, extra=""))
    assert main(["campaign", "status", str(path)]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(status["stages"]) == {"sample", "describe", "fit", "evaluate", "optimize"}


HPO_CAMPAIGN = """
name: tuned
store: tuned.zarr
sample: {structures: "alkanes:3", calculator: emt, temperature: 300, steps: 24, runs: 2}
describe: {scheme: element, soap: "r_cut=3,n_max=3,l_max=2", block_frames: 8}
hpo: {space: space.yaml, particles: 3, iterations: 2, seed: 1}
fit: {model: m, references: 40}
"""


def test_campaign_fits_with_the_parameters_its_search_found(tmp_path, dask_client):
    (tmp_path / "space.yaml").write_text(
        "n_max: {low: 2, high: 4, type: int}\nl_max: {value: 2}\nr_cut: {value: 3.0}\n"
        "references: {low: 8, high: 30, type: int}\n")
    (tmp_path / "c.yaml").write_text(HPO_CAMPAIGN)
    campaign = load_campaign(tmp_path / "c.yaml")
    results = run_campaign(campaign, dask_client, log=lambda _: None)
    assert list(results) == ["sample", "describe", "hpo", "fit"]
    # Independent expectation: the best evaluation recorded in the store.
    from oamlm_dist.hpo import hpo_report

    recorded = hpo_report(campaign.store, results["hpo"]["run"],
                          plot=tmp_path / "search.png")["stages"]
    [stage] = recorded.values()
    best = stage["best"]
    assert stage["evaluations"] == 6 and results["hpo"]["best"] == best
    store = Store.open(campaign.store)
    model = store.root["models/m"].attrs
    assert model["settings"]["references"] == best["references"]
    used = store.root[f"classes/{model['descriptor_set']}"].attrs["spec"]["soap"]
    assert used["n_max"] == best["n_max"] and used["l_max"] == 2
    assert results["fit"]["classes"]["H"]["references"] == best["references"]
    # Resumed after the fit marker was lost: the search is not repeated, the fit is the same.
    del Store.open(campaign.store, mode="a").root["done/campaign/tuned/fit"]
    again = run_campaign(load_campaign(tmp_path / "c.yaml"), dask_client, log=lambda _: None)
    assert list(again) == ["fit"] and again["fit"] == results["fit"]
