# GPAW build configuration used by `make setup` (GPAW_CONFIG=deploy/gpaw-siteconfig.py).
#
# MPI-enabled GPAW, so a fine calculation can run on several ranks (GPAW setting
# mpi_ranks > 1: oamlm_dist/gpaw_mpi.py launches `mpiexec`/`srun`). Imported by plain
# `python` (a Dask worker, the serial path) GPAW 26 still runs serially and never
# initialises MPI (measured with 26.7: MPI_Initialized false after a calculation, in a
# Dask worker too); only GPAW_MPI_BACKEND=cgpaw (set for the launched ranks) or
# `gpaw python` does. Needs the MPI compiler wrapper: Debian `openmpi-bin libopenmpi-dev`
# (make setup installs them), a cluster's MPI module. libxc and BLAS are found in the
# standard paths (Debian `libxc-dev libopenblas-dev`); on a cluster add the module's
# include_dirs/library_dirs here. GPAW executes this file with its defaults in scope
# (libraries = ['xc']); a siteconfig replaces its fallback of linking `-lblas`.
mpi = True
compiler = 'mpic++'  # the C++ wrapper: GPAW 26 compiles its extension as C++
libraries += ['blas']  # noqa: F821 - defined by GPAW's setup.py
