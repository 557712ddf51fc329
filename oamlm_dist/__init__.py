"""oamlm-dist: Dask-distributed active optimisation with EMLM/OAMLM force models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oamlm-dist")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
