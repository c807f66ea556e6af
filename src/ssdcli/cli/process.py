"""Process-wide settings the ``ssd`` command chooses before torch loads.

Only a process's owner may set them (the ``ssd`` entry point, :mod:`ssdcli.__main__`, and the
benchmark script): importing the library changes nothing in the process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

OPENMP_SPIN_COUNT = "10000"
"""``GOMP_SPINCOUNT`` the ``ssd`` command runs under: how long an idle OpenMP thread busy-waits
before it sleeps.

libgomp's default (300000 spins) keeps torch's OpenMP threads burning a core after each parallel
region; on a machine shared with other work, or when NNPACK's Winograd convolutions
(:mod:`ssdcli.models.winograd`) or NMS threads run right after, those spinning threads take the
core the next step needs. Measurements: README "CPU speed notes".
"""

SPIN_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
"""Variables by which a user already chose how OpenMP waits; ssdcli then leaves them alone."""


def limit_openmp_spin(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`OPENMP_SPIN_COUNT` for this process and its children.

    libgomp reads the variable once, when torch loads it, so this only acts before torch is
    imported, and never over a choice the user made (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``
    already set).

    Args:
        environ: the environment to change; ``os.environ`` by default.

    Returns:
        Whether the variable was set.
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or any(name in environ for name in SPIN_VARIABLES):
        return False
    environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    return True
