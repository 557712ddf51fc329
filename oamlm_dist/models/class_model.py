"""One atom class's force model: scaler, references, EMLM norms and OAMLM directions.

This is the unit that training writes and the force field reads: everything needed to turn
a class's raw rows (SOAP ``X``, neighbourhood ``P``/``Z``) into force vectors, stored as the
arrays and attributes of one Zarr group ``models/<name>/<class>/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oamlm_dist.align import NO_MATCH, align_core_au_block, blend_block
from oamlm_dist.descriptors import MinMaxScaler
from oamlm_dist.models.emlm import EMLM
from oamlm_dist.models.oamlm import OAMLM, predict_directions
from oamlm_dist.models.regression import input_distances

#: Goodness given to a pair that no permutation could match (alignment returned +inf):
#: far beyond any real misfit (Å), so its weight exp(-(g/σ2)²) vanishes, yet finite for
#: the regressions.
UNMATCHED_G = 10.0
CORE_CLASS = "Au_core"
#: Å; permutations whose goodness is within a few of this of the best share a pair's
#: orientation (see blend_permutations)
PERMUTATION_BLEND = 0.002


def class_metric(class_name: str) -> str:
    """Alignment goodness per class: eq. 13 (g') for core Au, eq. 12 (g) otherwise."""
    return "g_prime" if class_name == CORE_CLASS else "g"


@dataclass
class References:
    """The K reference environments of a class (rows picked by RS-maximin)."""

    Q: np.ndarray  # (K, d) scaled descriptors
    S: np.ndarray  # (K, M, 3) neighbourhoods
    SZ: np.ndarray  # (K, M) neighbour atomic numbers
    T: np.ndarray  # (K, 3) unit forces
    perms: np.ndarray  # (n_perm, M) permutation table of the class
    perm_mask: np.ndarray | None = None  # (K, n_perm) allowed permutations per reference
    # Pair only neighbours of the same element. Off for the element scheme's default of all
    # M! permutations: seed 001 aligns the bare point sets, and a hydrogen whose four nearest
    # atoms are C, H, H, H must still be comparable with one whose are C, C, H, H.
    match_elements: bool = True

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"Q": self.Q, "S": self.S, "SZ": self.SZ, "T": self.T, "perms": self.perms,
                  "match_elements": np.array(self.match_elements)}
        if self.perm_mask is not None:
            arrays["perm_mask"] = self.perm_mask
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> References:
        # Models stored before the flag existed matched elements.
        match = bool(arrays["match_elements"]) if "match_elements" in arrays else True
        return cls(Q=arrays["Q"], S=arrays["S"], SZ=arrays["SZ"], T=arrays["T"],
                   perms=arrays["perms"], perm_mask=arrays.get("perm_mask"),
                   match_elements=match)


def align_to_references(class_name: str, P: np.ndarray, Z: np.ndarray, refs: References
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations (n, K, 3, 3), goodness (n, K) with unmatched pairs at ``UNMATCHED_G``, and
    a (n, K) mask of matched pairs.

    The "rotation" of a pair is the blend of its permutations' rotations (see
    :func:`blend_permutations`), so it is used only to carry reference forces into the query's
    frame (``R t``)."""
    if class_name == CORE_CLASS:
        R, g, choice = align_core_au_block(P, Z, refs.S, refs.SZ)
        matched = choice[..., 0] != NO_MATCH
    else:
        R, g, matched = blend_permutations(class_name, P, Z, refs)
    g = np.where(matched, g, UNMATCHED_G)
    return R, g, matched


def blend_permutations(class_name: str, P: np.ndarray, Z: np.ndarray, refs: References
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair's permutations weighted by ``exp(-(g_p - g_min) / PERMUTATION_BLEND)``.

    With the single best permutation, the predicted directions jump wherever two permutations
    fit equally well, and relaxations end near such places: a methyl group is nearly
    threefold symmetric (at a ring minimum 96 % of the methyl C's reference pairs have their
    best two H orders within 0.02 Å), and the S-Au-S unit of a symmetric ring is twofold
    symmetric (every pair tied). There the best permutation, and with it the rotated
    reference force, flips under an arbitrarily small move, which the hybrid's ML rounds see
    as force changes. The blend is continuous; at an exact symmetry it averages the symmetry
    images, so a reference force keeps only the component the symmetry allows. Permutations
    that fit clearly worse get no weight (:func:`~oamlm_dist.align.blend_block`).

    Measured on Au6(SCH3)6 (``benchmarks/force_changes.py``, the quick ring model trained
    with and without the blend): the Au force changes at the minimum no longer grow like 1/ε
    (1898 / 190 / 19 times GFN2-xTB's at 1e-4 / 1e-3 / 1e-2 Å, now 26 / 25 / 11), the
    force-change angle 0.02 Å away from it is 32° / 32° at 1e-4 / 1e-3 Å instead of 44° /
    36°, and the held-out directions of Au5/Au6 rings rattled by 0.03-0.08 Å are no worse
    (Au_unit 47.4° against 48.0°, C 25.4° against 25.8°). A width of 0.02 Å blurs real
    differences: Au_unit 51.5-52.2°, C 28.2-32.1°. The price is one alignment per
    permutation within reach of the best instead of one pruned search: a prediction of the
    demo model for Au6(SCH3)6 takes 33 ms instead of 30.
    """
    query_Z, ref_Z = (Z, refs.SZ) if refs.match_elements else (None, None)
    return blend_block(P, query_Z, refs.S, ref_Z, refs.perms, PERMUTATION_BLEND,
                       metric=class_metric(class_name), perm_mask=refs.perm_mask)


def cosine_targets(Y: np.ndarray, R: np.ndarray, T: np.ndarray, matched: np.ndarray
                   ) -> np.ndarray:
    """``D_c[i, j] = y_i · (R_ij t_j)``; 0 for unmatched pairs (no orientation known)."""
    D_c = np.einsum("ia,ijab,jb->ij", Y, R, T)
    return np.where(matched, D_c, 0.0)


@dataclass
class AlignedBlock:
    """Rows ``rows`` of a prediction, aligned against the K references."""

    rows: slice
    X: np.ndarray  # (n, d) scaled descriptors
    D_in: np.ndarray  # (n, K) input distances
    d_c: np.ndarray  # (n, K) predicted cosines
    d_g: np.ndarray | None  # (n, K) predicted goodness (None without B_g)
    r: np.ndarray  # (n, K, 3) reference unit forces rotated into each query's frame
    g: np.ndarray  # (n, K) alignment goodness


@dataclass
class ClassModel:
    """A trained model of one class. ``predict`` maps raw rows to forces."""

    name: str
    scaler: MinMaxScaler
    refs: References
    emlm: EMLM
    oamlm: OAMLM
    attrs: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray, P: np.ndarray, Z: np.ndarray, *, method: str | None = None,
                block: int = 256) -> dict[str, np.ndarray]:
        """Forces and diagnostics for raw rows (in blocks, to bound the (n, K, 3, 3) rotations).

        Returns ``forces`` (n, 3), ``norm`` (n,), ``direction`` (n, 3), ``spread`` (n,) in
        [0, 1] (1 − |Σ ω d_c r| / Σ ω |d_c|: 0 when every weighted reference votes for the
        same direction) and ``min_g`` (n,), the best alignment goodness (Å): how far the
        neighbourhood is from every reference geometry.
        """
        out = {k: [] for k in ("norm", "direction", "spread", "min_g")}
        method = method or self.oamlm.method
        for b in self.aligned_blocks(X, P, Z, block):
            v0 = _towards_nearest(P[b.rows]) if method == "sqp" else None
            direction = predict_directions(
                b.d_c, b.r, b.g, method=method, sigma1=self.oamlm.sigma1,
                sigma2=self.oamlm.sigma2, d_g=b.d_g if self.oamlm.accept else None, v0=v0)
            out["norm"].append(np.maximum(self.emlm.predict(b.X, distances=b.D_in), 0.0))
            out["direction"].append(direction)
            out["spread"].append(_vote_spread(b.d_c, b.r, b.g, self.oamlm.sigma2))
            out["min_g"].append(b.g.min(axis=1))
        result = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
        if not len(X):
            result["direction"] = np.zeros((0, 3))
        result["forces"] = result["norm"][:, None] * result["direction"]
        return result

    def aligned_blocks(self, X: np.ndarray, P: np.ndarray, Z: np.ndarray, block: int = 256
                       ) -> Iterator[AlignedBlock]:
        """What a direction prediction is made from, per block of ``block`` raw rows: the
        loss settings (method, σ1, σ2, acceptance) can be varied on these without aligning
        again."""
        for start in range(0, len(X), block):
            rows = slice(start, start + block)
            Xs = self.scaler.transform(np.asarray(X[rows], dtype=np.float64))
            R, g, _ = align_to_references(self.name, P[rows], Z[rows], self.refs)
            # One D_in for both models: they share the references.
            D_in = input_distances(Xs, self.refs.Q, fast=True)
            d_c, d_g = self.oamlm.predict_outputs(Xs, distances=D_in)
            yield AlignedBlock(rows, Xs, D_in, d_c, d_g, self.oamlm.rotate_references(R), g)

    # ---- storage ----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"ref_{k}": v for k, v in self.refs.to_arrays().items()}
        arrays.update({f"scaler_{k}": v for k, v in self.scaler.to_arrays().items()})
        emlm_arrays, emlm_settings = self.emlm.to_arrays()
        oamlm_arrays, oamlm_settings = self.oamlm.to_arrays()
        arrays.update({f"emlm_{k}": v for k, v in emlm_arrays.items() if k != "Q"})
        arrays.update({f"oamlm_{k}": v for k, v in oamlm_arrays.items()
                       if k not in ("Q", "T", "S")})
        attrs = {"class": self.name, "emlm": emlm_settings, "oamlm": oamlm_settings,
                 **self.attrs}
        return arrays, attrs

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> ClassModel:
        def prefixed(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        refs = References.from_arrays(prefixed("ref_"))
        emlm = EMLM.from_arrays({"Q": refs.Q, **prefixed("emlm_")}, attrs["emlm"])
        oamlm = OAMLM.from_arrays({"Q": refs.Q, "T": refs.T, **prefixed("oamlm_")},
                                  attrs["oamlm"])
        extra = {k: v for k, v in attrs.items() if k not in ("class", "emlm", "oamlm")}
        return cls(name=attrs["class"], scaler=MinMaxScaler.from_arrays(prefixed("scaler_")),
                   refs=refs, emlm=emlm, oamlm=oamlm, attrs=extra)


def _towards_nearest(P: np.ndarray) -> np.ndarray:
    """Unit vector from the centre to its nearest neighbour (seed 001's SQP start)."""
    distances = np.linalg.norm(np.nan_to_num(P, nan=np.inf), axis=2)
    nearest = P[np.arange(len(P)), np.argmin(distances, axis=1)]
    return nearest / np.linalg.norm(nearest, axis=1, keepdims=True)


def _vote_spread(d_c: np.ndarray, r: np.ndarray, g: np.ndarray, sigma2: float) -> np.ndarray:
    omega = np.exp(-((g - g.min(axis=1, keepdims=True)) / sigma2) ** 2)
    resultant = np.linalg.norm(np.einsum("ij,ij,ija->ia", omega, d_c, r), axis=1)
    total = np.einsum("ij,ij->i", omega, np.abs(d_c))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(total > 0, 1.0 - resultant / total, 1.0), 0.0, 1.0)
