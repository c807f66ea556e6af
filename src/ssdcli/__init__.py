"""ssdcli: the SSD object detector (Liu et al., ECCV 2016) as one command-line tool.

Importing the package has no side effects: no environment variable is set and no switch is read
here. Process-wide choices are the ``ssd`` entry point's (:mod:`ssdcli.__main__`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssdcli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
