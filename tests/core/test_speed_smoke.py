"""Smoke test of the speed benchmark's plumbing at tiny N (never asserts timings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcm_core.bench import speed


def test_synthetic_features_are_deterministic_and_skewed():
    x1, y1 = speed.synthetic_features(5000, seed=1)
    x2, y2 = speed.synthetic_features(5000, seed=1)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (5000, speed.DIM) and x1.dtype == np.float32
    counts = np.bincount(y1, minlength=speed.NUM_CLASSES)
    assert counts[0] > 10 * counts[-1] > 0  # head/tail skew, every class present
    other, _ = speed.synthetic_features(5000, seed=2)
    assert not np.array_equal(other, x1)


def test_main_writes_consistent_json_and_reports_capped_fit(tmp_path, capsys):
    code = speed.main(["--sizes", "2500", "--fit-cap", "2000", "--out", str(tmp_path),
                       "--resnet-batch-sizes", "1", "2", "--resnet-repeats", "1",
                       "--score-repeats", "1"])
    assert code == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    rows = {row["n"]: row for row in result["miner"]}
    assert set(rows) == {2500}
    assert rows[2500]["n_fit"] == 2000 and rows[2500]["fit_capped"]
    per_image = {str(r["batch_size"]): r["seconds_per_image"] for r in result["resnet18"]}
    assert set(per_image) == {"1", "2"}
    for row in rows.values():
        assert row["score_vectors_per_second"] == pytest.approx(row["n"] / row["score_seconds"])
        assert row["fit_vectors_per_second"] == pytest.approx(row["n_fit"] / row["fit_seconds"])
        for bs, pct in row["overhead_pct"].items():
            assert pct == pytest.approx(100 * row["score_seconds"] / row["n"] / per_image[bs])
    assert result["max_overhead_pct"] == pytest.approx(
        max(v for row in rows.values() for v in row["overhead_pct"].values()))
    out = capsys.readouterr().out
    assert "CAPPED" in out and "2000*" in out and "speed.json" in out


def test_main_rejects_bad_sizes(tmp_path):
    with pytest.raises(SystemExit):
        speed.main(["--sizes", "0", "--out", str(tmp_path)])
