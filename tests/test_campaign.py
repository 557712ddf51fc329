"""Campaign files: validation up front, a small end-to-end run, status and resume."""

import json

import pytest
from ase.build import molecule
from ase.io import write

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
optimize: {{structures: [start.extxyz], calculator: emt, fmax: {fmax}, out: relax}}
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
])
def test_bad_campaign_files_fail_in_one_line_before_running(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["campaign", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err
    assert not (tmp_path / "s.zarr").exists()


def test_small_campaign_runs_reports_status_and_resumes(tmp_path, dask_client):
    write(str(tmp_path / "start.extxyz"), rattle(molecule("C3H8"), 0.05, seed=1))
    test_frame = rattle(molecule("C2H6"), 0.05, seed=2)
    from ase.calculators.emt import EMT

    test_frame.calc = EMT()
    test_frame.get_forces()
    write(str(tmp_path / "test.extxyz"), test_frame)
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(fmax=0.1))
    campaign = load_campaign(path)
    assert campaign_status(campaign)["stages"]["fit"] == {"done": False}
    results = run_campaign(campaign, dask_client, log=lambda _: None)
    assert list(results) == ["sample", "describe", "fit", "evaluate", "optimize"]
    assert results["sample"]["frames"] == 4 * 20
    assert results["optimize"][0]["converged"]
    status = campaign_status(campaign)
    assert all(entry["done"] for entry in status["stages"].values())
    # Simulate a kill during the last stage: its marker is missing, the rest are kept.
    store = Store.open(campaign.store, mode="a")
    del store.root["done/campaign/alkanes/optimize"]
    again = run_campaign(load_campaign(path), dask_client, log=lambda _: None)
    assert list(again) == ["optimize"]
    assert Store.open(campaign.store).n_frames() >= 4 * 20


def test_status_command_prints_json(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(fmax=0.1))
    assert main(["campaign", "status", str(path)]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(status["stages"]) == {"sample", "describe", "fit", "evaluate", "optimize"}
