"""The browser stage's queue-freshness arithmetic, on hand-made samples (no servers, no browser)."""
from __future__ import annotations

from pathlib import Path

from freshness import Sample, VersionWatch, fresh_queue_lags, retrains_between, summarize_lags


def watch_with(samples: list[Sample], n_labeled_of: dict[str, int], model_dir: Path) -> VersionWatch:
    watch = VersionWatch(lambda: {}, lambda: {}, model_dir)
    watch.samples = samples
    watch.n_labeled_of = dict(n_labeled_of)
    return watch


def test_lag_is_time_until_label_studio_uses_a_model_that_saw_the_label(tmp_path):
    # base 10 labeled tasks; v1 trained on 10, v2 on 11, v3 on 12.
    samples = [Sample(t, None, None, None, v) for t, v in
               [(0, "v1"), (5, "v1"), (12, "v2"), (20, "v2"), (31, "v3"), (40, "v3")]]
    watch = watch_with(samples, {"v1": 10, "v2": 11, "v3": 12}, tmp_path)
    # saves: task 1 at t=1 (k=1 -> v2 at 12), task 2 at t=8 (k=2 -> v3 at 31),
    # task 2 again at t=9 by a second annotator (still k=2), task 3 at t=35 (k=3 -> never seen).
    lags = fresh_queue_lags([(8, 2), (1, 1), (9, 2), (35, 3)], base=10, watch=watch)
    assert lags == [11, 23, 22, None]
    summary = summarize_lags(lags)
    assert summary["observed"] == 3 and summary["median_s"] == 22 and summary["max_s"] == 23


def test_a_version_missed_by_the_poller_is_read_from_its_meta_json(tmp_path):
    (tmp_path / "1" / "v9").mkdir(parents=True)
    (tmp_path / "1" / "v9" / "meta.json").write_text('{"n_labeled": 12}')
    watch = watch_with([Sample(3.0, None, None, None, "v9")], {}, tmp_path)
    assert fresh_queue_lags([(1.0, 7)], base=11, watch=watch) == [2.0]


def test_retrains_counted_from_version_numbers_even_when_old_versions_were_pruned():
    assert retrains_between("mcm-v3-20260101T000000", "mcm-v11-20260101T000500", ["mcm-v11-x"]) == 8
    assert retrains_between("custom-a", "custom-c", ["custom-a", "custom-b", "custom-c"]) == 2
