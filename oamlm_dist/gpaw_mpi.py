"""One GPAW single point on N MPI ranks: ``LAUNCHER -n N python -m oamlm_dist.gpaw_mpi IN OUT``.

:class:`~oamlm_dist.calculators.GPAWCalculator` comes here when its setting ``mpi_ranks``
is above 1. The calling process (a Dask worker task owning the cores of its batch job)
writes the prepared atoms and the resolved GPAW settings to ``IN`` in a temporary
directory, starts the ranks with ``mpiexec`` or ``srun`` and reads energy, forces and the
number of ranks GPAW really ran on from ``OUT``. The ranks build the calculator from the
same settings with ``mpi_ranks=1``, i.e. through the serial code path, and run with
``GPAW_MPI_BACKEND=cgpaw`` so the MPI-enabled GPAW uses MPI (imported by plain ``python``,
as in the worker itself, it stays serial and never initialises MPI).

Failures come back as the exceptions the serial path raises, so the caller's SCF retry
and failure records work unchanged: an SCF that does not converge raises GPAW's
``ConvergenceError``; a crash, a non-zero exit, a timeout or a wrong number of ranks raise
:class:`MPIRunError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io.jsonio import decode, encode

__all__ = ["LAUNCHERS", "MPIRunError", "launch_command", "main", "run"]

#: argv prefixes of the known launchers; ``{ranks}`` is replaced by the number of ranks.
#: A setting ``mpi_launcher`` may also be such a list, for site flags
#: (e.g. ``["srun", "--mpi=pmix", "-n", "{ranks}"]``).
LAUNCHERS: dict[str, list[str]] = {
    "mpiexec": ["mpiexec", "-n", "{ranks}"],
    # one CPU per rank whatever --cpus-per-task the batch job (and so srun's environment) has
    "srun": ["srun", "--ntasks={ranks}", "--cpus-per-task=1"],
}
#: marks the one-line error a rank prints before it stops, so the parent can quote it
_MARK = "oamlm_dist.gpaw_mpi error:"
#: seconds between SIGTERM and SIGKILL of a launcher that timed out
_GRACE_S = 5.0


class MPIRunError(RuntimeError):
    """The MPI subprocess crashed, exited non-zero, timed out or ran on the wrong rank count."""


def launch_command(launcher: str | list[str], ranks: int) -> list[str]:
    """The launcher's argv for ``ranks`` ranks (before ``python -m oamlm_dist.gpaw_mpi ...``).

    Raises
    ------
    ValueError
        An unknown launcher name, or a list that is not strings or lacks ``{ranks}``.
    """
    if isinstance(launcher, str):
        if launcher not in LAUNCHERS:
            raise ValueError(
                f"unknown mpi_launcher {launcher!r}; known: {', '.join(LAUNCHERS)} "
                "or a command list containing '{ranks}'"
            )
        template = LAUNCHERS[launcher]
    else:
        template = list(launcher)
        if not template or not all(isinstance(a, str) for a in template) or not any(
            "{ranks}" in a for a in template
        ):
            raise ValueError(
                f"mpi_launcher {launcher!r}: a command list must be strings and contain "
                "'{ranks}', e.g. [\"mpirun\", \"-np\", \"{ranks}\"]"
            )
    return [a.replace("{ranks}", str(int(ranks))) for a in template]


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["GPAW_MPI_BACKEND"] = "cgpaw"
    # the ranks import this package from wherever the caller imported it
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if threads is not None:  # the serial path limits threads in-process; ranks get it here
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(int(threads))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses to start as root without these (containers, CI); others ignore them
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _tail(log: Path) -> str:
    """One line that says why the ranks failed, from their combined output.

    A rank's own error line if one printed it; else the first paragraph of the MPI
    library's help text (Open MPI frames those with rules of dashes, e.g. "There are not
    enough slots available..."); else the last non-empty line.
    """
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    marked = [ln[len(_MARK):].strip() for ln in lines if ln.startswith(_MARK)]
    if marked:
        return marked[0]

    def rule(line: str) -> bool:
        return len(line) >= 10 and set(line) <= set("-=*")

    for i, line in enumerate(lines):
        if rule(line):
            paragraph = []
            for nxt in lines[i + 1:]:
                if not nxt or rule(nxt):
                    break
                paragraph.append(nxt)
            if paragraph:
                return " ".join(paragraph)
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the launcher and its ranks (their own session), then kill what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    atoms: Atoms,
    settings: dict[str, Any],
    ranks: int,
    launcher: str | list[str] = "mpiexec",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one GPAW single point on ``ranks`` MPI ranks and return its results.

    Parameters
    ----------
    atoms : ase.Atoms
        The prepared structure (already boxed); not modified.
    settings : dict
        Resolved GPAW settings (:func:`~oamlm_dist.calculators.calculator_settings`).
        The ranks use them with ``mpi_ranks=1``.
    ranks : int
        Number of MPI ranks.
    launcher : str or list of str
        ``"mpiexec"``, ``"srun"`` or an argv prefix containing ``{ranks}``.
    timeout : float, optional
        Seconds before the launcher and its ranks are stopped.

    Returns
    -------
    dict
        ``energy`` (eV), ``forces`` (n_atoms x 3 array, eV/Å), ``ranks`` (GPAW's
        ``world.size``), ``wall_s``.

    Raises
    ------
    gpaw.ConvergenceError
        The SCF did not converge (reported by the ranks).
    MPIRunError
        Anything else: the launcher is missing, a rank crashed or exited non-zero, the run
        timed out, or GPAW ran on another number of ranks (a GPAW built without MPI).
    """
    command = launch_command(launcher, ranks)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oamlm-gpaw-mpi-") as tmp:
        inp, out, log = Path(tmp, "in.json"), Path(tmp, "out.json"), Path(tmp, "log.txt")
        job = {"atoms": atoms, "settings": {**settings, "mpi_ranks": 1}}
        inp.write_text(encode(job))
        argv = [*command, sys.executable, "-m", __name__, str(inp), str(out)]
        where = f"{' '.join(command)} (GPAW on {ranks} MPI ranks)"
        with log.open("wb") as sink:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                    env=_child_env(settings.get("threads")), start_new_session=True,
                )
            except OSError as exc:
                raise MPIRunError(f"cannot start {where}: {exc}") from exc
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop(proc)
                raise MPIRunError(f"{where} timed out after {timeout:g} s") from None
            except BaseException:  # interrupted: never leave ranks running
                _stop(proc)
                raise
        result = json.loads(out.read_text()) if out.is_file() else None
        if result is not None and "error" in result:
            if result.get("scf"):
                from gpaw import ConvergenceError

                raise ConvergenceError(result["error"])
            raise MPIRunError(f"{where}: {result['error']}")
        if code != 0 or result is None:
            detail = _tail(log) or "no output"
            raise MPIRunError(f"{where} exited with status {code}: {detail}")
    if result["ranks"] != ranks:
        raise MPIRunError(
            f"{where} ran GPAW on {result['ranks']} rank(s), not {ranks}: is GPAW built with "
            "MPI (`gpaw info`: MPI enabled) and the launcher the one of its MPI library?"
        )
    return {
        "energy": float(result["energy"]),
        "forces": np.array(result["forces"], dtype=float).reshape(len(atoms), 3),
        "ranks": int(result["ranks"]),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of every rank: ``python -m oamlm_dist.gpaw_mpi IN OUT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: mpiexec -n N python -m oamlm_dist.gpaw_mpi IN.json OUT.json",
              file=sys.stderr)
        return 2
    inp, out = (Path(a) for a in args)
    rank = 0
    world = None
    try:
        from gpaw import ConvergenceError
        from gpaw.mpi import world

        from oamlm_dist.calculators import GPAWCalculator
        from oamlm_dist.calculators import _one_line as one_line

        rank = world.rank
        job = decode(inp.read_text())
        kind = GPAWCalculator(**job["settings"])
        try:
            energy, forces = kind.compute(job["atoms"])
        except ConvergenceError as exc:  # raised on every rank alike: a clean, collective end
            if rank == 0:  # the message the serial path records, re-raised by the caller
                _write(out, {"error": one_line(exc), "scf": True})
            return 0
        if rank == 0:
            _write(out, {"energy": energy, "forces": forces.tolist(), "ranks": world.size})
        return 0
    except Exception as exc:  # a rank alone may fail: say why, then stop all ranks
        print(f"{_MARK} rank {rank}: {_line(exc)}", file=sys.stderr, flush=True)
        if rank == 0:
            _write(out, {"error": _line(exc), "scf": False})
        if world is not None and world.size > 1:
            world.abort(1)
        return 1


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks that failed early all write
    tmp.write_text(json.dumps(data))  # NaN stays NaN: the caller reports non-finite results
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
