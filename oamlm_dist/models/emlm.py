"""Extreme Minimal Learning Machine (EMLM): force norms from distances to references.

Seed 000, eq. 6-8: with ``D = cdist(X, Q)``, the weights solve the ridge system
``(DᵀD + λI) W = DᵀY`` and a prediction is ``cdist(x, Q) W``.

The ridge λ. Eq. 6 scales the data term by 1/(2N) and the penalty by β/(2K); its
stationarity condition (eq. 7) ``(1/N)Dᵀ(DW - Y) + (β/K)W = 0`` gives
``λ = Nβ/K``, whereas eq. 8 prints ``λ = β/K``. With β = √eps both are tiny, but they
differ by a factor N. The default follows eq. 8 as printed (what the source's code
solved); ``normalised_ridge=True`` uses ``Nβ/K`` (N = sum of row weights for weighted fits),
the exact minimiser of eq. 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .regression import DEFAULT_BETA, NormalEquations, input_distances, ridge_parameter


@dataclass(frozen=True, eq=False)
class EMLM:
    """A trained EMLM.

    Attributes
    ----------
    Q : (K, d) array
        Reference descriptors (in the scaled descriptor space).
    W : (K, n_outputs) array
        Regression weights.
    beta : float
        β of eq. 6.
    normalised_ridge : bool
        Whether the ridge was ``Nβ/K`` (True) or ``β/K`` (eq. 8 as printed).
    vector_output : bool
        Whether the training targets were 2-D; if False, :meth:`predict` returns shape (n,).
    """

    Q: np.ndarray
    W: np.ndarray
    beta: float = DEFAULT_BETA
    normalised_ridge: bool = False
    vector_output: bool = False

    @property
    def n_references(self) -> int:
        """K."""
        return self.Q.shape[0]

    @classmethod
    def from_normal_equations(
        cls,
        Q: np.ndarray,
        equations: NormalEquations,
        beta: float | None = None,
        normalised_ridge: bool = False,
        vector_output: bool = False,
    ) -> EMLM:
        """Solve accumulated normal equations of ``cdist(X, Q)`` against Y.

        This is the distributed path: tasks accumulate :class:`NormalEquations` over row
        blocks, the client merges and calls this.
        """
        beta = DEFAULT_BETA if beta is None else float(beta)
        Q = np.asarray(Q)
        ridge = ridge_parameter(beta, Q.shape[0], equations.weight_sum, normalised_ridge)
        W = equations.solve(ridge)
        return cls(Q=Q, W=W, beta=beta, normalised_ridge=normalised_ridge,
                   vector_output=vector_output)

    def predict(self, X: np.ndarray, distances: np.ndarray | None = None) -> np.ndarray:
        """Outputs for descriptors X (n, d): (n,) or (n, n_outputs) like the training Y.

        ``distances``: ``D_in`` of X against the references, when already computed.
        """
        D_in = input_distances(X, self.Q) if distances is None else distances
        prediction = D_in @ self.W
        return prediction if self.vector_output else prediction[:, 0]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON-serialisable settings; :meth:`from_arrays` restores the model."""
        settings = {
            "model": "emlm",
            "beta": self.beta,
            "normalised_ridge": self.normalised_ridge,
            "vector_output": self.vector_output,
        }
        return {"Q": self.Q, "W": self.W}, settings

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> EMLM:
        """Inverse of :meth:`to_arrays` (arrays are used as given, bit for bit)."""
        if settings.get("model") != "emlm":
            raise ValueError(f"settings describe a {settings.get('model')!r} model, not 'emlm'")
        return cls(
            Q=np.asarray(arrays["Q"]),
            W=np.asarray(arrays["W"]),
            beta=float(settings["beta"]),
            normalised_ridge=bool(settings["normalised_ridge"]),
            vector_output=bool(settings["vector_output"]),
        )


def fit_emlm(
    X: np.ndarray,
    Y: np.ndarray,
    Q: np.ndarray,
    beta: float | None = None,
    *,
    weights: np.ndarray | None = None,
    normalised_ridge: bool = False,
) -> EMLM:
    """Train an EMLM in memory (eq. 8).

    Parameters
    ----------
    X : (N, d) array
        Scaled descriptors.
    Y : (N,) or (N, n_outputs) array
        Targets (force norms).
    Q : (K, d) array
        References (usually rows of X).
    beta : float, optional
        β of eq. 6; default √eps.
    weights : (N,) array, optional
        Non-negative row weights (a weight w counts a row w times).
    normalised_ridge : bool
        Ridge ``Nβ/K`` instead of eq. 8's ``β/K`` (see the module docstring).
    """
    Y = np.asarray(Y)
    equations = NormalEquations.from_block(input_distances(X, Q), Y, weights)
    return EMLM.from_normal_equations(Q, equations, beta, normalised_ridge, Y.ndim == 2)
