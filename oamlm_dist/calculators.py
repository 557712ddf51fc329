"""Fine calculators: GPAW (production), tblite xTB (embedded default) and EMT (tests).

All shared logic lives in :class:`FineCalculator` and :func:`fine_single_point`
(settings resolution and validation, thread limits, running a single point on a
copy, recognising SCF failures, one retry with safer settings, provenance); each
kind is a short subclass giving its defaults, how to build the ASE calculator and
what "safer" means for it — the way dask-jobqueue keeps one class per scheduler.

Everything is built inside the call from plain, JSON-able settings, so the
functions can run in Dask tasks on remote workers and the settings that produced a
frame can be stored next to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from . import gpaw_mpi, warm
from .errors import FineCalculationError, InputError, SCFConvergenceError

__all__ = [
    "CALCULATORS",
    "EMTCalculator",
    "FineCalculator",
    "FineResult",
    "GPAWCalculator",
    "XTBCalculator",
    "calculator_settings",
    "ensure_cell",
    "fine_single_point",
    "limit_threads",
    "make_calculator",
]

# Settings every kind understands; they steer how we run, not the physics.
COMMON_DEFAULTS: dict[str, Any] = {
    # BLAS/OpenMP threads inside one single point. Dask parallelises across tasks,
    # and on a busy node tblite's default OpenMP team spins: a 56-atom GFN1 call took
    # 0.35 s with 1 thread against 0.9-3.3 s with the default 2 on a loaded 2-core box.
    # None leaves the libraries' own defaults.
    "threads": 1,
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_jsonable(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(settings, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{name} settings must be plain JSON values (numbers, strings, lists, dicts) so they "
            f"can be stored as provenance: {_one_line(exc)}"
        ) from exc


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Limit BLAS and OpenMP threads of the calling thread's library calls inside the block.

    :func:`fine_single_point` applies the ``threads`` setting with it; wrap your own
    calls to a calculator from :func:`make_calculator` the same way.

    Parameters
    ----------
    threads : int or None
        Number of threads; None changes nothing. Needs ``threadpoolctl`` (installed
        with scikit-learn); without it the block runs unchanged.
    """
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the libraries keep their defaults
        yield
        return
    with threadpool_limits(limits=int(threads)):
        yield


class FineCalculator:
    """One kind of fine calculator: resolved settings plus how to run them.

    Subclasses set :attr:`name`, :attr:`defaults` and :attr:`accepted`, implement
    :meth:`build`, and may override :meth:`prepare`, :meth:`safer` and
    :meth:`is_scf_failure`. Instances hold nothing but a JSON-able settings dict,
    so they pickle cheaply to Dask workers.

    Parameters
    ----------
    **params
        Overrides of :attr:`defaults` (and of :data:`COMMON_DEFAULTS`).

    Raises
    ------
    InputError
        On a parameter the kind does not accept or a value that is not JSON-able.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: keys accepted besides ``defaults`` and ``COMMON_DEFAULTS``
    accepted: ClassVar[frozenset[str]] = frozenset()
    #: keys consumed here and not passed on to the ASE calculator
    local_keys: ClassVar[frozenset[str]] = frozenset(COMMON_DEFAULTS)

    def __init__(self, **params: Any):
        known = set(COMMON_DEFAULTS) | set(self.defaults) | set(self.accepted)
        unknown = sorted(set(params) - known)
        if unknown:
            raise InputError(
                f"unknown {self.name} setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        settings = {**COMMON_DEFAULTS, **self.defaults, **params}
        self.settings = _check_jsonable(self.name, self.resolve(settings))

    def resolve(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Normalise and validate merged settings (hook for subclasses)."""
        threads = settings.get("threads")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"{self.name} setting threads must be a positive integer or None")
        return settings

    def calculator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the ASE calculator (settings minus local keys and Nones)."""
        return {
            k: v for k, v in self.settings.items() if k not in self.local_keys and v is not None
        }

    def build(self) -> Calculator:
        """Create a fresh ASE calculator from the settings."""
        raise NotImplementedError

    def prepare(self, atoms: Atoms) -> Atoms:
        """Return the copy the calculation runs on (hook: e.g. add a vacuum box)."""
        out = atoms.copy()
        out.calc = None
        return out

    @property
    def warm_starts(self) -> bool:
        """Whether a calculator kept from the previous single point of a series speeds up the
        next one (:mod:`oamlm_dist.warm`)."""
        return False

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Å) of an already prepared copy, on the calculator
        attached to it (a warm one) or else a fresh one."""
        if atoms.calc is None:
            atoms.calc = self.build()
        return float(atoms.get_potential_energy()), np.array(atoms.get_forces(), dtype=float)

    def safer(self, overrides: dict[str, Any] | None = None) -> FineCalculator | None:
        """The settings for the single retry after an SCF failure, or None if there is none."""
        return None

    def is_scf_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the SCF did not converge (rather than another crash)."""
        return bool(_SCF_MESSAGE.search(str(exc)))

    def _with(self, changes: dict[str, Any]) -> FineCalculator:
        return type(self)(**{**self.settings, **changes})


_SCF_MESSAGE = re.compile(
    r"(scf|self[- ]consisten\w*|kohn[- ]?sham).{0,40}(not|n't|fail\w*).{0,10}converge"
    r"|not converged|did not converge",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------- xTB
_SYSTEM_OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"


def _route_tblite_blas() -> None:
    """Make tblite's BLAS/LAPACK calls go to an optimised OpenBLAS, before it loads.

    The tblite wheel links a bundled reference BLAS/LAPACK. Loading the system
    OpenBLAS (the one GPAW links anyway) with RTLD_GLOBAL first makes the dynamic
    linker resolve tblite's unprefixed ``dgemm_``/``dsyevd_`` there; numpy's own
    OpenBLAS uses prefixed symbols and is unaffected. Measured on a 2-core node:
    GFN1-xTB energy+forces of 144 atoms 4.0 s -> 0.8 s CPU, results equal to 1e-12.
    ``OAMLM_TBLITE_BLAS=bundled`` keeps the wheel's BLAS, a path picks another
    library. Has no effect (and does nothing) once tblite is loaded in the process.
    """
    if "_libtblite" in sys.modules or "tblite._libtblite" in sys.modules:
        return
    choice = os.environ.get("OAMLM_TBLITE_BLAS", _SYSTEM_OPENBLAS).strip()
    if not choice or choice.lower() == "bundled" or not Path(choice).is_file():
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL(choice, mode=ctypes.RTLD_GLOBAL)


def _tblite_class() -> type[Calculator]:
    _route_tblite_blas()
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise InputError(f"the xtb calculator needs tblite: {_one_line(exc)}") from exc
    return TBLite


_XTB_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB", "ipea1-xtb": "IPEA1-xTB"}


class XTBCalculator(FineCalculator):
    """tblite GFN-xTB (GFN2-xTB by default; ``method="GFN1-xTB"`` for hard gold cases).

    Extra setting ``hot_start`` (K or None): converge first at this electronic
    temperature, then re-converge at ``electronic_temperature`` restarting from that
    density, so the returned energy and forces belong to the normal temperature.
    """

    name = "xtb"
    defaults: ClassVar[dict[str, Any]] = {
        "method": "GFN2-xTB",
        "charge": None,
        "multiplicity": None,
        "accuracy": 1.0,
        "electronic_temperature": 300.0,
        "max_iterations": 250,
        "mixer_damping": 0.4,
        "verbosity": 0,
        "hot_start": None,
    }
    accepted = frozenset({"guess", "mixer", "mixer_memory", "annealing", "spin_polarization",
                          "solvation", "electric_field", "xtb_config"})
    local_keys = FineCalculator.local_keys | {"hot_start"}

    def resolve(self, settings: dict[str, Any]) -> dict[str, Any]:
        settings = super().resolve(settings)
        method = str(settings["method"])
        key = method.lower() if "-" in method else f"{method.lower()}-xtb"
        if key not in _XTB_METHODS:
            raise InputError(
                f"unknown xtb method {method!r}; known: {', '.join(_XTB_METHODS.values())}"
            )
        settings["method"] = _XTB_METHODS[key]
        hot = settings["hot_start"]
        if hot is not None and not (
            isinstance(hot, int | float) and hot > settings["electronic_temperature"]
        ):
            raise InputError(
                f"xtb hot_start must be None or a temperature (K) above electronic_temperature "
                f"({settings['electronic_temperature']} K), got {hot!r}"
            )
        return settings

    def build(self) -> Calculator:
        return _tblite_class()(**self.calculator_kwargs())

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        hot = self.settings.get("hot_start")
        if hot is None:
            return super().compute(atoms)
        calc = self.build()
        calc.set(electronic_temperature=float(hot))
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        # With cache_api (tblite's default) set() keeps the API calculator and its
        # last result; calculating with no system changes restarts from that density.
        calc.set(electronic_temperature=self.settings["electronic_temperature"])
        calc.calculate(atoms, ["energy", "forces"], [])
        return float(calc.results["energy"]), np.array(calc.results["forces"], dtype=float)

    def safer(self, overrides: dict[str, Any] | None = None) -> FineCalculator | None:
        s = self.settings
        changes = {
            "max_iterations": max(int(s["max_iterations"]), XTB_SAFER["max_iterations"]),
            "mixer_damping": min(float(s["mixer_damping"]), XTB_SAFER["mixer_damping"]),
        }
        return self._with({**changes, **(overrides or {})})


# Retry after an xTB SCF failure: stronger Broyden damping and twice the iterations,
# same Hamiltonian and temperature so the frame stays comparable with the others.
# Measured with tblite 0.8 (GFN2-xTB, 300 K, 1 thread): every ring Au_n(SCH3)_n,
# n = 3..8, from structures.gold_thiolate_ring and from a regular 2n-gon converges with
# the defaults. The hard cases are metallic gold (Au13 icosahedron, Au19/Au38 octahedra,
# rattled copies: 7 structures, all failing by default). Damping 0.2 or 0.1 with 500
# iterations rescued Au13 only (~1 s); hot_start 3000 K (converge hot, re-converge at
# 300 K from that density) on top rescued the same one 20x slower; electronic
# temperature 1000-5000 K, tblite's annealing, the EEQ guess and looser accuracy rescued
# none; damping 0.05-0.1 with 1000 iterations converged Au13/Au19/Au38 in one process
# and failed on the same inputs in the next (chaotic SCF; 20-230 s per failing try).
# GFN1-xTB converged on all of them (Au55 in 2.5 s): for gold cores use
# method="GFN1-xTB", or retry={"method": "GFN1-xTB"} to accept a GFN1 frame (recorded
# in the attempt's settings) when GFN2 fails.
XTB_SAFER: dict[str, Any] = {"max_iterations": 500, "mixer_damping": 0.2}


# ---------------------------------------------------------------------------- GPAW
def ensure_cell(atoms: Atoms, vacuum: float = 4.0) -> Atoms:
    """Return a copy that has a simulation cell, adding one for isolated molecules.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure; not modified.
    vacuum : float
        Vacuum (Å) between the atoms and each cell face when a cell is added.

    Returns
    -------
    ase.Atoms
        A copy without calculator. If ``atoms`` is non-periodic and its cell does not
        span three dimensions, the copy is centred in a box with ``vacuum`` on all
        sides; otherwise its cell is kept.

    Raises
    ------
    InputError
        If some direction is periodic but the cell does not span three dimensions.
    """
    out = atoms.copy()
    out.calc = None
    if out.cell.rank == 3:
        return out
    if out.pbc.any():
        raise InputError(
            f"{out.get_chemical_formula()} is periodic along {out.pbc.tolist()} but its cell "
            "does not span 3 dimensions; give a full cell or make it non-periodic"
        )
    if not vacuum > 0:
        raise InputError(f"vacuum must be > 0 Å to box an isolated molecule, got {vacuum!r}")
    out.center(vacuum=float(vacuum))
    return out


def series_frame(atoms: Atoms, name: str, params: dict[str, Any] | None = None) -> Atoms:
    """The copy that a series of single points on moving atoms (an MD run, an optimisation)
    should move, prepared once for the whole series: GPAW boxes an isolated molecule here.
    A box per geometry would move the real-space grid under the atoms (egg-box noise in the
    forces) and change the cell at every call, which also defeats warm starts."""
    return _kind(name)(**(params or {})).prepare(atoms)


class GPAWCalculator(FineCalculator):
    """GPAW, PBE, spin-paired; LCAO/dzp by default, ``mode="fd"`` with h = 0.2 Å as in the source.

    Extra settings:

    ``vacuum`` (Å)
        Box added around molecules without a cell.
    ``mpi_ranks`` (int or None)
        Above 1: run the single point MPI-parallel on that many ranks in a subprocess
        (:mod:`oamlm_dist.gpaw_mpi`), for a worker that owns that many cores (a batch job
        with ``processes: 1``, see ``deploy/install.md``). None or 1: serial, in-process.
        Needs GPAW built with MPI (``make setup`` does); results equal the serial ones.
    ``mpi_launcher``
        ``"mpiexec"`` (default; PBS, a workstation), ``"srun"`` (SLURM) or an argv prefix
        containing ``{ranks}``, e.g. ``["srun", "--mpi=pmix", "-n", "{ranks}"]``.
    ``mpi_timeout`` (s or None)
        Stop the ranks and fail the attempt after this long.
    """

    name = "gpaw"
    defaults: ClassVar[dict[str, Any]] = {
        "mode": "lcao",
        "basis": "dzp",
        "xc": "PBE",
        "h": 0.2,
        "spinpol": False,
        "txt": None,
        "vacuum": 4.0,
    }
    accepted = frozenset({
        "charge", "convergence", "eigensolver", "gpts", "hund", "kpts", "magmoms", "maxiter",
        "mixer", "nbands", "occupations", "parallel", "poissonsolver", "random", "setups",
        "symmetry", "interpolation", "mpi_ranks", "mpi_launcher", "mpi_timeout",
    })
    local_keys = FineCalculator.local_keys | {"vacuum", "mpi_ranks", "mpi_launcher", "mpi_timeout"}

    def __init__(self, **params: Any):
        # the LCAO basis default is meaningless for grid modes: GPAW picks its own guess
        mode = params.get("mode", self.defaults["mode"])
        if mode != "lcao" and "basis" not in params:
            params = {**params, "basis": None}
        super().__init__(**params)

    def resolve(self, settings: dict[str, Any]) -> dict[str, Any]:
        settings = super().resolve(settings)
        ranks = settings.get("mpi_ranks")
        if ranks is not None and (
            isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1
        ):
            raise InputError(f"gpaw setting mpi_ranks must be a positive integer, got {ranks!r}")
        if "mpi_launcher" in settings:
            try:
                gpaw_mpi.launch_command(settings["mpi_launcher"], 1)
            except (TypeError, ValueError) as exc:
                raise InputError(f"gpaw setting {_one_line(exc)}") from exc
        timeout = settings.get("mpi_timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise InputError(f"gpaw setting mpi_timeout must be seconds > 0, got {timeout!r}")
        return settings

    @property
    def warm_starts(self) -> bool:
        # MPI runs live in a subprocess per single point: nothing survives to reuse
        return (self.settings.get("mpi_ranks") or 1) == 1

    def calculator_kwargs(self) -> dict[str, Any]:
        # txt=None must reach GPAW: leaving it out means a log on standard output
        return {**super().calculator_kwargs(), "txt": self.settings["txt"]}

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        ranks = self.settings.get("mpi_ranks") or 1
        if ranks == 1:
            return super().compute(atoms)
        s = self.settings
        result = gpaw_mpi.run(
            atoms, s, ranks, s.get("mpi_launcher", "mpiexec"), s.get("mpi_timeout")
        )
        return result["energy"], result["forces"]

    def build(self) -> Calculator:
        from gpaw import GPAW

        return GPAW(**self.calculator_kwargs())

    def prepare(self, atoms: Atoms) -> Atoms:
        return ensure_cell(atoms, self.settings["vacuum"])

    def is_scf_failure(self, exc: BaseException) -> bool:
        try:
            from gpaw import ConvergenceError
        except ImportError:  # pragma: no cover - gpaw is a dependency
            ConvergenceError = ()  # noqa: N806
        return isinstance(exc, ConvergenceError) or super().is_scf_failure(exc)

    def safer(self, overrides: dict[str, Any] | None = None) -> FineCalculator | None:
        # Strongly damped Pulay mixing with a short history (GPAW's advice for
        # difficult metallic clusters) and more iterations; occupations are kept so
        # energies stay comparable with first-attempt frames.
        changes = {
            "mixer": {"name": "pulay", "beta": 0.02, "nmaxold": 5, "weight": 50.0},
            "maxiter": max(int(self.settings.get("maxiter") or 333), 1000),
        }
        return self._with({**changes, **(overrides or {})})


# ----------------------------------------------------------------------------- EMT
class EMTCalculator(FineCalculator):
    """ASE's effective-medium theory; cheap, for tests only."""

    name = "emt"
    defaults: ClassVar[dict[str, Any]] = {}
    accepted = frozenset({"asap_cutoff"})

    def build(self) -> Calculator:
        from ase.calculators.emt import EMT

        return EMT(**self.calculator_kwargs())


CALCULATORS: dict[str, type[FineCalculator]] = {
    cls.name: cls for cls in (XTBCalculator, GPAWCalculator, EMTCalculator)
}


def _kind(name: str) -> type[FineCalculator]:
    key = str(name).strip().lower()
    if key not in CALCULATORS:
        raise InputError(
            f"unknown fine calculator {name!r}; known: {', '.join(sorted(CALCULATORS))}"
        )
    return CALCULATORS[key]


def calculator_settings(name: str, **params: Any) -> dict[str, Any]:
    """Resolved, JSON-able settings of a fine calculator (defaults merged with ``params``).

    Parameters
    ----------
    name : str
        ``"xtb"``, ``"gpaw"`` or ``"emt"``.
    **params
        Overrides of the kind's defaults.

    Returns
    -------
    dict
        Plain JSON values, suitable as provenance.

    Raises
    ------
    InputError
        Unknown calculator name, unknown setting or non-JSON-able value.
    """
    return _kind(name)(**params).settings


def make_calculator(name: str, **params: Any) -> Calculator:
    """Build a fresh ASE calculator of the named kind.

    Parameters
    ----------
    name : str
        ``"xtb"`` (tblite, GFN2-xTB by default), ``"gpaw"`` (PBE, LCAO/dzp by default)
        or ``"emt"`` (tests).
    **params
        Overrides of the kind's defaults, see :func:`calculator_settings`. Keys that
        steer the run (``threads``, ``vacuum``, ``hot_start``) are not passed on.

    Returns
    -------
    ase.calculators.calculator.Calculator

    Raises
    ------
    InputError
        Unknown calculator name or setting.
    """
    return _kind(name)(**params).build()


@dataclass
class FineResult:
    """Outcome of :func:`fine_single_point`.

    Attributes
    ----------
    energy : float
        Potential energy (eV).
    forces : numpy.ndarray
        Forces, shape (n_atoms, 3) (eV/Å).
    settings : dict
        The JSON-able settings of the attempt that succeeded.
    attempts : list of dict
        Every attempt in order: ``settings``, ``outcome`` (``"ok"``,
        ``"scf_not_converged"``, ``"error"``, ``"non_finite"``), ``message``, ``wall_s``,
        ``warm_start`` (started from the series' previous calculator) and, where the
        calculator reports them (GPAW), ``scf_iterations`` of a completed attempt.
    wall_s : float
        Wall time of all attempts (s).
    calculator : str
        The calculator kind.
    """

    energy: float
    forces: np.ndarray
    settings: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    calculator: str = ""


def fine_single_point(
    atoms: Atoms,
    name: str,
    params: dict[str, Any] | None = None,
    retry: bool | dict[str, Any] = True,
    series: str | None = None,
) -> FineResult:
    """Energy and forces of ``atoms`` from a fine calculator, retrying once after an SCF failure.

    Runs on a copy (GPAW gets a vacuum box if the atoms have no cell); the caller's
    atoms are never modified. For a series of related geometries (an optimisation,
    finite differences) box once with :func:`ensure_cell` and pass boxed atoms: a new
    box per geometry moves the real-space grid under the atoms, which adds egg-box
    noise to energy differences (0.05 eV/Å in a finite-difference force of H2S).

    If the SCF does not converge the calculation is repeated once with the kind's
    safer settings (xTB: stronger mixer damping, more iterations; GPAW: damped Pulay
    mixing, more iterations) and both attempts are recorded.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (Å).
    name : str
        ``"xtb"``, ``"gpaw"`` or ``"emt"``.
    params : dict, optional
        Overrides of the kind's defaults (see :func:`calculator_settings`).
    retry : bool or dict
        True: retry with the built-in safer settings; a dict: the safer settings
        updated with these values; False: no retry.
    series : str, optional
        A name shared by the single points of one optimisation. A kind that keeps a
        converged state (serial GPAW) starts from the calculator of the series' previous
        single point when this process ran it (:mod:`oamlm_dist.warm`); attempts record
        ``warm_start``.

    Returns
    -------
    FineResult

    Raises
    ------
    InputError
        Unknown calculator or setting, empty structure or non-finite positions.
    SCFConvergenceError
        The SCF failed on every attempt.
    FineCalculationError
        Any other failure of the calculator, or non-finite energy/forces.
    """
    kind = _kind(name)(**(params or {}))
    formula = atoms.get_chemical_formula() or "empty structure"
    if len(atoms) == 0:
        raise InputError(f"{kind.name} single point needs atoms, got an empty structure")
    if not np.isfinite(atoms.positions).all():
        raise InputError(f"{kind.name} single point on {formula}: positions are not finite")

    attempts: list[dict[str, Any]] = []
    start = time.perf_counter()
    current: FineCalculator | None = kind
    while current is not None:
        work = current.prepare(atoms)
        if current.warm_starts:
            work.calc = warm.take(series, current.settings)
        warm_start = work.calc is not None
        t0 = time.perf_counter()
        try:
            with limit_threads(current.settings.get("threads")):
                energy, forces = current.compute(work)
        except Exception as exc:  # the calculators raise many unrelated types
            scf = current.is_scf_failure(exc)
            message = _one_line(exc)
            attempts.append({
                "settings": current.settings,
                "outcome": "scf_not_converged" if scf else "error",
                "message": message,
                "wall_s": time.perf_counter() - t0,
                "warm_start": warm_start,
            })
            if not scf:
                raise FineCalculationError(
                    f"{kind.name} single point on {formula} failed: {message}",
                    atoms=_plain_copy(atoms), attempts=attempts,
                ) from exc
            nxt = None
            if len(attempts) == 1 and retry is not False:
                nxt = current.safer(retry if isinstance(retry, dict) else None)
            if nxt is None:
                raise SCFConvergenceError(
                    f"{kind.name} SCF did not converge on {formula} after {len(attempts)} "
                    f"attempt(s) (last with safer settings): {message}",
                    atoms=_plain_copy(atoms), attempts=attempts,
                ) from exc
            current = nxt
            continue
        wall = time.perf_counter() - t0
        finite = math.isfinite(energy) and bool(np.isfinite(forces).all())
        attempts.append({
            "settings": current.settings,
            "outcome": "ok" if finite else "non_finite",
            "message": "" if finite else "non-finite energy or forces",
            "wall_s": wall,
            "warm_start": warm_start,
            "scf_iterations": _scf_iterations(work.calc),
        })
        if not finite:
            raise FineCalculationError(
                f"{kind.name} single point on {formula} returned non-finite energy or forces",
                atoms=_plain_copy(atoms), attempts=attempts,
            )
        if forces.shape != (len(atoms), 3):
            raise FineCalculationError(
                f"{kind.name} single point on {formula} returned forces of shape "
                f"{forces.shape}, expected {(len(atoms), 3)}",
                atoms=_plain_copy(atoms), attempts=attempts,
            )
        if current.warm_starts:
            warm.keep(series, current.settings, work.calc)
        return FineResult(
            energy=energy,
            forces=forces,
            settings=current.settings,
            attempts=attempts,
            wall_s=time.perf_counter() - start,
            calculator=kind.name,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _scf_iterations(calculator: Calculator | None) -> int | None:
    """SCF iterations of the latest single point, where the calculator reports them (GPAW)."""
    count = getattr(calculator, "get_number_of_iterations", None)
    return None if count is None else int(count())


def _plain_copy(atoms: Atoms) -> Atoms:
    out = atoms.copy()
    out.calc = None
    return out
