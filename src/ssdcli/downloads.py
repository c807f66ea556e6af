"""Published weight files: the torch.hub cache, and a download that reports its progress.

One function, :func:`fetch_cached`, serves every file ssdcli may download: torchvision's COCO
detectors (``ssd import torchvision:NAME``) and the ImageNet backbones (``--backbone-weights``).
A file already in torch.hub's cache (``torch.hub.get_dir()/checkpoints/<file name>``, where
``torchvision.models`` and ``torch.hub.load_state_dict_from_url`` keep it too) is used as it is,
so a machine without internet works once the file is there. Otherwise the file is downloaded,
checked against the sha256 prefix that torchvision's file names carry (``...-b556d3b4.pth``, the
check ``torch.hub.download_url_to_file`` makes), and moved into place atomically; a failed or
interrupted download leaves nothing behind.

The library never prints: progress reaches the caller through ``on_progress(done, total)``
(bytes; ``total`` is ``None`` when the server does not say), which the CLI renders as a rich bar.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

import torch

from ssdcli.errors import UserError
from ssdcli.files import replace_atomically, temp_file_for

ProgressCallback = Callable[[int, int | None], None]
"""``on_progress(bytes_done, bytes_total_or_None)``, called as a download advances."""

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
"""Seconds without data after which a download is abandoned (``urlopen``'s socket timeout)."""


def cache_path(url: str) -> Path:
    """Where torch.hub keeps the file of ``url``: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def expected_sha256_prefix(path: Path) -> str | None:
    """The sha256 prefix a torch.hub file name carries (``vgg16-397923af.pth`` -> ``397923af``)."""
    match = torch.hub.HASH_REGEX.search(path.name)
    return match.group(1) if match else None


def download_file(url: str, destination: Path, on_progress: ProgressCallback | None = None) -> None:
    """Download ``url`` to ``destination`` (its folder is created), atomically.

    The bytes go to a temp file beside ``destination``, whose sha256 must start with the prefix
    in the file name when it has one; only then is it renamed into place.

    Raises:
        OSError: the transfer failed (``urllib.error.URLError`` is one), or the file is not what
            the name promises (sha256 mismatch).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = expected_sha256_prefix(destination)
    digest = hashlib.sha256()
    with temp_file_for(destination) as tmp:
        with urlopen(url, timeout=TIMEOUT_S) as response, tmp.open("wb") as file:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if on_progress is not None:
                on_progress(done, total)
            while chunk := response.read(CHUNK_BYTES):
                file.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
            file.flush()
            os.fsync(file.fileno())
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise OSError(f"sha256 {digest.hexdigest()[:16]}... does not start with {prefix} (corrupt transfer)")
        replace_atomically(tmp, destination)


def fetch_cached(
    url: str, what: str, on_progress: ProgressCallback | None = None, advice: str = ""
) -> Path:
    """The local file of ``url``: torch.hub's cached copy, or a fresh download into that cache.

    Args:
        url: the published file.
        what: what the file is, for messages ("torchvision's COCO ssd300_vgg16 weights").
        on_progress: download progress (module docstring); not called when the file is cached.
        advice: appended to the offline message (e.g. "or pass --backbone-weights none").

    Raises:
        UserError: not cached and the download failed: one line naming the URL and the exact
            path to put the file at.
    """
    destination = cache_path(url)
    if destination.is_file():
        return destination
    try:
        download_file(url, destination, on_progress)
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, disk full, bad hash
        reason = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
        raise UserError(
            f"offline: {what} are not in the torch.hub cache and downloading {url} failed "
            f"({type(exc).__name__}: {reason}); download that file elsewhere and put it at "
            f"{destination}{advice}"
        ) from exc
    return destination
