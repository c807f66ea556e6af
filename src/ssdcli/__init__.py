"""ssdcli: the SSD object detector (Liu et al., ECCV 2016) as one command-line tool."""

import os
import sys
from importlib.metadata import PackageNotFoundError, version

OPENMP_SPIN_COUNT = "10000"
"""``GOMP_SPINCOUNT`` ssdcli asks for: how long an idle OpenMP thread busy-waits before sleeping.

libgomp's default (300000 spins, milliseconds) keeps torch's OpenMP threads burning a core after
each parallel region; NNPACK's Winograd convolutions (:mod:`ssdcli.models.winograd`), which run on
their own thread pool right after OpenMP's ReLU and pooling, then get one core instead of two.
Measured on the 2-core development machine, SSD300 batch-1 forward: Winograd 298-337 ms with the
default spin against 245-250 ms with 0 or 10000; the direct (oneDNN) path 303-372 ms either way.
libgomp reads the variable once, when torch loads it, so it is set only if torch is not imported
yet, and never over a value the user chose.
"""

if "torch" not in sys.modules:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
OPENMP_YIELDS = bool(os.environ.get("GOMP_SPINCOUNT")) or os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive"
"""Whether the OpenMP runtime was (most likely) told not to spin for long: False when torch was
imported before ssdcli with neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY=passive`` set."""

try:
    __version__ = version("ssdcli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["OPENMP_SPIN_COUNT", "OPENMP_YIELDS", "__version__"]
