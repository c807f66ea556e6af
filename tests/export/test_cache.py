"""ssdcli.export.cache: where the cache lives, what its key holds, and that a checkpoint is
exported once: the same bytes reuse the entry, changed bytes export again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssdcli.export import cache
from ssdcli.export.cache import CACHE_ENV, cache_entry, cache_root, cached_onnx, file_sha256


def test_cache_root_env_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root({}) == tmp_path / "home" / ".cache" / "ssdcli"
    assert cache_root({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/ssdcli")
    assert cache_root({"XDG_CACHE_HOME": "/xdg", CACHE_ENV: "/mine"}) == Path("/mine")
    assert cache_root({"XDG_CACHE_HOME": "", CACHE_ENV: ""}) == tmp_path / "home" / ".cache" / "ssdcli"


def test_the_key_names_content_kind_graph_versions_and_calibration(tmp_path):
    sha = "ab" * 32
    onnx = cache_entry(sha, "ssd300", "onnx", root=tmp_path)
    assert onnx.folder.parent == tmp_path / "exports" and onnx.folder.name.startswith("ssd300-" + sha[:16] + "-onnx-")
    assert onnx.model_file.name == "model.onnx"
    assert onnx.key["checkpoint_sha256"] == sha and onnx.key["graph"] == cache.CACHED_GRAPH
    assert torch.__version__.startswith(onnx.key["versions"]["torch"])  # the distribution's version, no local tag
    assert cache_entry(sha, "ssd300", "onnx", root=tmp_path) == onnx  # deterministic
    int8_a = cache_entry(sha, "ssd300", "openvino-int8", {"calibration_sha256": "1" * 64}, root=tmp_path)
    int8_b = cache_entry(sha, "ssd300", "openvino-int8", {"calibration_sha256": "2" * 64}, root=tmp_path)
    assert int8_a.folder != int8_b.folder and int8_a.model_file.name == "model.xml"
    assert cache_entry("cd" * 32, "ssd300", "onnx", root=tmp_path).folder != onnx.folder


def test_an_entry_is_complete_only_with_its_exact_key_and_files(tmp_path):
    entry = cache_entry("ab" * 32, "ssd300", "openvino-fp32", root=tmp_path)
    entry.prepare()
    assert not entry.complete
    entry.model_file.write_text("<xml/>")
    entry.finish()
    assert not entry.complete  # the .bin is missing
    entry.model_file.with_suffix(".bin").write_bytes(b"\0")
    assert entry.complete
    (entry.folder / "key.json").write_text(json.dumps({**entry.key, "kind": "other"}))
    assert not entry.complete


def test_an_unwritable_cache_is_one_line_naming_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    entry = cache_entry("ab" * 32, "ssd300", "onnx", root=blocker)
    with pytest.raises(Exception, match=f"cannot create the export cache .*; set {CACHE_ENV} to a writable folder"):
        entry.prepare()


@pytest.mark.slow
def test_same_checkpoint_reuses_its_export_and_a_changed_one_exports_again(lite, tmp_path):
    from ssdcli.checkpoint import load_checkpoint, save_checkpoint

    notes = []
    first = cached_onnx(lite, file_sha256(lite), "ssdlite320", tmp_path, notes.append)
    assert len(notes) == 1 and "exporting" in notes[0] and first.is_file()
    stamp = first.stat().st_mtime_ns

    copy = tmp_path / "elsewhere" / "copy.pt"  # the same bytes under another name: the same entry
    copy.parent.mkdir()
    copy.write_bytes(lite.read_bytes())
    assert cached_onnx(copy, file_sha256(copy), "ssdlite320", tmp_path, notes.append) == first
    assert len(notes) == 1 and first.stat().st_mtime_ns == stamp

    changed = tmp_path / "changed.pt"
    checkpoint = load_checkpoint(lite)
    name = next(key for key in checkpoint["model"] if key.startswith("conf_heads") and key.endswith("bias"))
    checkpoint["model"][name] = checkpoint["model"][name] + 0.01  # one class score bias moved
    save_checkpoint(changed, checkpoint)
    second = cached_onnx(changed, file_sha256(changed), "ssdlite320", tmp_path, notes.append)
    assert second != first and len(notes) == 2 and "exporting" in notes[1]

    (first.parent / "key.json").unlink()  # as after a run killed mid-export
    assert cached_onnx(lite, file_sha256(lite), "ssdlite320", tmp_path, notes.append) == first
    assert len(notes) == 3 and (first.parent / "key.json").is_file()
