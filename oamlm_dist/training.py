"""The ``fit`` stage: per class, references by RS-maximin, then D_in, D_c, D_g in row blocks as
Dask tasks written to Zarr, blockwise normal equations, and the EMLM/OAMLM solves.

Store layout of a model ``models/<name>/``::

    attrs: descriptor set, fit settings, classes, created
    <class>/               attrs: class settings, trained blocks, ``version`` in force
        v<n>/              ClassModel arrays (references, scaler, W, B_c, B_g, intercepts)
            equations/     the accumulated normal equations of [norm | D_c | D_g] on D_in
        train/<block>/     D_in, D_c, D_g, norm of one describe block (its done-marker last)

Every solve writes a new version and then switches the class's attributes to it, so readers
load one complete model while a refit or an update is being written.

A training block is a describe block of a selected segment; its matrices depend only on the
block and the references, so a rerun computes only blocks without a marker, and adding frames
later updates the equations without recomputing old blocks (:func:`update`).
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from oamlm_dist.describe import DescriptorSpec, done_blocks, read_block
from oamlm_dist.descriptors import MinMaxScaler
from oamlm_dist.environments import permutation_mask
from oamlm_dist.errors import InputError, StoreError
from oamlm_dist.locks import writer_lock
from oamlm_dist.models.class_model import (
    ClassModel,
    References,
    align_to_references,
    cosine_targets,
)
from oamlm_dist.models.emlm import EMLM
from oamlm_dist.models.oamlm import OAMLM, sigma2_for_class
from oamlm_dist.models.regression import (
    DEFAULT_BETA,
    NormalEquations,
    fit_huber_columns,
    input_distances,
)
from oamlm_dist.sampling import rs_maximin
from oamlm_dist.store import Store, now_iso, task_token, version_in_force

FIT_STAGE = "fit"


@dataclass(frozen=True)
class FitSettings:
    """How a model is trained (stored with it)."""

    references: int = 2500
    robust_epsilon: float | None = None
    beta: float = DEFAULT_BETA
    seed: int = 0
    pool_size: int | None = None
    method: str = "analytic"
    sigma1: float = 0.25
    sigma2: dict | None = None  # per class; default 0.25 for Au_unit, 0.5 otherwise
    accept: bool = False
    frames: str | None = None  # segment selector of the training frames
    # "all" rows of the selected frames, or only the "references" (N = K, as in the sources)
    train_rows: str = "all"
    huber_columns_per_task: int = 256

    def validate(self) -> None:
        if self.references < 1:
            raise InputError(f"fit: --references must be >= 1, got {self.references}")
        if self.robust_epsilon is not None and not 1.0 <= self.robust_epsilon <= 2.0:
            raise InputError(f"fit: --robust must lie in [1, 2], got {self.robust_epsilon}")
        if self.train_rows not in ("all", "references"):
            raise InputError(f"fit: --train-rows must be all or references, not "
                             f"{self.train_rows!r}")
        if self.method not in ("analytic", "exact", "sqp"):
            raise InputError(f"fit: unknown --loss {self.method!r} (analytic, exact, sqp)")

    def sigma2_of(self, class_name: str) -> float:
        return (self.sigma2 or {}).get(class_name, sigma2_for_class(class_name))


def select_segments(store: Store, selector: str | None) -> set[int]:
    """Segment ids chosen by a selector: comma-separated ids, ``a-b`` ranges, or ``name:GLOB``
    / ``kind:KIND`` patterns; a leading ``~`` excludes. None selects every segment."""
    segments = store.segments()
    if not selector:
        return {s.id for s in segments}
    chosen: set[int] = set()
    excluded: set[int] = set()
    for item in (part.strip() for part in selector.split(",") if part.strip()):
        target = excluded if item.startswith("~") else chosen
        item = item.lstrip("~")
        if item.startswith(("name:", "kind:")):
            key, pattern = item.split(":", 1)
            for s in segments:
                value = s.attrs.get(key) or s.attrs.get("source", {}).get("path", "")
                if fnmatch.fnmatch(str(value), pattern):
                    target.add(s.id)
        else:
            try:
                lo, _, hi = item.partition("-")
                target.update(range(int(lo), int(hi or lo) + 1))
            except ValueError as exc:
                raise InputError(f"--frames: cannot parse {item!r} (ids, a-b, name:GLOB, "
                                 "kind:KIND, ~ to exclude)") from exc
    if not chosen:
        chosen = {s.id for s in segments}
    return chosen - excluded


def training_blocks(store: Store, set_name: str, class_name: str, segments: set[int]
                    ) -> list[str]:
    """Done describe blocks of the selected segments that hold rows of the class."""
    return [k for k in done_blocks(store, set_name, class_name) if int(k[1:7]) in segments]


def _block_rows(store: Store, set_name: str, class_name: str, key: str,
                fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    return read_block(store.group(f"classes/{set_name}/{class_name}/{key}"), fields)


def choose_references(store: Store, set_name: str, spec: DescriptorSpec, class_name: str,
                      blocks: list[str], settings: FitSettings) -> tuple[MinMaxScaler,
                                                                         References, list]:
    """Scaler fitted on the training rows, and K references picked by RS-maximin."""
    parts = [_block_rows(store, set_name, class_name, key, ("X", "P", "Z", "Y"))
             for key in blocks]
    rows = {f: np.concatenate([p[f] for p in parts]) for f in ("X", "P", "Z", "Y")}
    offsets = np.cumsum([0] + [len(p["X"]) for p in parts])
    del parts  # the rows are in ``rows`` now: one copy of a class, not two
    perms = store.group(f"classes/{set_name}/{class_name}")["permutations"][:]
    scaler, refs, picked = references_from_rows(rows, perms, spec, settings)
    where = np.searchsorted(offsets, picked, side="right") - 1
    origin = [[blocks[int(b)], int(r - offsets[b])] for b, r in zip(where, picked, strict=True)]
    return scaler, refs, origin


def references_from_rows(rows: dict[str, np.ndarray], perms: np.ndarray, spec: DescriptorSpec,
                         settings: FitSettings) -> tuple[MinMaxScaler, References, np.ndarray]:
    """Scaler fitted on ``rows`` and K of them picked by RS-maximin as references."""
    X = rows["X"]
    scaler = MinMaxScaler().fit(X)
    k = min(settings.references, len(X))
    picked = rs_maximin(X, k, seed=settings.seed, pool_size=settings.pool_size,
                        transform=scaler.transform)
    # Reference rows are kept in row order: the model does not depend on the order
    # RS-maximin found them in.
    picked = np.sort(picked)
    Z = rows["Z"][picked]
    mask = permutation_mask(Z, perms, spec.max_permutations) if spec.scheme == "element" else None
    refs = References(Q=scaler.transform(X[picked].astype(np.float64)), S=rows["P"][picked],
                      SZ=Z, T=rows["Y"][picked], perms=np.asarray(perms, dtype=np.int64),
                      perm_mask=mask,
                      match_elements=spec.scheme != "element" or spec.max_permutations is not None)
    return scaler, refs, picked


def training_matrices(cm: ClassModel, rows: dict[str, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D_in, D_c and D_g of rows against the class model's references."""
    D_in = input_distances(cm.scaler.transform(rows["X"].astype(np.float64)), cm.refs.Q)
    R, g, matched = align_to_references(cm.name, rows["P"], rows["Z"], cm.refs)
    return D_in, cosine_targets(rows["Y"], R, cm.refs.T, matched), g


def equations_of(D_in: np.ndarray, D_c: np.ndarray, D_g: np.ndarray, norm: np.ndarray,
                 weights: np.ndarray | None = None) -> NormalEquations:
    """Normal equations of D_in against the outputs [norm | D_c | D_g]."""
    return NormalEquations.from_block(D_in, np.column_stack([norm, D_c, D_g]), weights)


def solve_class_model(cm: ClassModel, equations: NormalEquations, settings: dict,
                      robust: dict | None = None) -> ClassModel:
    """EMLM and OAMLM solved from summed equations (robust B and intercepts if given)."""
    K = cm.refs.Q.shape[0]
    emlm = EMLM.from_normal_equations(cm.refs.Q, select_outputs(equations, slice(0, 1)),
                                      beta=settings["beta"])
    oamlm = OAMLM.from_normal_equations(
        cm.refs.Q, cm.refs.T, select_outputs(equations, slice(1, 1 + 2 * K)),
        beta=settings["beta"], method=settings["method"], sigma1=settings["sigma1"],
        sigma2=cm.oamlm.sigma2, accept=settings["accept"])
    if robust is not None:
        oamlm = replace(oamlm, B_c=robust["B_c"], c_c=robust["c_c"], B_g=robust["B_g"],
                        c_g=robust["c_g"], robust_epsilon=settings["robust_epsilon"])
    return replace(cm, emlm=emlm, oamlm=oamlm)


def load_class_model(store: Store, model: str, class_name: str) -> ClassModel:
    group = store.group(f"models/{model}/{class_name}")
    attrs = dict(group.attrs)  # read once: it names the version to load
    version = version_in_force(group, attrs)
    arrays = {name: version[name][...] for name in version.array_keys()}
    return ClassModel.from_arrays(arrays, attrs)


def stored_equations(store: Store, model: str, class_name: str) -> NormalEquations:
    """The normal equations the class model in force was solved from."""
    equations = version_in_force(store.group(f"models/{model}/{class_name}"))["equations"]
    return NormalEquations.from_arrays({k: equations[k][...] for k in equations.array_keys()})


def store_class_model(group, cm: ClassModel, extra: dict | None = None,
                      equations: NormalEquations | None = None) -> None:
    """Write ``cm`` (and the equations it was solved from) as a new version of ``group``.

    The arrays go to ``v<n>/``; then one attribute document, written atomically, puts that
    version in force. A reader loads the old or the new model, never a mix, and a writer
    killed midway leaves the previous version in force. The version before the previous one
    is deleted (a reader that has just read the attributes may still be loading the previous).
    """
    version = int(group.attrs.get("version", 0)) + 1
    target = group.create_group(f"v{version}", overwrite=True)
    arrays, attrs = cm.to_arrays()
    write_arrays(target, arrays)
    if equations is not None:
        write_arrays(target.create_group("equations"), equations.to_arrays())
    group.update_attributes({**attrs, **(extra or {}), "version": version})
    if f"v{version - 2}" in group:
        del group[f"v{version - 2}"]


def write_arrays(group, arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        values = np.asarray(values)
        group.create_array(name, data=values, overwrite=True,
                           chunks=tuple(max(1, n) for n in values.shape))


def compute_block(store_path: str, model: str, class_name: str, key: str) -> dict:
    """Dask task: D_in, D_c, D_g of one describe block against the class's references."""
    start = time.perf_counter()
    store = Store.open(store_path, mode="a")
    set_name = store.root[f"models/{model}"].attrs["descriptor_set"]
    cm = load_class_model(store, model, class_name)
    rows = _block_rows(store, set_name, class_name, key, ("X", "P", "Z", "Y", "norm"))
    if store.root[f"models/{model}"].attrs["settings"]["train_rows"] == "references":
        picked = [row for block, row in cm.attrs["reference_rows"] if block == key]
        rows = {name: values[picked] for name, values in rows.items()}
    D_in, D_c, D_g = training_matrices(cm, rows)
    try:
        group = store.group(f"models/{model}/{class_name}/train", create=True).create_group(
            key, overwrite=True)
        write_arrays(group, {"D_in": D_in, "D_c": D_c, "D_g": D_g, "norm": rows["norm"]})
        store.mark_done(f"{FIT_STAGE}/{model}/{class_name}", key, {"rows": len(D_in)})
    except OSError as exc:  # disk full, quota, I/O error: the block stays without a marker
        raise StoreError(
            f"{store.path}: cannot write training block {key} of model {model!r} class "
            f"{class_name}: {exc.strerror or exc}; the block is not marked done, fix the "
            "file system and rerun to resume") from exc
    return {"key": key, "rows": len(D_in), "wall_s": time.perf_counter() - start}


def block_equations(store_path: str, model: str, class_name: str, keys: list[str],
                    weights: list[float]) -> NormalEquations:
    """Dask task: normal equations of stored training blocks (rows stacked, one product)."""
    root = Store.open(store_path).group(f"models/{model}/{class_name}/train")
    blocks = [root[key] for key in keys]
    D_in = np.concatenate([b["D_in"][:] for b in blocks])
    row_weights = np.concatenate([np.full(b["D_in"].shape[0], w)
                                  for b, w in zip(blocks, weights, strict=True)])
    return equations_of(D_in, np.concatenate([b["D_c"][:] for b in blocks]),
                        np.concatenate([b["D_g"][:] for b in blocks]),
                        np.concatenate([b["norm"][:] for b in blocks]),
                        None if np.all(row_weights == 1.0) else row_weights)


def equation_groups(store: Store, model: str, class_name: str, blocks: list[str],
                    min_rows: int) -> list[list[str]]:
    """Consecutive blocks grouped until each group has ``min_rows`` rows.

    A block's equations are K x (2K + 1) whatever its rows: blocks of a few rows (training on
    the references only, N = K) would cost one such matrix each to compute and to sum.
    """
    done = store.group(f"done/{FIT_STAGE}/{model}/{class_name}")
    groups, rows = [[]], 0
    for key in blocks:
        if rows >= min_rows:
            groups.append([])
            rows = 0
        groups[-1].append(key)
        rows += int(done[key].attrs["rows"])
    return groups


def merge_equations(*parts: NormalEquations) -> NormalEquations:
    return sum(parts[1:], parts[0])


def _tree_sum(client, futures: list, fan_in: int = 4):
    """Pairwise-ish reduction on the workers; a fixed tree so the sum is reproducible."""
    while len(futures) > 1:
        futures = [client.submit(merge_equations, *futures[i:i + fan_in], pure=False)
                   if len(futures[i:i + fan_in]) > 1 else futures[i]
                   for i in range(0, len(futures), fan_in)]
    return futures[0]


def huber_columns(store_path: str, model: str, class_name: str, blocks: list[str],
                  target: str, columns: list[int], epsilon: float, gram: np.ndarray
                  ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Dask task: robust (Huber) fits of some output columns of D_c or D_g."""
    root = Store.open(store_path).group(f"models/{model}/{class_name}/train")
    D_in = np.concatenate([root[k]["D_in"][:] for k in blocks])
    D_out = np.concatenate([root[k][target][:, columns] for k in blocks])
    B, intercepts = fit_huber_columns(D_in, D_out, epsilon, gram=gram)
    return columns, B, intercepts


def solve_class(store_path: str, model: str, class_name: str, equations: NormalEquations,
                robust: dict | None, blocks: list[str]) -> dict:
    """Dask task: solve EMLM and OAMLM from the summed equations and store the model."""
    store = Store.open(store_path, mode="a")
    group = store.group(f"models/{model}/{class_name}")
    settings = store.root[f"models/{model}"].attrs["settings"]
    cm = solve_class_model(load_class_model(store, model, class_name), equations, settings,
                           robust)
    # The equations include exactly these blocks.
    store_class_model(group, cm, {"trained_rows": int(equations.n_rows),
                                  "trained_blocks": blocks}, equations)
    return {"class": class_name, "references": cm.refs.Q.shape[0],
            "rows": int(equations.n_rows)}


def select_outputs(equations: NormalEquations, columns: slice) -> NormalEquations:
    """The same normal equations restricted to some output columns (A is shared)."""
    arrays = equations.to_arrays()
    for name in ("C",):
        arrays[name] = arrays[name][:, columns]
    for name in ("yty", "y_sum"):
        arrays[name] = arrays[name][columns]
    return NormalEquations.from_arrays(arrays)


def initial_class_model(class_name: str, scaler: MinMaxScaler, refs: References,
                         settings: FitSettings) -> ClassModel:
    """A model with zero weights: carries references and scaler until the solve."""
    K = refs.Q.shape[0]
    emlm = EMLM(Q=refs.Q, W=np.zeros((K, 1)), beta=settings.beta)
    oamlm = OAMLM(Q=refs.Q, T=refs.T, B_c=np.zeros((K, K)), B_g=np.zeros((K, K)),
                  beta=settings.beta, method=settings.method, sigma1=settings.sigma1,
                  sigma2=settings.sigma2_of(class_name))
    return ClassModel(class_name, scaler, refs, emlm, oamlm)


def _progress(futures) -> None:
    if futures:
        from distributed import progress

        progress(futures)


def resolve_descriptor_set(store: Store, name: str | None) -> str:
    sets = [k for k in store.group("classes").group_keys()
            if "spec" in store.root[f"classes/{k}"].attrs]
    if name:
        if name not in sets:
            raise StoreError(f"{store.path}: no descriptor set {name!r} (have {sorted(sets)})")
        return name
    if not sets:
        raise StoreError(f"{store.path}: no descriptor set; run `oamlm-dist describe` first")
    if len(sets) > 1:
        newest = max(sets, key=lambda k: store.root[f"classes/{k}"].attrs.get("created", ""))
        return newest
    return sets[0]


def fit(store_path: str | os.PathLike, model: str, client, settings: FitSettings,
        classes: list[str] | None = None, descriptor_set: str | None = None) -> dict:
    """Train (or finish training) model ``model`` on the store's described rows."""
    settings.validate()
    store = Store.open(store_path, mode="a")
    set_name = resolve_descriptor_set(store, descriptor_set)
    spec = DescriptorSpec.from_dict(store.root[f"classes/{set_name}"].attrs["spec"])
    _check_same_model(store, model, settings, set_name)
    segments = select_segments(store, settings.frames)
    counts = store.root[f"classes/{set_name}"]
    wanted = classes or [c for c in spec.classes() if c in counts.group_keys()]
    unknown = set(wanted) - set(spec.classes())
    if unknown:
        raise InputError(f"fit: unknown classes {sorted(unknown)} (have {spec.classes()})")
    # Every check before the first write: a rejected request leaves the store unchanged.
    training = {c: training_blocks(store, set_name, c, segments) for c in wanted}
    if not any(training.values()):
        raise StoreError(f"{store.path}: no described rows for classes {wanted} in the "
                         "selected frames")
    with writer_lock(store.path, f"model-{model}"):
        # Again under the lock: another client may have created the model meanwhile.
        _check_same_model(store, model, settings, set_name)
        return _write_model(store, model, settings, set_name, spec, training, client)


def _check_same_model(store: Store, model: str, settings: FitSettings, set_name: str) -> None:
    path = f"models/{model}"
    if path in store.root:
        stored = store.root[path].attrs
        if stored.get("settings") != asdict(settings) or stored["descriptor_set"] != set_name:
            raise StoreError(f"{store.path}: model {model!r} exists with other settings; "
                             "choose another --model name")


def _write_model(store: Store, model: str, settings: FitSettings, set_name: str,
                 spec: DescriptorSpec, training: dict[str, list[str]], client) -> dict:
    """Choose the references of classes that have none yet, then train the blocks."""
    model_path = f"models/{model}"
    group = store.group(model_path, create=True)
    group.update_attributes({"descriptor_set": set_name, "settings": asdict(settings),
                        "spec": spec.to_dict(), "created": group.attrs.get("created", now_iso())})
    plans = {}
    for class_name, blocks in training.items():
        if not blocks:
            continue
        class_path = f"{model_path}/{class_name}"
        # "blocks" is written after the reference arrays: a class whose writing was
        # interrupted has none and chooses its references again.
        if class_path not in store.root or "blocks" not in store.root[class_path].attrs:
            scaler, refs, origin = choose_references(store, set_name, spec, class_name, blocks,
                                                     settings)
            cm = initial_class_model(class_name, scaler, refs, settings)
            store_class_model(store.group(class_path, create=True), cm,
                              {"reference_rows": origin, "blocks": blocks})
        plans[class_name] = store.root[class_path].attrs["blocks"]
    group.attrs["classes"] = sorted(plans)
    # A class already solved on exactly its blocks (an earlier or concurrent run) is kept.
    solved = {c: store.root[f"{model_path}/{c}"] for c, blocks in plans.items()
              if store.root[f"{model_path}/{c}"].attrs.get("trained_blocks") == blocks}
    summary = _train_blocks(store, model, {c: b for c, b in plans.items() if c not in solved},
                            client, settings)
    for class_name, class_group in solved.items():
        refs = version_in_force(class_group)["ref_Q"].shape[0]
        summary["classes"][class_name] = {"references": refs,
                                          "rows": class_group.attrs["trained_rows"]}
    return summary


def _train_blocks(store: Store, model: str, plans: dict[str, list[str]], client,
                  settings: FitSettings, weights: dict[str, float] | None = None,
                  base: dict[str, NormalEquations] | None = None) -> dict:
    """Compute missing training blocks, sum the equations, robust columns, solve per class."""
    path = str(store.path)
    block_futures = []
    for class_name, blocks in plans.items():
        done = store.done_keys(f"{FIT_STAGE}/{model}/{class_name}")
        block_futures += [
            client.submit(compute_block, path, model, class_name, key, pure=False, retries=2,
                          key=f"fit-{model}-{class_name}-{task_token(path)}-{key}")
            for key in blocks if key not in done]
    _progress(block_futures)
    client.gather(block_futures)
    summary = {"model": model, "classes": {}}
    solves = []
    for class_name, blocks in plans.items():
        groups = equation_groups(store, model, class_name, blocks, settings.references)
        parts = [client.submit(block_equations, path, model, class_name, group,
                               [(weights or {}).get(key, 1.0) for key in group], pure=False)
                 for group in groups]
        total = _tree_sum(client, parts)
        # Only the tree may hold the blocks' equations (K x 2K each): a list of them kept
        # here would pin every block's result in worker memory until all solves end.
        del parts
        included = blocks
        if base and class_name in base:
            total = client.submit(merge_equations, client.scatter(base[class_name]), total,
                                  pure=False)
            included = list(store.root[f"models/{model}/{class_name}"].attrs["trained_blocks"])
            included += blocks
        robust = None
        if settings.robust_epsilon is not None:
            robust = _robust_fit(client, path, model, class_name, included, total, settings)
        solves.append(client.submit(solve_class, path, model, class_name, total, robust,
                                    included, pure=False,
                                    key=f"solve-{model}-{class_name}-{task_token(path)}"))
    for result in client.gather(solves):
        summary["classes"][result["class"]] = {"references": result["references"],
                                               "rows": result["rows"]}
    return summary


def _robust_fit(client, path: str, model: str, class_name: str, blocks: list[str], total,
                settings: FitSettings) -> dict:
    """Huber columns of D_c and D_g as independent tasks; returns B and intercepts."""
    equations = total.result()
    gram = equations.augmented_gram()
    K = equations.n_features
    step = settings.huber_columns_per_task
    futures = [client.submit(huber_columns, path, model, class_name, blocks, target,
                             list(range(lo, min(lo + step, K))), settings.robust_epsilon, gram,
                             pure=False,
                             key=f"huber-{model}-{class_name}-{task_token(path)}-{target}-{lo}")
               for target in ("D_c", "D_g") for lo in range(0, K, step)]
    _progress(futures)
    out = {"B_c": np.zeros((K, K)), "c_c": np.zeros(K), "B_g": np.zeros((K, K)),
           "c_g": np.zeros(K)}
    for future, target in zip(futures, [t for t in ("D_c", "D_g") for _ in range(0, K, step)],
                              strict=True):
        columns, B, intercepts = future.result()
        suffix = "c" if target == "D_c" else "g"
        out[f"B_{suffix}"][:, columns] = B
        out[f"c_{suffix}"][columns] = intercepts
    return out


def update(store_path: str | os.PathLike, model: str, client, new_weight: float = 1.0,
           forget: float = 1.0) -> dict:
    """Add described blocks that arrived after training to an existing model.

    The references and scaler stay fixed; the stored normal equations (scaled by ``forget``)
    gain the new blocks' rows with weight ``new_weight``, and the model is solved again.
    With ``forget = new_weight = 1`` this equals a full fit on the union of the blocks.
    """
    store = Store.open(store_path, mode="a")
    with writer_lock(store.path, f"model-{model}"):
        return _update(store, model, client, new_weight, forget)


def _update(store: Store, model: str, client, new_weight: float, forget: float) -> dict:
    attrs = store.root[f"models/{model}"].attrs
    settings = FitSettings(**attrs["settings"])
    set_name = attrs["descriptor_set"]
    segments = select_segments(store, settings.frames)
    plans, base, weights = {}, {}, {}
    for class_name in attrs["classes"]:
        group = store.group(f"models/{model}/{class_name}")
        if "trained_blocks" not in group.attrs:
            raise StoreError(f"{store.path}: model {model!r} class {class_name} was never "
                             "solved; run `oamlm-dist fit` again to finish it")
        old = list(group.attrs["trained_blocks"])
        new = [k for k in training_blocks(store, set_name, class_name, segments) if k not in old]
        if not new:
            continue
        base[class_name] = stored_equations(store, model, class_name).scaled(forget)
        plans[class_name] = new
        weights.update(dict.fromkeys(new, new_weight))
    if not plans:
        return {"model": model, "classes": {}, "updated": False}
    summary = _train_blocks(store, model, plans, client, settings, weights, base)
    summary["updated"] = True
    return summary
