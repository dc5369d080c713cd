import json
import os

import pytest

from crop_classifier.utils.io import atomic_save_json, atomic_write_bytes


def test_atomic_write_uses_umask_permissions_and_replaces(tmp_path):
    p = atomic_save_json(tmp_path / "a" / "x.json", {"k": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask
    atomic_save_json(p, {"k": 2})
    assert json.loads(p.read_text()) == {"k": 2}


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    p = atomic_write_bytes(tmp_path / "x.bin", b"old")
    with pytest.raises(TypeError):
        atomic_save_json(p, {"k": object()})  # not serialisable: fails mid-write
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.bin"]
