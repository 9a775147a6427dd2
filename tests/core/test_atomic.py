import json
import os

import numpy as np
import pytest

from mcm_core.atomic import atomic_savez, atomic_write, atomic_write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "model.bin"
    atomic_write(path, lambda h: h.write(b"old"))

    def crash(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_json_and_npz_round_trip(tmp_path):
    atomic_write_json(tmp_path / "sub" / "current.json", {"version": "v2"})
    assert json.loads((tmp_path / "sub" / "current.json").read_text()) == {"version": "v2"}
    atomic_savez(tmp_path / "shard.npz", a=np.arange(3))
    assert np.load(tmp_path / "shard.npz")["a"].tolist() == [0, 1, 2]
