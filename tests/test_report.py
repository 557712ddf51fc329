"""The Markdown report: a small store with EMT frames, a model, an evaluation, two hybrid
optimisations (one stopped by a recorded failure), read back through ``oamlm-dist report``."""

import json
import re
from pathlib import Path

import pytest
from ase.cluster import Icosahedron
from ase.io import write

from oamlm_dist.cli import main
from oamlm_dist.describe import describe
from oamlm_dist.descriptors import SoapSettings
from oamlm_dist.evaluate import evaluate
from oamlm_dist.ingest import ingest
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import OnlineModel
from oamlm_dist.report import collect, optimisation_runs, write_report
from oamlm_dist.store import Store
from oamlm_dist.structures import rattle
from tests.conftest import emt_frames

PNG = b"\x89PNG\r\n\x1a\n"


def au13():
    atoms = Icosahedron("Au", 2)
    atoms.center()
    return rattle(atoms, 0.15, seed=3)


def cold_model():
    return OnlineModel.cold_start(["Au"], scheme="element",
                                  soap=SoapSettings.parse("r_cut=5,n_max=4,l_max=4"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, dask_client):
    """The store, the evaluation JSON and the two optimisers that wrote into it."""
    root = tmp_path_factory.mktemp("report")
    write(str(root / "train.extxyz"), emt_frames(8, seed=0))
    write(str(root / "test.extxyz"), emt_frames(3, seed=1))
    store_path = root / "s.zarr"
    ingest(store_path, [str(root / "train.extxyz")])
    describe(store_path, "element", "r_cut=3,n_max=3,l_max=2", dask_client)
    from oamlm_dist.training import FitSettings, fit

    fit(store_path, "m", dask_client, FitSettings(references=10))
    evaluation = evaluate(store_path, "m", [str(root / "test.extxyz")], dask_client,
                          plots=root / "plots")
    (root / "eval.json").write_text(json.dumps(evaluation))
    store = Store.open(store_path, mode="a")
    first = HybridOptimizer(au13(), cold_model(), "emt", settings=HybridSettings(fmax=0.1),
                            name="au13", store=store)
    second = HybridOptimizer(au13(), cold_model(), "emt",
                             settings=HybridSettings(fmax=0.1, max_fine=2), name="au13",
                             store=store)
    results = [optimize_many([opt], dask_client)[0] for opt in (first, second)]
    # The second run is stopped as a failed fine calculation would stop it.
    second.fail("xtb SCF did not converge | after retry", [{"outcome": "scf"}] * 2)
    return {"root": root, "store": store_path, "eval": root / "eval.json",
            "evaluation": evaluation, "optimizers": (first, second), "results": results}


def test_optimisations_are_rebuilt_from_fine_segments(built):
    runs = optimisation_runs(Store.open(built["store"]))
    assert [r["label"] for r in runs] == ["au13 (run 1)", "au13 (run 2)"]
    for run, optimizer, result in zip(runs, built["optimizers"], built["results"], strict=True):
        assert run["fine_calls"] == result["fine_calls"] == len(optimizer.state.rounds)
        for stored, live in zip(run["rounds"], optimizer.state.rounds, strict=True):
            assert stored["fine_call"] == live["fine_call"]
            assert stored["kind"] == live["kind"]
            assert stored["energy"] == live["energy"]
            assert stored["fmax"] == pytest.approx(live["fmax"], abs=1e-12)
        assert sum(run["reached_by"].values()) == run["fine_calls"]
        assert run["energy"] == optimizer.state.rounds[-1]["energy"]
    assert built["results"][0]["converged"] and runs[0]["fmax"] <= 0.1
    data = collect(built["store"])
    assert [f["key"] for f in data["failures"]] == ["au13-fine3"]
    assert "failures" not in data["optimisations"][0]
    assert data["optimisations"][1]["failures"][0]["fine_call"] == 3


def test_report_command_writes_markdown_with_working_links(built, tmp_path, capsys):
    out = tmp_path / "docs" / "report.md"
    assert main(["report", str(built["store"]), "--evaluation", str(built["eval"]),
                 "--out", str(out), "--fmax", "0.1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["report"] == str(out)
    assert len(last["plots"]) == 2
    for plot in last["plots"]:
        assert Path(plot).parent == out.parent / "report-figures"
        assert Path(plot).read_bytes()[:8] == PNG
    text = out.read_text()
    for heading in ("## Frames", "## Descriptor sets", "## Models", "## Evaluation",
                    "## Optimisations", "## Failures"):
        assert heading in text
    # Every image and link resolves from the report's directory.
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert len(targets) == 2 + len(built["evaluation"]["plots"])
    for target in targets:
        assert (out.parent / target).is_file(), target
    # Frames per kind, descriptor rows, model classes and evaluation figures.
    store = Store.open(built["store"])
    assert "| ingest | 1 | 8 | 0 |" in text
    n_fine = len(store.segments("fine"))
    assert f"| fine | {n_fine} | {n_fine} | 0 |" in text
    assert "| H | 32 |" in text and "| C | 8 |" in text
    assert "### `m`" in text and "references=10" in text
    # References per class: K = 10, or all 8 rows of C.
    model_section = text.split("### `m`")[1]
    assert re.search(r"\| H \| 10 \| \d+ \|", model_section)
    assert re.search(r"\| C \| 8 \| \d+ \|", model_section)
    for cls, metrics in built["evaluation"]["classes"].items():
        assert f"| {cls} | {metrics['n']} | {metrics['weighted_angle_deg']:.2f} |" in text
    # One summary row per run: fine calls, final energy and fmax, how geometries were reached.
    first = built["results"][0]
    row = next(line for line in text.splitlines() if line.startswith("| au13 (run 1) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "emt" and int(cells[2]) == first["fine_calls"]
    assert float(cells[3]) == pytest.approx(first["energy"], abs=1e-4)
    assert cells[-1] == "yes" and cells[-2].startswith("start 1")
    # The failure stopped run 2, and its reason is escaped inside the tables.
    run2 = text.split("### au13 (run 2)")[1]
    assert "Stopped by a failed fine calculation (`au13-fine3`)" in run2
    assert "did not converge \\| after retry" in text
    assert "| `au13-fine3` | au13 | 2 |" in text


def test_campaign_report_uses_the_campaign_store_and_target(built, tmp_path, capsys):
    campaign = tmp_path / "c.yaml"
    root = built["root"]
    campaign.write_text(
        f"name: small\nstore: {built['store']}\nfit: {{model: m, references: 10}}\n"
        f"evaluate: {{test: [{root / 'test.extxyz'}], plots: {root / 'plots'}}}\n"
        "optimize: {structures: [au13.extxyz], calculator: emt, fmax: 0.1}\n")
    out = tmp_path / "campaign.md"
    assert main(["report", "--campaign", str(campaign), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Campaign `small`" in text
    assert re.search(r"\| fit \| pending \| classes \[C, H\] \| model=m", text)
    assert "fmax ≤ 0.1" in text  # the campaign's target
    for plot in built["evaluation"]["plots"]:
        assert f"![{Path(plot).stem}](" in text


def test_empty_store_and_user_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Store.create(tmp_path / "empty.zarr")
    result = write_report(tmp_path / "empty.zarr", tmp_path / "r.md")
    assert result == {"report": str(tmp_path / "r.md"), "plots": []}
    text = (tmp_path / "r.md").read_text()
    assert "The store holds no frames." in text and "No fine calculations" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv, message in [
        (["report", str(tmp_path / "missing.zarr")], "no oamlm-dist store here"),
        (["report", str(tmp_path / "empty.zarr"), "--evaluation", str(bad)], "not valid JSON"),
        (["report", str(tmp_path / "empty.zarr"), "--evaluation", str(tmp_path / "x.json")],
         "cannot read evaluation file"),
        (["report"], "give a STORE or --campaign FILE"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "report.md").exists()  # the default --out: nothing written
