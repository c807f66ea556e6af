"""`python -m ssdcli` runs the `ssd` command (also what `torchrun -m ssdcli` starts)."""

from ssdcli.cli.app import main

if __name__ == "__main__":
    main()
