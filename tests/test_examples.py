"""Every example in examples/ runs, with the smallest settings, so the examples cannot rot.

Campaign files are loaded with ``load_campaign`` (so their paths and keys are checked), then
shrunk (few MD steps, few references, a small fine-call budget) and run into tmp_path. The
scripts run in-process on the shared test cluster, except ``make_alkane_files.py``, which runs
as a command with its own LocalCluster, the way its docstring says to run it.
"""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from ase.io import read

from oamlm_dist.campaign import load_campaign, run_campaign
from oamlm_dist.optimize.hybrid import HybridSettings
from oamlm_dist.report import write_report
from oamlm_dist.store import Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Example -> the test that runs it. A new example without a test fails the first test.
COVERED = {
    "demo.py": "test_demo_quick_mode_returns_its_summary",
    "cluster_client.py": "test_cluster_client_on_a_running_scheduler",
    "make_alkane_files.py": "test_make_alkane_files_writes_the_campaign_inputs",
    "rings-campaign.yaml": "test_rings_campaign",
    "alkanes-campaign.yaml": "test_alkanes_campaign_and_its_report",
}


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shrink(campaign, tmp_path: Path, steps: int, max_fine: int):
    """The campaign with tiny settings, writing everything under tmp_path."""
    campaign.store = str(tmp_path / "store.zarr")
    if campaign.sample:
        campaign.sample = dataclasses.replace(campaign.sample, steps=steps,
                                              interval=min(campaign.sample.interval, steps))
    if campaign.describe:
        campaign.describe = dataclasses.replace(campaign.describe, block_frames=20)
    if campaign.fit:
        campaign.fit = dataclasses.replace(campaign.fit, references=40)
    if campaign.evaluate:
        campaign.evaluate = dataclasses.replace(campaign.evaluate, plots=str(tmp_path / "plots"))
    if campaign.optimize:
        campaign.optimize = dataclasses.replace(campaign.optimize, max_fine=max_fine,
                                                out=str(tmp_path / "relax"))
    return campaign


def test_every_example_has_a_test():
    runnable = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".yaml")}
    assert runnable == set(COVERED)
    assert all(name in globals() for name in COVERED.values())
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.iterdir():
        if path.name != "README.md":
            assert path.name in readme, f"examples/README.md does not mention {path.name}"


def test_rings_campaign(tmp_path, dask_client):
    campaign = load_campaign(EXAMPLES / "rings-campaign.yaml")
    assert all(Path(p).is_file() for p in campaign.optimize.structures)
    campaign = shrink(campaign, tmp_path, steps=20, max_fine=5)
    results = run_campaign(campaign, dask_client, log=lambda _: None)
    assert list(results) == ["sample", "describe", "fit", "optimize"]
    assert results["sample"]["frames"] == 2 * 2 * 20 // campaign.sample.interval
    assert set(results["fit"]["classes"]) >= {"S", "C", "H"}
    relaxed = results["optimize"][0]
    assert 1 <= relaxed["fine_calls"] <= 5
    assert Path(relaxed["final"]).is_file() and Path(relaxed["plot"]).is_file()


def test_alkanes_campaign_and_its_report(tmp_path, dask_client):
    campaign = load_campaign(EXAMPLES / "alkanes-campaign.yaml")
    # The committed inputs exist and are what the campaign needs.
    held_out = read(campaign.evaluate.test[0], ":")
    assert len(held_out) == 30 and all("forces" in a.calc.results for a in held_out)
    assert set(read(campaign.optimize.structures[0]).get_chemical_symbols()) == {"C", "H"}
    assert campaign.describe.scheme == "element"
    campaign = shrink(campaign, tmp_path, steps=20, max_fine=6)
    campaign.optimize = dataclasses.replace(campaign.optimize, fmax=0.5)
    results = run_campaign(campaign, dask_client, log=lambda _: None)
    assert list(results) == ["sample", "describe", "fit", "evaluate", "optimize"]
    assert results["sample"]["frames"] == 3 * 2 * 20 // campaign.sample.interval
    assert set(results["evaluate"]["classes"]) == {"C", "H"}
    assert all(0 <= m["weighted_angle_deg"] <= 180
               for m in results["evaluate"]["classes"].values())
    relaxed = results["optimize"][0]
    assert relaxed["fine_calls"] <= 6
    # The report of this campaign links the files its stages wrote.
    report = write_report(campaign.store, tmp_path / "report.md", campaign=campaign)
    text = Path(report["report"]).read_text()
    assert "## Campaign `alkanes`" in text and "| optimize | done |" in text
    assert "(relax/alkane-C4-rattled-hybrid.png)" in text
    assert "(plots/alkanes-C.png)" in text and "(plots/alkanes-H.png)" in text
    assert len(report["plots"]) == 1 and Path(report["plots"][0]).is_file()


def test_cluster_client_on_a_running_scheduler(tmp_path, dask_client, capsys):
    example = load_example("cluster_client.py")
    address = dask_client.scheduler.address
    result = example.main([address, "--store", str(tmp_path / "c.zarr"), "--quick"])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == result
    assert any(line.startswith("dashboard: http") for line in out)
    assert result["classes"] == ["C", "H"] and result["frames"] == 2 * 2 * 20
    assert 1 <= result["fine_calls"] <= 10
    assert len(Store.open(tmp_path / "c.zarr").segments("fine")) == result["fine_calls"]


def test_make_alkane_files_writes_the_campaign_inputs(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "make_alkane_files.py"),
                           str(tmp_path), "--quick"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    frames = read(result["held_out"], ":")
    assert result["frames"] == len(frames) == 3 * 4
    assert {len(a) for a in frames} == {8, 11, 14}
    assert all("forces" in a.calc.results and "energy" in a.calc.results for a in frames)
    assert len(read(result["start"])) == 14


@pytest.mark.slow
def test_demo_quick_mode_returns_its_summary(tmp_path, dask_client, monkeypatch, capsys):
    demo = load_example("demo.py")

    @contextmanager
    def shared_client():
        yield dask_client

    # The demo as written, on the shared cluster and with a fine-call budget of 8.
    monkeypatch.setattr(demo, "get_client", shared_client)
    monkeypatch.setattr(demo, "HybridSettings",
                        lambda **kw: HybridSettings(**{**kw, "max_fine": 8}))
    result = demo.main(str(tmp_path / "demo"), quick=True)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert {"fine_calls", "bfgs_fine_calls", "energy", "bfgs_energy", "converged",
            "weighted_angle_deg", "sample_s", "describe_s", "fit_s", "optimize_s",
            "wall_s"} <= set(result)
    assert 1 <= result["fine_calls"] <= 8 and result["bfgs_fine_calls"] > 1
    assert set(result["weighted_angle_deg"]) == {"Au_unit", "S", "C", "H"}
    assert (tmp_path / "demo" / "ring-Au6-start-hybrid.png").is_file()
