"""In-memory model mathematics: EMLM (force norms) and OAMLM (force directions)."""

from .emlm import EMLM, fit_emlm
from .oamlm import (
    DEFAULT_SIGMA1,
    DEFAULT_SIGMA2,
    FALLBACK_SIGMA2,
    METHODS,
    OAMLM,
    accept_references,
    angles_deg,
    fit_oamlm,
    mean_angle_deg,
    median_angle_deg,
    predict_directions,
    sigma2_for_class,
    weighted_angle_deg,
)
from .regression import (
    DEFAULT_BETA,
    HUBER_ALPHA,
    HUBER_EPSILON,
    NormalEquations,
    factorize,
    fit_huber_columns,
    input_distances,
    ridge_parameter,
)

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_SIGMA1",
    "DEFAULT_SIGMA2",
    "EMLM",
    "FALLBACK_SIGMA2",
    "HUBER_ALPHA",
    "HUBER_EPSILON",
    "METHODS",
    "NormalEquations",
    "OAMLM",
    "accept_references",
    "angles_deg",
    "factorize",
    "fit_emlm",
    "fit_huber_columns",
    "fit_oamlm",
    "input_distances",
    "mean_angle_deg",
    "median_angle_deg",
    "predict_directions",
    "ridge_parameter",
    "sigma2_for_class",
    "weighted_angle_deg",
]
