"""Atomic writes (ssdcli.files): the target is the old file or the new one, never a partial one."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from ssdcli.errors import UserError
from ssdcli.files import (
    JsonListWriter,
    atomic_write,
    atomic_write_json,
    check_file_target,
    check_folder_target,
    remove_stale_temps,
    temp_path_beside,
)


def test_json_written_and_replaced(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp left behind


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def broken(file):
        file.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "no" / "such" / "x.json", {})


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "last.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pt.{int(dead.stdout)}.abcd1234.tmp"
    stale.write_bytes(b"x")
    live = temp_path_beside(target)  # this process's own: a writer still running
    live.write_bytes(b"y")
    other = tmp_path / ".best.pt.1.abcd.tmp"  # another file's temp: not ours to touch
    other.write_bytes(b"z")
    assert remove_stale_temps(target) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_json_list_is_streamed_beside_the_target_and_replaces_it_when_closed(tmp_path):
    target = tmp_path / "out" / "dets.json"  # its folder is created
    writer = JsonListWriter(target)
    writer.add({"file": "a.jpg", "detections": []})
    writer.add([1, 2.5])
    assert not target.exists()  # nothing at the target until the list is complete
    writer.close()
    writer.close()  # a second close does nothing
    assert json.loads(target.read_text()) == [{"file": "a.jpg", "detections": []}, [1, 2.5]]
    assert writer.count == 2 and [p.name for p in target.parent.iterdir()] == ["dets.json"]


def test_json_list_interrupted_replaces_an_earlier_file_only_when_closed(tmp_path):
    target = tmp_path / "dets.json"
    target.write_text('["old"]')
    writer = JsonListWriter(target)
    try:
        writer.add({"n": 1})
        assert json.loads(target.read_text()) == ["old"]  # still the earlier file while writing
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
    assert json.loads(target.read_text()) == [{"n": 1}]  # a valid list of what was written
    empty = JsonListWriter(tmp_path / "empty.json")
    empty.close()
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_json_list_clears_a_dead_writers_temp_and_follows_the_umask(tmp_path):
    target = tmp_path / "dets.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".dets.json.{int(dead.stdout)}.abcd1234.tmp"
    stale.write_text("[\n{}")  # what a SIGKILLed run leaves
    old = os.umask(0o022)
    try:
        writer = JsonListWriter(target)
        writer.close()
    finally:
        os.umask(old)
    assert not stale.exists() and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_json_list_in_an_unwritable_place_is_an_os_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        JsonListWriter(tmp_path / "file" / "dets.json")  # a file where its folder should be


# --------------------------------------------------------------------------------------------
# Full disks and unusable targets (issue 19, item 12)
# --------------------------------------------------------------------------------------------

SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch.save to a full disk


def test_torchs_short_write_is_a_disk_full_oserror_naming_the_target_and_the_old_file_stays(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def short(file):
        file.write(b"half")
        raise RuntimeError(SHORT_WRITE)

    with pytest.raises(OSError) as caught:
        atomic_write(target, short)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(RuntimeError, match="something else"):  # any other RuntimeError is left alone
        atomic_write(target, lambda file: (_ for _ in ()).throw(RuntimeError("something else")))


def test_a_failed_fsync_names_the_target(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []


def test_json_list_after_a_failed_write_keeps_the_earlier_file(tmp_path):
    target = tmp_path / "dets.json"
    target.write_text('[{"old": 1}]\n')
    writer = JsonListWriter(target)
    writer.add({"a": 1})

    class FullDisk:  # the entry is half written, then the disk is full
        def __init__(self, file):
            self.file = file

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    writer._file = FullDisk(writer._file)
    with pytest.raises(OSError) as caught:
        writer.add({"b": 2, "long": "x" * 100})
    assert caught.value.filename == str(target)
    writer.close()
    assert json.loads(target.read_text()) == [{"old": 1}]  # never a list cut mid-entry
    assert [p.name for p in tmp_path.iterdir()] == ["dets.json"]


def test_targets_are_checked_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(UserError, match=r"^--json .*adir: is a folder; give a file name$"):
        check_file_target(tmp_path / "adir", "--json")
    with pytest.raises(UserError, match=r"^--json .*afile/deeper/x\.json: .*afile is a file, not a folder"):
        check_file_target(tmp_path / "afile" / "deeper" / "x.json", "--json")
    with pytest.raises(UserError, match=r"^--output .*afile: is a file, not a folder; give a folder"):
        check_folder_target(tmp_path / "afile", "--output")
    with pytest.raises(UserError, match=r"^--output .*afile/sub: .*afile is a file, not a folder"):
        check_folder_target(tmp_path / "afile" / "sub", "--output")
    check_file_target(tmp_path / "new" / "deeper" / "x.json", "--json")  # folders to be made: fine
    check_file_target(tmp_path / "afile", "--json")  # an existing file is replaced
    check_folder_target(tmp_path / "adir", "--output")
    check_folder_target(tmp_path / "new", "--output")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"--json .*locked/m\.json: cannot write in .*locked \(permission denied\)"):
            check_file_target(locked / "m.json", "--json")
        with pytest.raises(UserError, match=r"--output .*locked/sub: cannot write in .*locked"):
            check_folder_target(locked / "sub", "--output")
    finally:
        locked.chmod(0o755)


def test_a_read_only_folder_as_access_reports_it(tmp_path, monkeypatch):
    # Root (these tests' usual user) writes through chmod; access() is what the check asks.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"--json .*m\.json: cannot write in .* \((permission denied|it is on a read-only file system)\)"):
        check_file_target(tmp_path / "m.json", "--json")
