import gzip
import lzma
import subprocess
import sys

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from ase.io import read, write

from oamlm_dist.cli import main
from oamlm_dist.ingest import ingest
from oamlm_dist.store import Store
from tests.conftest import emt_frames, tree_checksum


def write_extxyz(path, frames):
    write(str(path), frames, format="extxyz")
    return path


@pytest.mark.parametrize("suffix", ["extxyz", "extxyz.gz", "extxyz.xz", "traj", "db"])
def test_round_trip_is_bit_exact(tmp_path, suffix):
    frames = emt_frames(4)
    plain = write_extxyz(tmp_path / "plain.extxyz", frames)
    path = tmp_path / f"t.{suffix}"
    if suffix == "extxyz":
        path = plain
    elif suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif suffix.endswith(".xz"):
        path.write_bytes(lzma.compress(plain.read_bytes()))
    elif suffix == "traj":
        write(str(path), frames)
    else:
        with connect(str(path)) as db:
            for atoms in frames:
                db.write(atoms)
    expected = read(str(path), index=":")
    ingest(tmp_path / "s.zarr", [str(path)])
    back = list(Store.open(tmp_path / "s.zarr").iter_frames())
    assert len(back) == len(expected)
    for a, b in zip(expected, back, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.get_forces(), b.get_forces())
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.cell.array, b.cell.array)
        assert np.array_equal(a.pbc, b.pbc)


def test_reingest_is_a_no_op(tmp_path, capsys):
    path = write_extxyz(tmp_path / "a.extxyz", emt_frames(3))
    assert main(["ingest", str(tmp_path / "s.zarr"), str(path)]) == 0
    before = tree_checksum(tmp_path / "s.zarr")
    assert main(["ingest", str(tmp_path / "s.zarr"), str(path)]) == 0
    assert "already ingested" in capsys.readouterr().out
    assert tree_checksum(tmp_path / "s.zarr") == before
    assert Store.open(tmp_path / "s.zarr").n_frames() == 3


def test_frames_without_energy_are_accepted(tmp_path):
    frames = emt_frames(2)
    for atoms in frames:
        atoms.calc.results.pop("energy")
    path = write_extxyz(tmp_path / "a.extxyz", frames)
    ingest(tmp_path / "s.zarr", [str(path)])
    back = list(Store.open(tmp_path / "s.zarr").iter_frames())
    assert "energy" not in back[0].calc.results


def _bad_frames(kind):
    frames = emt_frames(3)
    results = [dict(atoms.calc.results) for atoms in frames]
    bad = frames[1]
    if kind == "nan-force":
        results[1]["forces"][2, 1] = np.nan
    elif kind == "inf-position":
        bad.positions[3, 0] = np.inf
    elif kind == "overlap":
        bad.positions[2] = bad.positions[1] + [0.2, 0.0, 0.0]
    elif kind == "huge-force":
        results[1]["forces"][0] = [5000.0, 0, 0]
    elif kind == "mixed-elements":
        bad.numbers[0] = 7
    # Attach results after editing: a calculator drops results once positions change.
    for atoms, result in zip(frames, results, strict=True):
        atoms.calc = SinglePointCalculator(atoms, **result)
    if kind == "no-forces":
        bad.calc = None
    return frames


BAD_FRAME_CASES = {
    "no-forces": "frame 1: no forces",
    "nan-force": "frame 1: atom 2 (H): non-finite force",
    "inf-position": "frame 1: atom 3 (H): non-finite position",
    "overlap": "frame 1: atoms 1 (H) and 2 (H) are 0.200 Å apart",
    "huge-force": "frame 1: atom 0 (C): force 5e+03 eV/Å exceeds",
    "mixed-elements": "frame 1: elements",
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAME_CASES))
def test_bad_frames_give_one_line_and_leave_store_unchanged(tmp_path, capsys, kind):
    good = write_extxyz(tmp_path / "good.extxyz", emt_frames(2, seed=5))
    assert main(["ingest", str(tmp_path / "s.zarr"), str(good)]) == 0
    capsys.readouterr()
    before = tree_checksum(tmp_path / "s.zarr")
    frames = _bad_frames(kind)
    path = tmp_path / "bad.traj"  # .traj keeps NaN/inf and missing forces exactly as given
    write(str(path), frames)
    assert main(["ingest", str(tmp_path / "s.zarr"), str(good), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and BAD_FRAME_CASES[kind] in err
    assert tree_checksum(tmp_path / "s.zarr") == before


@pytest.mark.parametrize("kind", sorted(BAD_FRAME_CASES))
def test_skip_bad_skips_and_counts(tmp_path, capsys, kind):
    path = tmp_path / "bad.traj"
    write(str(path), _bad_frames(kind))
    assert main(["ingest", str(tmp_path / "s.zarr"), "--skip-bad", str(path)]) == 0
    assert "skipped 1 bad" in capsys.readouterr().out
    assert Store.open(tmp_path / "s.zarr").n_frames() == 2


FILE_CASES = {
    "empty": (b"", "empty file"),
    "binary": (bytes(range(256)) * 8, "cannot read"),
    "truncated": (None, "cannot read"),
}


@pytest.mark.parametrize("kind", sorted(FILE_CASES))
def test_bad_files_fail_before_creating_a_store(tmp_path, capsys, kind):
    content, expected = FILE_CASES[kind]
    path = tmp_path / f"{kind}.extxyz"
    if content is None:
        good = write_extxyz(tmp_path / "good.extxyz", emt_frames(2)).read_text().splitlines()
        content = "\n".join(good[: len(good) - 2]).encode()
    path.write_bytes(content)
    assert main(["ingest", str(tmp_path / "s.zarr"), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(path) in err
    assert not (tmp_path / "s.zarr").exists()


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "oamlm_dist.cli", "ingest", str(tmp_path / "s.zarr"),
         str(tmp_path / "missing.extxyz")], capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing.extxyz: no such file")
    assert "Traceback" not in result.stderr
