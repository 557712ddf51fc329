"""Write the two small input files of ``alkanes-campaign.yaml`` (both are kept in examples/).

* ``alkanes-held-out.extxyz``: test frames for the campaign's evaluate stage — every 20th
  frame of one GFN2-xTB MD run per alkane C2-C4 (750 K, 1 fs), started with velocities the
  campaign's own runs never use (``seed`` 11), so no test frame is in the training data;
* ``alkane-C4-rattled.extxyz``: butane rattled by 0.1 Å, the campaign's optimisation start.

Run: ``python examples/make_alkane_files.py [OUT_DIR] [--quick]`` (a local Dask cluster,
about a minute; ``--quick`` runs 40 MD steps instead of 200).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from oamlm_dist.cluster import get_client
from oamlm_dist.sample import MDSettings, sample
from oamlm_dist.store import Store
from oamlm_dist.structures import alkane, rattle

HERE = Path(__file__).resolve().parent


def plain(frame: Atoms, label: str) -> Atoms:
    """Positions, energy and forces only (no momenta, no reference to the temporary store)."""
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions)
    atoms.calc = SinglePointCalculator(atoms, energy=frame.get_potential_energy(),
                                       forces=frame.get_forces())
    atoms.info["source"] = label
    return atoms


def main(out_dir: str | Path = HERE, quick: bool = False) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps, every = (40, 10) if quick else (200, 20)
    held_out = out / "alkanes-held-out.extxyz"
    start = out / "alkane-C4-rattled.extxyz"
    with tempfile.TemporaryDirectory() as tmp, get_client(n_workers=2) as client:
        store = Path(tmp) / "held-out.zarr"
        sample(store, "alkanes:2-4", "xtb", {},
               MDSettings(temperature=750, steps=steps, timestep=1.0, seed=11), runs=1,
               client=client)
        runs = sorted(Store.open(store).segments("md"), key=lambda s: s.attrs["name"])
        frames = [plain(frame, f"{segment.attrs['name']} step {frame.info['frame'] + 1}")
                  for segment in runs for frame in segment.read()[every - 1::every]]
    write(str(held_out), frames, format="extxyz")
    write(str(start), rattle(alkane(4), 0.1, seed=5), format="extxyz")
    result = {"held_out": str(held_out), "frames": len(frames), "start": str(start)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    main(*args, quick="--quick" in sys.argv)
