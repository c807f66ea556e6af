"""torch.hub cache and downloads with progress; tests never touch the network."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import pytest
import torch

from ssdcli import downloads
from ssdcli.downloads import cache_path, download_file, fetch_cached
from ssdcli.errors import UserError


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty torch.hub dir, and a network that is down unless a test says otherwise."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(downloads, "urlopen", offline)
    return tmp_path / "hub"


class FakeResponse(io.BytesIO):
    """What ``urlopen`` returns: a readable body with headers."""

    def __init__(self, body: bytes, length: bool = True) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))} if length else {}


def _serve(monkeypatch, body: bytes, length: bool = True) -> list[str]:
    opened = []

    def fake_urlopen(url, timeout):
        opened.append(url)
        return FakeResponse(body, length)

    monkeypatch.setattr(downloads, "urlopen", fake_urlopen)
    return opened


def _hashed_name(body: bytes, stem: str = "weights") -> str:
    return f"{stem}-{hashlib.sha256(body).hexdigest()[:8]}.pth"


def test_cache_path_is_torch_hubs(hub) -> None:
    url = "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth"
    assert cache_path(url) == hub / "checkpoints" / "ssd300_vgg16_coco-b556d3b4.pth"


def test_a_cached_file_is_used_offline(hub) -> None:
    url = "https://example.org/models/x-12345678.pth"
    cached = hub / "checkpoints" / "x-12345678.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"anything")  # not re-hashed: torch.hub trusts its cache the same way
    calls = []
    assert fetch_cached(url, "the x weights", on_progress=lambda *a: calls.append(a)) == cached
    assert calls == []


def test_download_reports_progress_and_lands_atomically(hub, monkeypatch) -> None:
    body = bytes(range(256)) * 10_000  # 2.56 MB: three chunks of 1 MiB
    name = _hashed_name(body)
    opened = _serve(monkeypatch, body)
    progress = []
    path = fetch_cached(f"https://example.org/{name}", "the x", on_progress=lambda d, t: progress.append((d, t)))
    assert path == hub / "checkpoints" / name and path.read_bytes() == body
    assert opened == [f"https://example.org/{name}"]
    total = len(body)
    assert progress == [(0, total), (1 << 20, total), (2 << 20, total), (total, total)]
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left


def test_download_without_length_reports_unknown_total(hub, monkeypatch) -> None:
    body = b"x" * 10
    _serve(monkeypatch, body, length=False)
    progress = []
    download_file("https://example.org/plain.pth", hub / "plain.pth", lambda d, t: progress.append((d, t)))
    assert progress == [(0, None), (10, None)]
    assert (hub / "plain.pth").read_bytes() == body


def test_a_corrupt_download_is_refused_and_leaves_nothing(hub, monkeypatch) -> None:
    body = b"the real file"
    name = _hashed_name(body)
    _serve(monkeypatch, b"something else")
    with pytest.raises(UserError, match=r"sha256 .* does not start with"):
        fetch_cached(f"https://example.org/{name}", "the x weights")
    assert list((hub / "checkpoints").iterdir()) == []


def test_offline_without_the_file_names_url_and_path(hub) -> None:
    url = "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth"
    with pytest.raises(UserError) as info:
        fetch_cached(url, "torchvision's COCO ssd300_vgg16 weights", advice="; or import a file")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("offline: torchvision's COCO ssd300_vgg16 weights are not in the torch.hub cache")
    assert url in message and "Temporary failure in name resolution" in message
    assert f"put it at {hub / 'checkpoints' / 'ssd300_vgg16_coco-b556d3b4.pth'}; or import a file" in message
    assert not (hub / "checkpoints" / "ssd300_vgg16_coco-b556d3b4.pth").exists()


def test_an_interrupted_download_leaves_no_partial_file(hub, monkeypatch) -> None:
    class Broken(FakeResponse):
        def read(self, size=-1):
            if self.tell() > 0:
                raise TimeoutError("timed out")
            return super().read(4)

    monkeypatch.setattr(downloads, "urlopen", lambda url, timeout: Broken(b"12345678"))
    with pytest.raises(UserError, match="TimeoutError: timed out"):
        fetch_cached("https://example.org/y.pth", "the y weights")
    assert list((hub / "checkpoints").iterdir()) == []
