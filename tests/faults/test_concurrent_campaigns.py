"""Two campaigns writing the same store at once, with a reader polling it meanwhile.

The second campaign waits on the writer locks of what the first is writing (MD segments, the
descriptor set, the model) and then finds that work done, so the store ends up exactly as
after one undisturbed campaign: no duplicated MD runs, the same rows, the same model. The
reader only ever sees complete describe blocks and complete (trained) models.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from oamlm_dist.campaign import load_campaign, run_campaign
from oamlm_dist.describe import done_blocks, read_block
from oamlm_dist.errors import StoreError
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.store import Store
from tests.conftest import md_frames

from .common import arrays_under, assert_same_arrays

CAMPAIGN = """
name: {name}
store: {store}
cluster: {{scheduler: '{scheduler}'}}
sample: {{structures: "alkanes:3", calculator: emt, temperature: 300, steps: 24, runs: 2}}
describe: {{scheme: element, soap: "r_cut=3,n_max=3,l_max=2", block_frames: 4}}
fit: {{model: m, references: 40}}
"""
CLASSES = ("C", "H")


def write_campaign(path, name: str, store, scheduler: str):
    path.write_text(CAMPAIGN.format(name=name, store=store, scheduler=scheduler))
    return path


class Reader:
    """Polls the store while campaigns write it; records every complete thing it could read."""

    def __init__(self, store_path):
        self.store_path = store_path
        self.blocks: dict[str, dict[str, np.ndarray]] = {}  # "set/class/block" -> rows
        self.models: list[dict[str, np.ndarray]] = []  # forces predicted by loaded models
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.probe = md_frames(1, seed=99)[0]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
                return
            time.sleep(0.05)

    def poll(self) -> None:
        if not (self.store_path / "zarr.json").exists():
            return
        store = Store.open(self.store_path)
        for set_name in store.group("classes").group_keys():
            for cls in CLASSES:
                for key in done_blocks(store, set_name, cls):
                    self.blocks.setdefault(f"{set_name}/{cls}/{key}", read_block(
                        store.root[f"classes/{set_name}/{cls}/{key}"]))
        try:
            model = ForceModel.load(store, "m")
        except StoreError as exc:  # absent or not trained yet: the only acceptable refusals
            assert "no model" in str(exc) or "not trained yet" in str(exc), exc
            return
        self.models.append(model.predict(self.probe)["forces"])


def test_two_campaigns_on_one_store_at_once(tmp_path, dask_client):
    scheduler = dask_client.scheduler.address
    undisturbed = tmp_path / "undisturbed"
    undisturbed.mkdir()
    run_campaign(load_campaign(write_campaign(undisturbed / "c.yaml", "alone", "alone.zarr",
                                              scheduler)), dask_client, log=lambda _: None)

    store = tmp_path / "shared.zarr"
    reader = Reader(store)
    polling = threading.Thread(target=reader.run, daemon=True)
    polling.start()
    processes = []
    for name in ("first", "second"):
        config = write_campaign(tmp_path / f"{name}.yaml", name, store, scheduler)
        log = open(tmp_path / f"{name}.log", "w")
        processes.append((name, log, subprocess.Popen(
            [sys.executable, "-m", "oamlm_dist.cli", "campaign", "run", str(config)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)))
    for _, log, process in processes:
        process.wait(300)
        log.close()
    reader.stop.set()
    polling.join(30)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name, _, _ in processes}
    for name, _, process in processes:
        assert process.returncode == 0, logs[name]
    assert not reader.errors, reader.errors
    # They did overlap: one of them waited for a lock the other held.
    assert any("waiting for it to finish" in text for text in logs.values()), logs

    # No duplicated MD runs; frames, rows and the model bit-identical to one campaign's.
    shared, alone = Store.open(store), Store.open(undisturbed / "alone.zarr")
    assert [s.attrs["name"] for s in shared.segments("md")] == \
        [s.attrs["name"] for s in alone.segments("md")]
    for part in ("frames", "classes", "models"):
        assert_same_arrays(arrays_under(store / part),
                           arrays_under(undisturbed / "alone.zarr" / part))
    for campaign in ("first", "second"):
        assert shared.done_keys(f"campaign/{campaign}") == {"sample", "describe", "fit"}

    # The reader saw only complete blocks (equal to their final content) and only the final,
    # trained model, while the campaigns were writing.
    assert reader.blocks, "the reader never saw a finished describe block"
    for path, rows in reader.blocks.items():
        for field, values in rows.items():
            expected = read_block(Store.open(store).root[f"classes/{path}"])[field]
            assert values.tobytes() == expected.tobytes(), (path, field)
    expected_forces = ForceModel.load(store, "m").predict(reader.probe)["forces"]
    print(f"reader: {len(reader.blocks)} blocks, {len(reader.models)} model loads")
    for forces in reader.models:
        assert np.array_equal(forces, expected_forces)
