"""Malformed inputs, one table row each, run through the command line.

Every case must end with exit code 2 and one error line on stderr that names the file, frame
and atom (or whatever is at fault), without a traceback, and must leave the store exactly as
it was (byte for byte), or absent when there was none. Commands that need a cluster use the
shared test cluster (``--scheduler``); the line ``dask dashboard: ...`` is informational.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from oamlm_dist.cli import main
from oamlm_dist.describe import describe
from oamlm_dist.ingest import HARTREE_PER_BOHR, ingest
from oamlm_dist.store import FrameBatch, Store
from oamlm_dist.structures import gold_thiolate_ring
from oamlm_dist.training import FitSettings, fit
from tests.conftest import emt_frames, md_frames, tree_checksum

SOAP = "r_cut=3,n_max=3,l_max=2"


class Env:
    """What the cases share: the test cluster and a trained EMT alkane store (built once)."""

    def __init__(self, client, root: Path):
        self.client = client
        self.root = root
        self._trained: Path | None = None

    @property
    def scheduler(self) -> list[str]:
        return ["--scheduler", self.client.scheduler.address]

    def trained(self, tmp: Path) -> str:
        """A copy of a store with model ``m`` (element scheme, C and H) at ``tmp/s.zarr``."""
        if self._trained is None:
            path = self.root / "trained.zarr"
            store = Store.create(path)
            segment = store.new_segment("md", {"name": "run0"})
            segment.append(FrameBatch.from_atoms(md_frames(12, 1, "C3H8", every=1)))
            segment.mark_complete()
            describe(path, "element", SOAP, self.client, block_frames=6)
            fit(path, "m", self.client, FitSettings(references=30))
            self._trained = path
        shutil.copytree(self._trained, tmp / "s.zarr")
        return str(tmp / "s.zarr")


@pytest.fixture(scope="module")
def env(dask_client, tmp_path_factory):
    return Env(dask_client, tmp_path_factory.mktemp("bad-inputs"))


# ---- inputs ----------------------------------------------------------------------------------

def edited(frames: list[Atoms], edit: Callable[[Atoms, dict], None], index: int = 1
           ) -> list[Atoms]:
    """``frames`` with frame ``index`` changed by ``edit(atoms, results)``."""
    results = [dict(atoms.calc.results) for atoms in frames]
    edit(frames[index], results[index])
    for atoms, result in zip(frames, results, strict=True):  # after editing positions
        atoms.calc = SinglePointCalculator(atoms, **result)
    return frames


def good_store(tmp: Path) -> str:
    """An existing store holding one good file (the bad input must not change it)."""
    write(str(tmp / "good.extxyz"), emt_frames(2, seed=5))
    ingest(tmp / "s.zarr", [str(tmp / "good.extxyz")])
    return str(tmp / "s.zarr")


def bad_traj(name: str, frames: list[Atoms]) -> Callable[[Path, Env], list[str]]:
    """Ingest of a .traj file (it keeps NaN, inf and missing forces as given)."""
    def make(tmp: Path, env: Env) -> list[str]:
        store = good_store(tmp)
        write(str(tmp / name), frames)
        return ["ingest", store, str(tmp / name)]
    return make


def truncated(tmp: Path, env: Env) -> list[str]:
    store = good_store(tmp)
    write(str(tmp / "full.extxyz"), emt_frames(3))
    lines = (tmp / "full.extxyz").read_text().splitlines()
    (tmp / "truncated.extxyz").write_text("\n".join(lines[:-2]) + "\n")
    return ["ingest", store, str(tmp / "truncated.extxyz")]


def raw_file(name: str, content: bytes) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        (tmp / name).write_bytes(content)
        return ["ingest", str(tmp / "s.zarr"), str(tmp / name)]
    return make


def _huge_cell(atoms, results):
    atoms.set_cell([2.0e4, 10.0, 10.0])
    atoms.pbc = True


def in_hartree_per_bohr(with_energies: bool) -> Callable[[Path, Env], list[str]]:
    """12 MD frames whose forces were written in Ha/Bohr (51.4 times too small in eV/Å)."""
    def make(tmp: Path, env: Env) -> list[str]:
        frames = md_frames(12, 1, "C2H6", every=1)
        for atoms in frames:
            results = {"forces": atoms.get_forces() / HARTREE_PER_BOHR}
            if with_energies:
                results["energy"] = atoms.get_potential_energy()
            atoms.calc = SinglePointCalculator(atoms, **results)
        write(str(tmp / "hartree.extxyz"), frames)
        return ["ingest", good_store(tmp), str(tmp / "hartree.extxyz")]
    return make


def missing_file(tmp: Path, env: Env) -> list[str]:
    return ["ingest", str(tmp / "s.zarr"), str(tmp / "missing.extxyz")]


def notes_directory(tmp: Path) -> str:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("not a store\n")
    return str(tmp / "notes")


def ingest_into_non_store(tmp: Path, env: Env) -> list[str]:
    write(str(tmp / "good.extxyz"), emt_frames(2))
    return ["ingest", notes_directory(tmp), str(tmp / "good.extxyz")]


def info_of_non_store(tmp: Path, env: Env) -> list[str]:
    return ["info", notes_directory(tmp)]


def newer_layout(tmp: Path, env: Env) -> list[str]:
    store = good_store(tmp)
    zarr.open_group(store, mode="r+").attrs["layout_version"] = 99
    return ["info", store]


def corrupt_metadata(tmp: Path, env: Env) -> list[str]:
    store = good_store(tmp)
    (tmp / "s.zarr" / "zarr.json").write_text("{not json")
    return ["info", store]


def methanol_file(tmp: Path) -> str:
    frames = emt_frames(2, name="CH3OH")  # atom 1 is the O
    write(str(tmp / "methanol.extxyz"), frames)
    return str(tmp / "methanol.extxyz")


def thiolate_with_oxygen(tmp: Path, env: Env) -> list[str]:
    ingest(tmp / "s.zarr", [methanol_file(tmp)])
    return ["describe", str(tmp / "s.zarr"), "--scheme", "thiolate", *env.scheduler]


def isolated_gold(tmp: Path, env: Env) -> list[str]:
    ring = gold_thiolate_ring(4)
    atoms = ring + Atoms("Au", positions=[ring.positions.max(axis=0) + 20.0])
    forces = np.random.default_rng(0).normal(size=(len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, forces=forces, energy=0.0)
    write(str(tmp / "ring.extxyz"), atoms)
    ingest(tmp / "s.zarr", [str(tmp / "ring.extxyz")])
    return ["describe", str(tmp / "s.zarr"), "--scheme", "thiolate", "--soap", SOAP,
            *env.scheduler]


def campaign(text: str) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        (tmp / "c.yaml").write_text(text)
        return ["campaign", "run", str(tmp / "c.yaml")]
    return make


def sample(*options: str) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        return ["sample", str(tmp / "s.zarr"), "--structures", "alkanes:2", "--calculator",
                "emt", *options]
    return make


def fit_trained(*options: str) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        return ["fit", env.trained(tmp), *options, *env.scheduler]
    return make


def fit_undescribed(tmp: Path, env: Env) -> list[str]:
    return ["fit", good_store(tmp), "--model", "m", *env.scheduler]


def evaluate(model: str, test: Callable[[Path], str]) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        return ["evaluate", env.trained(tmp), "--model", model, "--test", test(tmp),
                *env.scheduler]
    return make


def alkane_file(tmp: Path) -> str:
    write(str(tmp / "test.extxyz"), md_frames(3, 7, "C3H8", every=1))
    return str(tmp / "test.extxyz")


def optimize(trained: bool, *options: str) -> Callable[[Path, Env], list[str]]:
    def make(tmp: Path, env: Env) -> list[str]:
        write(str(tmp / "start.xyz"), molecule("C3H8"))
        store = env.trained(tmp) if trained else str(tmp / "s.zarr")
        return ["optimize", str(tmp / "start.xyz"), "--store", store, "--calculator", "emt",
                "--out", str(tmp / "relax"), *options, *env.scheduler]
    return make


# ---- the catalogue ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Env], list[str]]  # writes the inputs, returns the CLI arguments
    expect: tuple[str, ...]  # all in the error line; {tmp} is the case's directory
    store: str = "s.zarr"  # unchanged afterwards (or still absent)


def _nan_force(atoms, results):
    results["forces"][2, 1] = np.nan


def _inf_position(atoms, results):
    atoms.positions[3, 0] = np.inf


def _overlap(atoms, results):
    atoms.positions[2] = atoms.positions[1] + [0.2, 0.0, 0.0]


def _no_forces(atoms, results):
    results.pop("forces")


CASES = {
    "truncated-extxyz": Case(truncated, ("{tmp}/truncated.extxyz", "cannot read")),
    "frame-without-forces": Case(bad_traj("no-forces.traj", edited(emt_frames(3), _no_forces)),
                                 ("{tmp}/no-forces.traj, frame 1", "no forces")),
    "nan-force": Case(bad_traj("nan.traj", edited(emt_frames(3), _nan_force)),
                      ("{tmp}/nan.traj, frame 1", "atom 2 (H): non-finite force")),
    "inf-position": Case(bad_traj("inf.traj", edited(emt_frames(3), _inf_position)),
                         ("{tmp}/inf.traj, frame 1", "atom 3 (H): non-finite position")),
    "overlapping-atoms": Case(bad_traj("overlap.traj", edited(emt_frames(3), _overlap)),
                              ("{tmp}/overlap.traj, frame 1",
                               "atoms 1 (H) and 2 (H) are 0.200 Å apart")),
    "empty-file": Case(raw_file("empty.extxyz", b""), ("{tmp}/empty.extxyz", "empty file")),
    "binary-file": Case(raw_file("binary.extxyz", bytes(range(256)) * 16),
                        ("{tmp}/binary.extxyz", "cannot read")),
    "huge-cell": Case(bad_traj("huge.traj", edited(emt_frames(2), _huge_cell, index=0)),
                      ("{tmp}/huge.traj, frame 0", "cell edge 2e+04 Å exceeds")),
    "forces-in-hartree-per-bohr": Case(in_hartree_per_bohr(True),
                                       ("{tmp}/hartree.extxyz", "51", "Hartree/Bohr")),
    "forces-in-hartree-per-bohr-no-energies": Case(
        in_hartree_per_bohr(False), ("{tmp}/hartree.extxyz", "force RMS", "Hartree/Bohr")),
    "missing-file": Case(missing_file, ("{tmp}/missing.extxyz: no such file",)),
    "ingest-into-a-non-store-directory": Case(
        ingest_into_non_store, ("{tmp}/notes", "not an oamlm-dist store"), store="notes"),
    "info-of-a-non-store-directory": Case(info_of_non_store,
                                          ("{tmp}/notes", "no oamlm-dist store here"),
                                          store="notes"),
    "store-from-a-newer-layout": Case(newer_layout, ("{tmp}/s.zarr", "layout version 99",
                                                     "upgrade oamlm-dist")),
    "store-with-corrupt-metadata": Case(corrupt_metadata,
                                        ("{tmp}/s.zarr", "cannot read store metadata")),
    "thiolate-scheme-with-oxygen": Case(thiolate_with_oxygen,
                                        ("{tmp}/methanol.extxyz", "frame 0, atom 1 (O)",
                                         "not in the thiolate scheme")),
    "core-gold-without-gold-neighbours": Case(isolated_gold,
                                              ("frame 0, atom 24 (Au)",
                                               "at least 2 Au within 5.0 Å")),
    "campaign-unknown-key": Case(campaign("store: s.zarr\nfit: {model: m, referenes: 5}\n"),
                                 ("{tmp}/c.yaml", "fit: unknown key 'referenes'")),
    "campaign-wrong-type": Case(campaign("store: s.zarr\nfit: {model: m, references: five}\n"),
                                ("{tmp}/c.yaml", "fit.references must be int")),
    "sample-negative-steps": Case(sample("--steps", "-5"),
                                  ("steps (-5) must be a positive multiple",)),
    "sample-zero-runs": Case(sample("--runs", "0"), ("--runs must be >= 1, got 0",)),
    "fit-zero-references": Case(fit_trained("--model", "m2", "--references", "0"),
                                ("--references must be >= 1, got 0",)),
    "fit-robust-out-of-range": Case(fit_trained("--model", "m2", "--robust", "3"),
                                    ("--robust must lie in [1, 2], got 3",)),
    "fit-frames-selecting-nothing": Case(fit_trained("--model", "m2", "--frames", "99"),
                                         ("{tmp}/s.zarr", "no described rows")),
    "fit-before-describe": Case(fit_undescribed, ("{tmp}/s.zarr", "no descriptor set")),
    "evaluate-unknown-model": Case(evaluate("nope", alkane_file),
                                   ("{tmp}/s.zarr", "no model 'nope'")),
    "evaluate-elements-the-model-does-not-know": Case(
        evaluate("m", methanol_file),
        ("{tmp}/methanol.extxyz, frame 0, atom 1 (O)", "unknown to model 'm'")),
    "optimize-unknown-model": Case(optimize(True, "--model", "nope"),
                                   ("{tmp}/s.zarr", "no model 'nope'")),
    "optimize-model-of-a-missing-store": Case(optimize(False, "--model", "m"),
                                              ("{tmp}/s.zarr", "no oamlm-dist store here")),
    "optimize-negative-fine-timeout": Case(optimize(False, "--fine-timeout", "-1"),
                                           ("--fine-timeout must be > 0 s, got -1",)),
    "optimize-zero-agreement-angle": Case(optimize(False, "--agree-deg", "0"),
                                          ("--agree-deg must be > 0 °, got 0",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_in_one_line_and_leaves_the_store_unchanged(name, tmp_path, capsys,
                                                                     env):
    case = CASES[name]
    argv = case.make(tmp_path, env)
    capsys.readouterr()
    before = tree_checksum(tmp_path / case.store)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines()
             if line.strip() and not line.startswith("dask dashboard:")]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"oamlm-dist {argv[0]}: error: "), lines[0]
    for text in case.expect:
        assert text.format(tmp=tmp_path) in lines[0], (text, lines[0])
    assert tree_checksum(tmp_path / case.store) == before


def test_the_catalogue_is_complete():
    assert len(CASES) >= 20
