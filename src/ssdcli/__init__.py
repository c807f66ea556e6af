"""ssdcli: the SSD object detector (Liu et al., ECCV 2016) as one command-line tool."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssdcli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
