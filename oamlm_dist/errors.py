"""Exceptions a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class OamlmError(Exception):
    """Base class: an error whose message is a complete, one-line explanation for the user."""


class InputError(OamlmError):
    """Malformed or physically implausible input (file, frame, atom, settings)."""


class StoreError(OamlmError):
    """The store cannot be opened or written as asked."""


class SchemeError(InputError):
    """Chemistry that the chosen atom-class scheme does not know how to handle."""


class FineCalculationError(OamlmError):
    """A fine (DFT/xTB) single point failed, after its retry with safer settings.

    Carries the structure and the calculator's own message so the failure can be
    recorded in the store and reproduced.
    """

    def __init__(self, message: str, atoms=None, attempts: list[dict] | None = None):
        super().__init__(message)
        self.atoms = atoms
        self.attempts = attempts or []


class SCFConvergenceError(FineCalculationError):
    """The self-consistent field did not converge."""
