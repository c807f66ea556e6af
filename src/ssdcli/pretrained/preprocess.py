"""The exact input an imported network expects; the rules live in :mod:`ssdcli.preprocessing`
(every command's path from pixels to input), re-exported here."""

from __future__ import annotations

from ssdcli.preprocessing import to_network_input

__all__ = ["to_network_input"]
