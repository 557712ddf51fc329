"""GPAW single points on 2 MPI ranks (mpi_ranks=2): same results and failure records as serial.

Needs GPAW built with MPI and an MPI launcher, which `make setup` installs
(deploy/gpaw-siteconfig.py, Debian openmpi-bin libopenmpi-dev).
"""

from __future__ import annotations

import logging
import os
import subprocess

import numpy as np
import psutil
import pytest
from ase.build import molecule

from oamlm_dist import gpaw_mpi
from oamlm_dist.calculators import (
    GPAWCalculator,
    calculator_settings,
    ensure_cell,
    fine_single_point,
)
from oamlm_dist.errors import FineCalculationError, InputError, SCFConvergenceError

pytestmark = pytest.mark.gpaw

# H2 in LCAO/dzp in a small box: ~2 s serial. Results of 2 ranks agreed with the serial
# run to 4e-13 eV and 3e-12 eV/Å (H2O, same settings); the tolerances leave room for
# another MPI library's summation order.
PARAMS = {"vacuum": 2.5}
E_TOL, F_TOL = 1e-6, 1e-5


@pytest.fixture(autouse=True)
def _yielding_mpi(monkeypatch):
    # Open MPI busy-polls while a rank waits; on a 2-core box shared with other work that
    # doubles the run time. Ranks launched from this process (and from Dask workers started
    # in a test) inherit the setting; other MPI libraries ignore it.
    monkeypatch.setenv("OMPI_MCA_mpi_yield_when_idle", "1")


@pytest.fixture(scope="module")
def h2():
    atoms = molecule("H2")
    atoms.positions[1, 2] += 0.06  # stretched: clear forces
    return ensure_cell(atoms, PARAMS["vacuum"])


@pytest.fixture(scope="module")
def serial(h2):
    return fine_single_point(h2, "gpaw", PARAMS)


def _assert_same(result, reference):
    assert abs(result.energy - reference.energy) < E_TOL, (result.energy, reference.energy)
    np.testing.assert_allclose(result.forces, reference.forces, rtol=0, atol=F_TOL)


def test_two_ranks_match_serial(h2, serial, monkeypatch):
    ran = []

    def spy(*args, **kwargs):
        ran.append(real(*args, **kwargs))
        return ran[-1]

    real = gpaw_mpi.run
    monkeypatch.setattr(gpaw_mpi, "run", spy)
    result = fine_single_point(h2, "gpaw", {**PARAMS, "mpi_ranks": 2})
    assert [r["ranks"] for r in ran] == [2]  # GPAW's world.size inside the subprocess
    assert abs(serial.forces[1, 2]) > 1.0
    _assert_same(result, serial)
    assert [a["outcome"] for a in result.attempts] == ["ok"]
    assert result.settings == {**serial.settings, "mpi_ranks": 2}


def test_two_ranks_from_a_dask_worker_with_the_dft_resource(h2, serial):
    from distributed import Client

    from oamlm_dist.cluster import FINE_RESOURCE, local_cluster

    # the DFT pool of a cluster: one worker process that owns the job's cores
    with local_cluster(n_workers=1) as cluster, Client(cluster) as client:
        future = client.submit(
            fine_single_point, h2, "gpaw", {**PARAMS, "mpi_ranks": 2},
            resources={FINE_RESOURCE: 1}, pure=False,
        )
        result = future.result(timeout=300)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # shutdown chatter
    _assert_same(result, serial)
    assert result.attempts[0]["settings"]["mpi_ranks"] == 2


def test_scf_failure_gives_the_serial_record_and_keeps_ranks_in_the_retry(h2):
    params = {**PARAMS, "maxiter": 3}
    with pytest.raises(SCFConvergenceError) as serial_err:
        fine_single_point(h2, "gpaw", params, retry=False)
    with pytest.raises(SCFConvergenceError) as mpi_err:
        fine_single_point(h2, "gpaw", {**params, "mpi_ranks": 2}, retry=False)
    (serial_attempt,), (mpi_attempt,) = serial_err.value.attempts, mpi_err.value.attempts
    assert mpi_attempt["outcome"] == serial_attempt["outcome"] == "scf_not_converged"
    assert mpi_attempt["message"] == serial_attempt["message"]
    # the retry after an SCF failure (fine_single_point's loop) runs on as many ranks
    safer = GPAWCalculator(**params, mpi_ranks=2, mpi_launcher="srun").safer()
    assert safer.settings["mpi_ranks"] == 2 and safer.settings["mpi_launcher"] == "srun"
    assert safer.settings["maxiter"] == 1000


def test_a_failing_subprocess_is_a_one_line_error(h2):
    with pytest.raises(FineCalculationError) as err:
        fine_single_point(h2, "gpaw", {**PARAMS, "basis": "nosuchbasis", "mpi_ranks": 2})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("gpaw single point on H2 failed: mpiexec -n 2 (GPAW on 2 MPI ranks)")
    assert "H.nosuchbasis.basis" in message
    assert [a["outcome"] for a in err.value.attempts] == ["error"]
    # the launcher itself refuses (Open MPI: more ranks than cores): its help text, one line
    if "Open MPI" in _mpiexec_version() or "OpenRTE" in _mpiexec_version():
        ranks = (os.cpu_count() or 1) + 1
        with pytest.raises(FineCalculationError, match=f"mpiexec -n {ranks} .* exited with "
                           "status 1: There are not enough slots available") as err:
            fine_single_point(h2, "gpaw", {**PARAMS, "mpi_ranks": ranks})
        assert "\n" not in str(err.value)


def _mpiexec_version() -> str:
    done = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
    return done.stdout + done.stderr


def test_missing_launcher_wrong_rank_count_and_timeout_are_errors(h2):
    settings = calculator_settings("gpaw", **PARAMS)
    with pytest.raises(gpaw_mpi.MPIRunError, match="cannot start no-such-mpiexec -n 2"):
        gpaw_mpi.run(h2, settings, 2, ["no-such-mpiexec", "-n", "{ranks}"])
    # one process that GPAW sees as a 1-rank world (as a GPAW built without MPI would)
    with pytest.raises(gpaw_mpi.MPIRunError, match=r"ran GPAW on 1 rank\(s\), not 2"):
        gpaw_mpi.run(h2, settings, 2, ["env", "RANKS={ranks}"])
    with pytest.raises(FineCalculationError, match=r"timed out after 0\.5 s"):
        fine_single_point(h2, "gpaw", {**PARAMS, "mpi_ranks": 2, "mpi_timeout": 0.5})
    left = [p for p in psutil.Process().children(recursive=True)
            if "mpiexec" in p.name() or "oamlm_dist.gpaw_mpi" in " ".join(p.cmdline())]
    assert not left  # the launcher and its ranks were stopped


def test_mpi_settings_are_checked():
    with pytest.raises(InputError, match="mpi_ranks must be a positive integer"):
        calculator_settings("gpaw", mpi_ranks=0)
    with pytest.raises(InputError, match="unknown mpi_launcher 'mpirun'"):
        calculator_settings("gpaw", mpi_launcher="mpirun")
    with pytest.raises(InputError, match="must be strings and contain"):
        calculator_settings("gpaw", mpi_launcher=["mpirun", "-np", "2"])
    with pytest.raises(InputError, match="mpi_timeout"):
        calculator_settings("gpaw", mpi_timeout=0)
    assert gpaw_mpi.launch_command("srun", 4) == ["srun", "--ntasks=4", "--cpus-per-task=1"]
    assert "mpi_ranks" not in calculator_settings("gpaw")  # serial provenance unchanged
