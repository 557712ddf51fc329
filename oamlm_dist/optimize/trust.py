"""The trust region of the hybrid's ML rounds.

An ML round relaxes on the surrogate within a radius (the largest per-atom displacement)
around the fine point it starts from. The fine calculation at its end point shows how well
the surrogate predicted the energy there; the classical trust-region rule turns the ratio

    ρ = ΔE_fine / ΔE_surrogate

into the next radius: below 1/4 the surrogate was wrong at this scale (shrink); above 3/4,
with the round stopped by the boundary, it may be trusted further (grow). The surrogate has
forces only, so its energy change is the work of its forces along the straight segment
between the two points, by the trapezoid rule (exact for a quadratic surrogate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHRINK_BELOW = 0.25
GROW_ABOVE = 0.75
GROWTH = 1.5
# a round whose largest displacement reached this fraction of the radius was stopped by it
AT_BOUNDARY = 0.9


def surrogate_energy_change(start_forces: np.ndarray, end_forces: np.ndarray,
                            step: np.ndarray) -> float:
    """−½ (f_start + f_end)·Δx: the surrogate's energy change over the step."""
    return -0.5 * float(np.sum((start_forces + end_forces) * step))


def reduction_ratio(actual: float, predicted: float) -> float:
    """ρ; a surrogate that predicted no decrease gets 0 (it cannot be trusted to grow)."""
    return actual / predicted if predicted < 0 else 0.0


@dataclass
class TrustRegion:
    radius: float  # Å
    minimum: float
    maximum: float

    @property
    def at_floor(self) -> bool:
        return self.radius <= self.minimum

    def shrink(self) -> None:
        self.radius = max(self.minimum, self.radius / 2)

    def grown(self) -> float:
        return min(self.maximum, self.radius * GROWTH)

    def update(self, rho: float, step: float) -> None:
        """After a round that went ``step`` Å (largest per-atom displacement) with ratio ρ."""
        if rho < SHRINK_BELOW:
            self.shrink()
        elif rho > GROW_ABOVE and step >= AT_BOUNDARY * self.radius:
            self.radius = self.grown()
