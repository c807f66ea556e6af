"""The process entry point: ``python -m ssdcli``, the ``ssd`` console script and
``torchrun -m ssdcli``.

It sets the process-wide OpenMP spin limit (:func:`ssdcli.cli.process.limit_openmp_spin`)
before anything imports torch, then runs the Typer app; so this module imports nothing heavy.
"""

from __future__ import annotations


def main() -> None:
    """Run the ``ssd`` command in this process."""
    from ssdcli.cli.process import limit_openmp_spin

    limit_openmp_spin()
    from ssdcli.cli.app import main as run_app  # imports torch: after the spin limit

    run_app()


if __name__ == "__main__":
    main()
