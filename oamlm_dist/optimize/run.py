"""The ``optimize`` stage: hybrid optimisation of one or many structures on a Dask cluster."""

from __future__ import annotations

import os
from pathlib import Path

from ase.io import write

from oamlm_dist.active.ensemble import ForceEnsemble
from oamlm_dist.errors import InputError
from oamlm_dist.forcefield import ForceModel
from oamlm_dist.ingest import read_frames
from oamlm_dist.optimize.hybrid import HybridOptimizer, HybridSettings, optimize_many
from oamlm_dist.optimize.online import FineOnly, OnlineModel
from oamlm_dist.optimize.plots import plot_rounds
from oamlm_dist.store import Store

THIOLATE_ELEMENTS = {"Au", "S", "C", "H"}
OPTIONS = {"fine_timeout_s": "--fine-timeout", "max_uncertainty": "--max-uncertainty",
           "agree_deg": "--agree-deg"}


def online_model(store: Store, model: str | None, atoms_list, scheme: str | None
                 ) -> OnlineModel:
    """The pre-trained model ``model`` of the store, or a cold start for these structures."""
    if model:
        return OnlineModel.pretrained(store, model)
    species = sorted({s for atoms in atoms_list for s in atoms.get_chemical_symbols()})
    if scheme is None:
        scheme = "thiolate" if set(species) <= THIOLATE_ELEMENTS and "S" in species else "element"
    return OnlineModel.cold_start(species, scheme=scheme)


def check_fine_only(fine_only: bool, model: str | None, ensemble: str | None) -> None:
    if fine_only and (model or ensemble):
        raise InputError("optimize: --fine-only uses no model; drop --model and --ensemble")


def optimize(structures: list[str], store_path: str | os.PathLike, client, calculator: str,
             params: dict, settings: HybridSettings, model: str | None = None,
             scheme: str | None = None, out_dir: str | os.PathLike = ".",
             ensemble: str | None = None, fine_only: bool = False) -> list[dict]:
    """Relax every structure (the last frame of each file); results and trajectories.

    ``ensemble`` names a bootstrap ensemble of the store (``models/<name>-m<j>``, as written
    by ``learn``) whose uncertainty ends the ML rounds (``settings.max_uncertainty``).
    ``fine_only``: no model, only the steps on fine results (:class:`FineOnly`).
    """
    if not structures:
        raise InputError("optimize: give at least one structure file")
    check_fine_only(fine_only, model, ensemble)
    bad = settings.out_of_range()
    if bad:
        name, value, unit = bad
        raise InputError(f"optimize: {OPTIONS[name]} must be > 0 {unit}, got {value}")
    loaded = []
    for path in structures:
        atoms = read_frames(path)[-1]
        atoms.calc = None
        loaded.append((Path(path).stem, atoms))
    if model:  # a missing store or model fails before anything is created
        ForceModel.load(store_path, model)
    members = ForceEnsemble.load(store_path, ensemble) if ensemble else None
    store = Store.create(store_path, exist_ok=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    optimizers = []
    for name, atoms in loaded:
        # Each structure learns on its own copy of the model: runs never share updates.
        learner = FineOnly() if fine_only else online_model(store, model, [atoms], scheme)
        optimizers.append(HybridOptimizer(
            atoms, learner, calculator, params, settings, name=name, store=store,
            trajectory=str(out / f"{name}-hybrid.traj"), ensemble=members))
    results = optimize_many(optimizers, client)
    for optimizer, result in zip(optimizers, results, strict=True):
        if optimizer.points:
            final = out / f"{optimizer.name}-final.extxyz"
            write(str(final), optimizer.final_atoms())
            result["final"] = str(final)
            result["plot"] = plot_rounds(optimizer.state.rounds,
                                         out / f"{optimizer.name}-hybrid.png",
                                         title=f"{optimizer.name}: hybrid optimisation",
                                         fmax_target=settings.fmax)
        result["rounds"] = optimizer.state.rounds
    return results
