"""Orientation Adaptive Minimal Learning Machine (OAMLM): force directions.

Training (seed 000 eq. 9-10, seed 001 sec. 2.1). For query i and reference j, the
alignment gives a rotation ``R_ij`` mapping the reference neighbourhood onto the query's
and a goodness ``g_ij`` (eq. 12/13). With ``r_ij = R_ij t_j`` (reference j's unit force in
query i's frame):

* ``D_c[i, j] = y_i · r_ij`` (cosines), ``D_g[i, j] = g_ij``;
* least squares: ``B_* = (D_inᵀD_in + λI)⁻¹ D_inᵀ D_*`` with the EMLM ridge
  ``λ = β/K`` (β = √eps) added to eq. 10 so nearly singular ``D_inᵀD_in`` still factorises;
* robust: each column of ``D_c``/``D_g`` fitted by Huber regression with intercept
  (:func:`~oamlm_dist.models.regression.fit_huber_columns`).

Prediction (seed 000 eq. 14-17, seed 001 sec. 2.2). ``d_c = d_in B_c (+ c_c)``,
``d_g = d_in B_g (+ c_g)``; then a unit vector v with ``r_j · v ≈ d_c,j``, references
weighted by ``ω_j = exp(-(g_j/σ2)²)``:

* ``"analytic"``: eq. 17, ``v ∝ Σ ω_j d_c,j r_j``. It is the minimiser of eq. 15 only
  when ``Σ ω_j r_j r_jᵀ`` is a multiple of I (well-spread references), hence approximate;
* ``"exact"``: the minimiser of eq. 15 without the unit-norm constraint,
  ``(Σ ω_j r_j r_jᵀ) v = Σ ω_j d_c,j r_j``, then normalised;
* ``"sqp"``: eq. 14 / seed 001 eq. 3, ``min -Σ exp(-((d_c,j - r_j·v)/σ1)² - (g_j/σ2)²)``
  subject to ``|v| = 1``, by SLSQP from an initial guess (seed 001: the unit vector
  towards the nearest neighbour).

Optionally only references with ``g_j - d_g,j ≤ 0`` are used (seed 001); if a query
accepts none, all are used, so that every query gets a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.optimize import minimize

from .regression import (
    DEFAULT_BETA,
    HUBER_ALPHA,
    NormalEquations,
    fit_huber_columns,
    input_distances,
    ridge_parameter,
)

Method = Literal["analytic", "exact", "sqp"]
METHODS: tuple[str, ...] = ("analytic", "exact", "sqp")

DEFAULT_SIGMA1 = 0.25
"""σ1 of eq. 14 (width of the cosine misfit term)."""

FALLBACK_SIGMA2 = 0.5
"""σ2 of eq. 14/16 (Å, scale of the alignment goodness) for classes not in DEFAULT_SIGMA2."""

DEFAULT_SIGMA2: dict[str, float] = {"Au_unit": 0.25}
"""Per-class σ2 used by seed 000 for the analytic loss; other classes use FALLBACK_SIGMA2."""


def sigma2_for_class(name: str) -> float:
    """The default σ2 for an atom class (0.25 for ``"Au_unit"``, 0.5 otherwise)."""
    return DEFAULT_SIGMA2.get(name, FALLBACK_SIGMA2)


def accept_references(g: np.ndarray, d_g: np.ndarray) -> np.ndarray:
    """Seed 001's acceptance rule ``g_j - d_g,j ≤ 0``, per query.

    Parameters
    ----------
    g : (..., K) array
        Alignment goodness of the query against each reference.
    d_g : (..., K) array
        Predicted goodness ``d_in B_g (+ c_g)``.

    Returns
    -------
    (..., K) bool array
        Accepted references; a query that accepts none gets all (never an empty set).
    """
    accepted = np.asarray(g) - np.asarray(d_g) <= 0
    return accepted | ~accepted.any(axis=-1, keepdims=True)


def _reference_weights(g: np.ndarray, sigma2: float, mask: np.ndarray | None) -> np.ndarray:
    """``ω = exp(-(g/σ2)²)`` up to a per-query factor, zero outside ``mask``.

    Every use is invariant to a per-query scale, so the exponent is shifted by its
    smallest value: large g (poor alignments everywhere) cannot underflow all weights.
    """
    z = (np.asarray(g, dtype=np.float64) / sigma2) ** 2
    if mask is not None:
        z = np.where(mask, z, np.inf)
    return np.exp(-(z - z.min(axis=-1, keepdims=True)))


def _normalised(v: np.ndarray) -> np.ndarray:
    """Rows of v divided by their norms; zero rows stay zero."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def _analytic(d_c: np.ndarray, r: np.ndarray, omega: np.ndarray) -> np.ndarray:
    # Eq. 17; its denominator Σω is a positive scale that normalisation removes.
    return _normalised(np.einsum("nk,nk,nka->na", omega, d_c, r))


def _exact(d_c: np.ndarray, r: np.ndarray, omega: np.ndarray, rcond: float) -> np.ndarray:
    moment = np.einsum("nk,nka,nkb->nab", omega, r, r)
    rhs = np.einsum("nk,nk,nka->na", omega, d_c, r)
    # Pseudo-inverse: with coplanar or collinear references the component of v outside
    # their span is undetermined and set to zero.
    values, vectors = np.linalg.eigh(moment)
    keep = values > rcond * values[:, -1:]
    inverse = np.where(keep, 1.0 / np.where(keep, values, 1.0), 0.0)
    coefficients = inverse * np.einsum("nab,na->nb", vectors, rhs)
    return _normalised(np.einsum("nab,nb->na", vectors, coefficients))


def _sqp(
    d_c: np.ndarray, r: np.ndarray, depth: np.ndarray, start: np.ndarray, sigma1: float
) -> np.ndarray:
    """Minimise eq. 14 for one query over the unit sphere with SLSQP."""
    keep = depth > 0
    d_c, r = d_c[keep], r[keep]
    depth = depth[keep] / depth[keep].sum()  # loss of order one, so ftol is relative

    def loss(v: np.ndarray) -> tuple[float, np.ndarray]:
        a = (d_c - r @ v) / sigma1
        e = depth * np.exp(-a * a)
        return -e.sum(), (-2.0 / sigma1) * ((a * e) @ r)

    unit_norm = {"type": "eq", "fun": lambda v: v @ v - 1.0, "jac": lambda v: 2.0 * v}
    result = minimize(
        loss, start, jac=True, method="SLSQP", constraints=(unit_norm,),
        options={"ftol": 1e-12, "maxiter": 200},
    )
    return _normalised(result.x)


def predict_directions(
    d_c: np.ndarray,
    r: np.ndarray,
    g: np.ndarray,
    *,
    method: Method = "analytic",
    sigma1: float = DEFAULT_SIGMA1,
    sigma2: float = FALLBACK_SIGMA2,
    d_g: np.ndarray | None = None,
    v0: np.ndarray | None = None,
    rcond: float = 1e-10,
) -> np.ndarray:
    """Unit force directions from predicted cosines and aligned references.

    Parameters
    ----------
    d_c : (n, K) or (K,) array
        Predicted cosines ``d_in B_c (+ c_c)``.
    r : (n, K, 3) or (K, 3) array
        Rotated reference unit forces ``R_j t_j`` in each query's frame.
    g : (n, K) or (K,) array
        Alignment goodness of each query against each reference.
    method : {"analytic", "exact", "sqp"}
        Loss (see the module docstring). analytic and exact are vectorised over queries;
        sqp solves one small constrained problem per query.
    sigma1, sigma2 : float
        Widths of eq. 14/16 (σ1 only enters sqp).
    d_g : (n, K) or (K,) array, optional
        Predicted goodness; when given, only references with ``g_j - d_g,j ≤ 0`` are used.
    v0 : (n, 3) or (3,) array, optional
        sqp initial guesses (e.g. towards the nearest neighbour); default the analytic
        result. Normalised here.
    rcond : float
        Relative eigenvalue cutoff of the 3×3 solve in the exact method.

    Returns
    -------
    (n, 3) or (3,) array
        Unit vectors; a zero vector when the weighted sum vanishes (no information).
    """
    if method not in METHODS:
        raise ValueError(f"unknown direction method {method!r}; choose one of {METHODS}")
    d_c = np.asarray(d_c, dtype=np.float64)
    single = d_c.ndim == 1
    d_c = np.atleast_2d(d_c)
    n, K = d_c.shape
    r = np.asarray(r, dtype=np.float64).reshape(n, K, 3)
    g = np.asarray(g, dtype=np.float64).reshape(n, K)
    mask = None if d_g is None else accept_references(g, np.reshape(d_g, (n, K)))
    omega = _reference_weights(g, sigma2, mask)

    if method == "exact":
        v = _exact(d_c, r, omega, rcond)
    elif method == "analytic" or v0 is None:
        v = _analytic(d_c, r, omega)
    if method == "sqp":
        start = v if v0 is None else _normalised(np.reshape(np.asarray(v0, float), (n, 3)))
        # A zero start has no constraint gradient: start at the most trusted reference.
        empty = ~start.any(axis=1)
        start[empty] = r[empty, np.argmax(omega[empty], axis=1)]
        v = np.stack([_sqp(d_c[i], r[i], omega[i], start[i], sigma1) for i in range(n)])
    return v[0] if single else v


def angles_deg(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Angles (degrees) between paired vectors; NaN where either vector is zero.

    Uses ``atan2(|a×b|, a·b)``, accurate near 0° and 180°.
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    angle = np.degrees(
        np.arctan2(np.linalg.norm(np.cross(pred, ref), axis=-1), np.sum(pred * ref, axis=-1))
    )
    zero = (np.linalg.norm(pred, axis=-1) == 0) | (np.linalg.norm(ref, axis=-1) == 0)
    return np.where(zero, np.nan, angle)


def weighted_angle_deg(
    pred: np.ndarray, ref: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Weighted average angle (degrees), the sources' direction metric.

    Parameters
    ----------
    pred : (n, 3) array
        Predicted directions (any length).
    ref : (n, 3) array
        Reference forces (not normalised: their squared norms are the default weights,
        which emphasise large forces, whose directions matter most).
    weights : (n,) array, optional
        Override the weights ``|ref|²``.
    """
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    w = np.sum(ref * ref, axis=-1) if weights is None else np.asarray(weights, dtype=np.float64)
    # A zero vector has no direction: scored 90°, the mean angle of a random guess, so one
    # empty prediction does not turn the whole average into NaN.
    angles = np.nan_to_num(angles_deg(pred, ref), nan=90.0)
    return float(np.sum(w * angles) / np.sum(w))


def mean_angle_deg(pred: np.ndarray, ref: np.ndarray) -> float:
    """Unweighted mean angle (degrees) between paired vectors."""
    return float(np.mean(angles_deg(pred, ref)))


def median_angle_deg(pred: np.ndarray, ref: np.ndarray) -> float:
    """Median angle (degrees) between paired vectors."""
    return float(np.median(angles_deg(pred, ref)))


@dataclass(frozen=True, eq=False)
class OAMLM:
    """A trained OAMLM for one atom class.

    Attributes
    ----------
    Q : (K, d) array
        Reference descriptors.
    T : (K, 3) array
        Reference unit forces.
    B_c : (K, K) array
        Weights predicting cosines.
    B_g : (K, K) array or None
        Weights predicting alignment goodness (acceptance rule, uncertainty).
    c_c, c_g : (K,) arrays or None
        Intercepts of the robust (Huber) fit; None for least squares.
    S : (K, 1+M, 3) array or None
        Reference neighbourhood coordinates, kept for the alignment step.
    beta : float
        β of the ridge ``β/K`` of the least-squares fit.
    robust_epsilon : float or None
        Huber ε of the robust fit; None for least squares.
    huber_alpha : float
        Huber coefficient penalty α of the robust fit.
    method, sigma1, sigma2, accept
        Defaults for :meth:`predict` (see :func:`predict_directions`).
    """

    Q: np.ndarray
    T: np.ndarray
    B_c: np.ndarray
    B_g: np.ndarray | None = None
    c_c: np.ndarray | None = None
    c_g: np.ndarray | None = None
    S: np.ndarray | None = None
    beta: float = DEFAULT_BETA
    robust_epsilon: float | None = None
    huber_alpha: float = HUBER_ALPHA
    method: Method = "analytic"
    sigma1: float = DEFAULT_SIGMA1
    sigma2: float = FALLBACK_SIGMA2
    accept: bool = False

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("B_g", "c_c", "c_g", "S")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown direction method {self.method!r}; choose one of {METHODS}")
        if self.accept and self.B_g is None:
            raise ValueError("the acceptance rule needs B_g: train with D_g or set accept=False")

    @property
    def n_references(self) -> int:
        """K."""
        return self.Q.shape[0]

    @classmethod
    def from_normal_equations(
        cls, Q: np.ndarray, T: np.ndarray, equations: NormalEquations, **settings: Any
    ) -> OAMLM:
        """Least-squares model from accumulated normal equations of ``D_in``.

        The outputs of ``equations`` are the K columns of ``D_c``, optionally followed by
        the K columns of ``D_g``. ``settings`` are the remaining dataclass fields.
        """
        K = np.shape(Q)[0]
        if equations.n_outputs not in (K, 2 * K):
            raise ValueError(
                f"normal equations have {equations.n_outputs} outputs; expected D_c ({K}) "
                f"or D_c and D_g ({2 * K})"
            )
        beta = settings.pop("beta", None)
        beta = DEFAULT_BETA if beta is None else float(beta)
        B = equations.solve(ridge_parameter(beta, K, equations.weight_sum, normalised=False))
        B_g = B[:, K:] if equations.n_outputs == 2 * K else None
        return cls(Q=np.asarray(Q), T=np.asarray(T), B_c=B[:, :K], B_g=B_g, beta=beta,
                   **settings)

    def predict_outputs(self, X: np.ndarray, distances: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted cosines ``d_c`` and goodness ``d_g`` (None without B_g), each (n, K).

        ``distances``: ``D_in`` of X against the references, when already computed.
        """
        D_in = input_distances(X, self.Q) if distances is None else distances
        d_c = D_in @ self.B_c
        if self.c_c is not None:
            d_c += self.c_c
        if self.B_g is None:
            return d_c, None
        d_g = D_in @ self.B_g
        if self.c_g is not None:
            d_g += self.c_g
        return d_c, d_g

    def rotate_references(self, R: np.ndarray) -> np.ndarray:
        """``r_j = R_j t_j`` for rotations R (..., K, 3, 3); returns (..., K, 3)."""
        return np.einsum("...kab,kb->...ka", R, self.T)

    def predict(
        self,
        X: np.ndarray,
        R: np.ndarray,
        g: np.ndarray,
        *,
        v0: np.ndarray | None = None,
        method: Method | None = None,
    ) -> np.ndarray:
        """Unit force directions for n queries.

        Parameters
        ----------
        X : (n, d) array
            Scaled descriptors.
        R : (n, K, 3, 3) array
            Rotations of each reference neighbourhood onto each query's.
        g : (n, K) array
            Alignment goodness.
        v0 : (n, 3) array, optional
            Initial guesses for the sqp method (towards the nearest neighbour).
        method : {"analytic", "exact", "sqp"}, optional
            Override the model's method.

        Returns
        -------
        (n, 3) array
        """
        d_c, d_g = self.predict_outputs(X)
        return predict_directions(
            d_c,
            self.rotate_references(R),
            g,
            method=self.method if method is None else method,
            sigma1=self.sigma1,
            sigma2=self.sigma2,
            d_g=d_g if self.accept else None,
            v0=v0,
        )

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (absent optional ones omitted) and JSON-serialisable settings."""
        arrays = {"Q": self.Q, "T": self.T, "B_c": self.B_c}
        for name in self._OPTIONAL:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        settings = {
            "model": "oamlm",
            "beta": self.beta,
            "robust_epsilon": self.robust_epsilon,
            "huber_alpha": self.huber_alpha,
            "method": self.method,
            "sigma1": self.sigma1,
            "sigma2": self.sigma2,
            "accept": self.accept,
        }
        return arrays, settings

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> OAMLM:
        """Inverse of :meth:`to_arrays` (arrays are used as given, bit for bit)."""
        if settings.get("model") != "oamlm":
            raise ValueError(f"settings describe a {settings.get('model')!r} model, not 'oamlm'")
        optional = {
            name: np.asarray(arrays[name]) if name in arrays else None for name in cls._OPTIONAL
        }
        epsilon = settings["robust_epsilon"]
        return cls(
            Q=np.asarray(arrays["Q"]),
            T=np.asarray(arrays["T"]),
            B_c=np.asarray(arrays["B_c"]),
            **optional,
            beta=float(settings["beta"]),
            robust_epsilon=None if epsilon is None else float(epsilon),
            huber_alpha=float(settings["huber_alpha"]),
            method=settings["method"],
            sigma1=float(settings["sigma1"]),
            sigma2=float(settings["sigma2"]),
            accept=bool(settings["accept"]),
        )


def fit_oamlm(
    X: np.ndarray,
    Q: np.ndarray,
    T: np.ndarray,
    D_c: np.ndarray,
    D_g: np.ndarray | None = None,
    *,
    S: np.ndarray | None = None,
    robust_epsilon: float | None = None,
    huber_alpha: float = HUBER_ALPHA,
    beta: float | None = None,
    weights: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-5,
    **prediction_settings: Any,
) -> OAMLM:
    """Train an OAMLM in memory.

    Parameters
    ----------
    X : (N, d) array
        Scaled descriptors.
    Q : (K, d) array
        Reference descriptors.
    T : (K, 3) array
        Reference unit forces.
    D_c : (N, K) array
        Cosines ``y_i · (R_ij t_j)``.
    D_g : (N, K) array, optional
        Alignment goodness ``g_ij``; needed for B_g (acceptance rule).
    S : (K, 1+M, 3) array, optional
        Reference neighbourhoods, stored with the model.
    robust_epsilon : float, optional
        Huber ε ∈ [1, 2] for the robust fit with intercepts; None for least squares.
    huber_alpha : float
        Huber coefficient penalty α.
    beta : float, optional
        β of the least-squares ridge ``β/K``; default √eps (also the Huber majoriser's
        stabilising diagonal, which does not change the Huber minimiser).
    weights : (N,) array, optional
        Non-negative row weights.
    max_iter, tol : int, float
        Huber iteration controls.
    **prediction_settings
        ``method``, ``sigma1``, ``sigma2``, ``accept`` for the returned model.
    """
    D_in = input_distances(X, Q)
    K = D_in.shape[1]
    outputs = np.asarray(D_c) if D_g is None else np.hstack([D_c, D_g])
    beta = DEFAULT_BETA if beta is None else float(beta)
    common = {"S": S, "beta": beta, **prediction_settings}
    if robust_epsilon is None:
        equations = NormalEquations.from_block(D_in, outputs, weights)
        return OAMLM.from_normal_equations(Q, T, equations, **common)
    # D_c and D_g columns in one call share the Gram factorisation.
    B, c = fit_huber_columns(
        D_in, outputs, robust_epsilon, alpha=huber_alpha, weights=weights,
        ridge=beta / K, max_iter=max_iter, tol=tol,
    )
    has_g = D_g is not None
    return OAMLM(
        Q=np.asarray(Q), T=np.asarray(T), B_c=B[:, :K], c_c=c[:K],
        B_g=B[:, K:] if has_g else None, c_g=c[K:] if has_g else None,
        robust_epsilon=float(robust_epsilon), huber_alpha=huber_alpha, **common,
    )
