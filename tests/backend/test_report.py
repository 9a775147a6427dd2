"""The mining report's numbers (backend/report/stats.py) and its held-out evaluation (backend/report/heldout.py),
on hand-computed cases; no HTTP (the routes: test_report_routes.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend.report import stats as report
from backend.report.heldout import cross_validate, too_little_data
from backend.label_config import LabelConfig, parse_label_config
from backend.report.stats import LabelEvent
from backend.task_kinds import kind_of

CONFIG = parse_label_config("""<View><Image name="image" value="$image"/>
  <Choices name="choice" toName="image"><Choice value="a"/><Choice value="b"/><Choice value="t"/></Choices></View>""")


def _annotation(label, created, cancelled=False, updated=None, id_=1):
    return {"id": id_, "was_cancelled": cancelled, "created_at": created, "updated_at": updated or created,
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}


def _events(labels: str, enabled_after: int | None = None) -> tuple[list[LabelEvent], float | None]:
    """One event per character, one second apart (t0 = 1000 s); ordering enabled before event `enabled_after`."""
    events = [LabelEvent(i + 1, 1000.0 + i, c) for i, c in enumerate(labels)]
    return events, None if enabled_after is None else 1000.0 + enabled_after - 0.5


def test_parse_time_reads_label_studio_timestamps():
    assert report.parse_time("1970-01-01T00:01:40Z") == 100.0
    assert report.parse_time("1970-01-01T00:01:40.500000Z") == 100.5
    assert report.parse_time("1970-01-01T01:01:40+01:00") == 100.0
    assert report.parse_time("1970-01-01T00:01:40") == 100.0  # naive: Label Studio's UTC
    assert report.parse_time("yesterday") is None and report.parse_time(None) is None
    assert report.iso(100.0) == "1970-01-01T00:01:40Z"


def test_label_events_first_annotation_time_latest_label_and_annotation_count():
    tasks = [
        # relabeled by a reviewer: the latest label (t) counts, the time is the first annotation's
        {"id": 1, "annotations": [_annotation("a", "2026-01-01T00:00:10Z", id_=1),
                                  _annotation("t", "2026-01-01T00:05:00Z", id_=2)]},
        # a skip does not count as an annotation nor as a label
        {"id": 2, "annotations": [_annotation("b", "2026-01-01T00:00:20Z", cancelled=True)]},
        {"id": 3, "annotations": [_annotation("b", "2026-01-01T00:00:05Z")]},
        {"id": 4, "annotations": [_annotation("zzz", "2026-01-01T00:00:06Z")]},  # not a class of the config
    ]
    events, n_annotations = report.label_events(tasks, CONFIG, kind_of(CONFIG).label_event)
    assert n_annotations == 4
    assert [(e.task_id, e.label) for e in events] == [(3, "b"), (1, "t")]
    assert events[1].at == report.parse_time("2026-01-01T00:00:10Z")


def test_detection_label_events_carry_every_box_class_and_count_images_with_a_tail_object():
    config = parse_label_config("""<View><Image name="image" value="$image"/><RectangleLabels name="box"
      toName="image"><Label value="a"/><Label value="b"/><Label value="t"/></RectangleLabels></View>""")

    def boxes(labels, created, cancelled=False):
        return {"id": 1, "was_cancelled": cancelled, "created_at": created, "updated_at": created, "result": [
            {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
             "original_height": 100, "value": {"x": 10 * i, "y": 10, "width": 5, "height": 5,
                                               "rectanglelabels": [label]}} for i, label in enumerate(labels)]}

    tasks = [{"id": 1, "annotations": [boxes(["a", "a", "t"], "2026-01-01T00:00:01Z")]},
             {"id": 2, "annotations": [boxes([], "2026-01-01T00:00:02Z")]},  # an image without objects
             {"id": 3, "annotations": [boxes(["b", "zzz"], "2026-01-01T00:00:03Z")]},  # unknown label: no object
             {"id": 4, "annotations": [boxes(["t"], "2026-01-01T00:00:04Z", cancelled=True)]}]
    events, n_annotations = report.label_events(tasks, config, kind_of(config).label_event)
    assert n_annotations == 3
    assert [(e.task_id, e.classes) for e in events] == [(1, ("a", "a", "t")), (2, ()), (3, ("b",))]
    assert report.class_counts(events, ["a", "b", "t"]) == {"a": 2, "b": 1, "t": 1}
    assert report.phase_yield(events, {"t"}, None) == {"unknown": {"n": 3, "n_tail": 1, "share": 1 / 3}}
    assert report.cumulative_per_class(events, ["a", "b", "t"])["a"].tolist() == [2, 2, 2]
    was_tail = report.tail_when_labeled([(0.0, {"t"}), (events[1].at, {"b"})], fallback=set())
    assert [was_tail(e) for e in events] == [True, False, True]  # image 3's b was tail by then


def test_a_label_counts_as_tail_if_its_class_was_tail_when_it_was_labeled():
    """The team finds many of rare class t until t is no longer tail: those finds still count; labels
    before the first version use today's tail classes."""
    events, enabled = _events("ttuttatuu", enabled_after=1)  # t0 = 1000 s, one label per second
    history = [(1000.5, {"t", "u"}), (1004.5, {"u"})]       # from the 5th label on, t is common
    is_tail = report.tail_when_labeled(history, fallback={"u"})
    assert [is_tail(e) for e in events] == [False, True, True, True, True, False, False, True, True]
    assert report.phase_yield(events, is_tail, enabled)["after"] == {"n": 8, "n_tail": 6, "share": 0.75}
    assert report.phase_yield(events, {"u"}, enabled)["after"]["n_tail"] == 3  # judged by today's tail only
    assert [b["n_tail"] for b in report.yield_buckets(events, is_tail, enabled, size=4)] == [0, 4, 2]


def test_yield_buckets_split_at_the_enabling_moment_and_by_size():
    events, enabled = _events("atbbtaatt", enabled_after=5)  # before: a t b b t | after: a a t t
    buckets = report.yield_buckets(events, {"t"}, enabled, size=3)
    assert [(b["start"], b["n"], b["n_tail"], b["phase"]) for b in buckets] == [
        (0, 3, 1, "before"), (3, 2, 1, "before"), (5, 3, 1, "after"), (8, 1, 1, "after")]
    assert buckets[1]["share"] == 0.5
    phases = report.phase_yield(events, {"t"}, enabled)
    assert phases == {"before": {"n": 5, "n_tail": 2, "share": 0.4}, "after": {"n": 4, "n_tail": 2, "share": 0.5}}
    unknown = report.phase_yield(events, {"t"}, None)
    assert unknown == {"unknown": {"n": 9, "n_tail": 4, "share": 4 / 9}}
    with pytest.raises(ValueError):
        report.yield_buckets(events, {"t"}, enabled, size=0)


def test_counts_cumulative_series_and_skewness():
    events, _ = _events("aabaaabbbt")
    counts = report.class_counts(events, ["a", "b", "t"])
    assert counts == {"a": 5, "b": 4, "t": 1}
    series = report.cumulative_per_class(events, ["a", "b", "t"])
    assert series["b"].tolist() == [0, 0, 1, 1, 1, 1, 2, 3, 4, 4] and series["t"][-1] == 1
    abt = LabelConfig("image", "image", "choice", ("a", "b", "t"))
    ratios, tail = report.skewness(counts, abt)  # mean 10/3
    assert ratios == {"a": 1.5, "b": 1.2, "t": 0.3} and tail == []  # 0.3 is not below 0.3
    ratios, tail = report.skewness({"a": 10, "b": 10, "t": 1}, abt)  # mean 7, and 1 of 21 is not chance
    assert ratios["t"] == round(1 / 7, 4) and tail == ["t"]
    assert report.skewness({}, LabelConfig("image", "image", "choice", ("a", "b"))) == ({"a": 0.0, "b": 0.0}, [])
    declared = dataclasses.replace(abt, declared_tail=("a",))  # declared: tail whatever its counts
    assert report.skewness({"a": 10, "b": 10, "t": 1}, declared)[1] == ["a", "t"]


def test_stratified_folds_spread_every_class_and_are_seeded():
    y = np.array([0] * 6 + [1] * 3 + [2] * 2)
    folds = report.stratified_folds(y, 3, seed=7)
    assert np.bincount(folds).tolist() == [4, 4, 3] or sorted(np.bincount(folds).tolist()) == [3, 4, 4]
    for cls, n in ((0, 6), (1, 3)):
        assert sorted(np.bincount(folds[y == cls], minlength=3).tolist()) == [n // 3] * 3
    assert len(set(folds[y == 2].tolist())) == 2  # two rows: two different folds
    assert (report.stratified_folds(y, 3, seed=7) == folds).all()
    with pytest.raises(ValueError):
        report.stratified_folds(y, 1, 0)
    with pytest.raises(ValueError):
        report.stratified_folds([0, 1], 3, 0)


def test_precision_threshold_by_hand():
    y = np.array([1, 0, 1, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # precision at each depth: 1, 1/2, 2/3, 2/4, 2/5 -> the lowest score with precision >= 0.5 is 0.6
    assert report.score_at_precision(y, s, 0.5) == {"target": 0.5, "score": 0.6, "precision": 0.5, "recall": 1.0}
    assert report.score_at_precision(y, s, 0.9)["score"] == 0.9
    assert report.score_at_precision(np.array([0, 1], bool), np.array([0.9, 0.1]), 0.9) is None
    assert report.count_at_or_above(np.array([0.1, 0.6, 0.7]), 0.6) == 2
    assert report.count_at_or_above(np.array([0.1]), None) is None


def test_heldout_summary_picks_the_best_baseline_and_reports_fold_aucs():
    y = [True, False, True, False, False, False]
    folds = [0, 0, 0, 1, 1, 1]
    scores = {"miner": [0.9, 0.1, 0.8, 0.3, 0.2, 0.4],          # both tails first: AP 1
              "entropy": [0.1, 0.9, 0.8, 0.3, 0.2, 0.4],        # ranks: f(.9), t(.8), f, f, f, t(.1)
              "maxscore": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}       # one tie group: precision 2/6 at recall 1
    summary = report.heldout_summary(y, scores, folds)
    assert summary["miner"]["auc_pr"] == 1.0
    # entropy: tail at rank 2 (P 1/2) and rank 6 (P 2/6): AP = 0.5 * (1/2 + 1/3)
    assert summary["baselines"]["entropy"]["auc_pr"] == round(0.5 * (0.5 + 1 / 3), 4)
    assert summary["baselines"]["maxscore"]["auc_pr"] == round(1 / 3, 4)
    assert summary["best_baseline"] == "entropy"
    assert summary["miner"]["fold_auc_pr"] == [1.0]  # fold 1 has no tail row
    assert summary["prevalence"] == round(2 / 6, 5) and summary["n_tail"] == 2
    curve = summary["miner"]["curve"]
    assert curve["precision"][0] == 1.0 and curve["recall"][-1] == 1.0
    with pytest.raises(ValueError):
        report.heldout_summary([False, False], {"miner": [0.1, 0.2]}, [0, 1])


def test_thin_curve_keeps_the_ends():
    p, r, t = np.linspace(1, 0, 1000), np.linspace(0, 1, 1000), np.linspace(1, 0, 1000)
    thin = report.thin_curve(p, r, t, points=50)
    assert len(thin["recall"]) <= 51 and thin["recall"][0] == 0.0 and thin["recall"][-1] == 1.0


def test_base_rate_estimates_by_hand():
    low, high = report.wilson_interval(20, 200)  # Wilson 95 % of 20 / 200 (statsmodels: 0.06567, 0.14941)
    assert (low, high) == (pytest.approx(0.06567, abs=1e-5), pytest.approx(0.14941, abs=1e-5))
    assert report.wilson_interval(0, 12)[0] == 0.0
    labels = report.rate_from_labels(20, 200)
    assert labels["value"] == 0.1 and report.relative_error(labels) == pytest.approx(0.4941, abs=1e-4)
    assert report.rate_from_labels(0, 0) is None
    calibrated = report.rate_from_calibration(20, 20, 28.0, 25.0, 100)
    assert calibrated["value"] == pytest.approx(48 / 120)
    assert calibrated["high"] - calibrated["value"] == pytest.approx(1.959964 * 5 / 120)
    assert report.rate_from_calibration(0, 0, 0.0, 0.0, 0) is None
    assert report.choose_base_rate([labels, calibrated]) == (calibrated, calibrated)  # relatively narrower
    assert report.choose_base_rate([report.rate_from_labels(1, 12)]) == (None, report.rate_from_labels(1, 12))
    assert report.choose_base_rate([None, None]) == (None, None)
    assert report.confusion_rates([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert report.confusion_rates([False], [True]) == (None, 1.0)


def test_histogram_counts_every_score():
    hist = report.histogram(np.array([0.0, 0.3, 0.99, 1.0]), bins=4)
    assert hist["counts"] == [1, 1, 0, 2] and hist["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_too_little_data_names_what_is_missing():
    y = np.array([0] * 30 + [2] * 5)
    assert too_little_data(y, [2], 5) is None
    assert "4 labeled tail-class task(s); the held-out evaluation needs at least 5" in too_little_data(y[:-1], [2], 5)
    assert too_little_data(y[:-2], [2], 3) is None  # 3 folds: 3 tail rows are enough
    assert "no tail class" in too_little_data(y, [], 5)
    assert "at least 20" in too_little_data(y[:10], [2], 5)
    assert "1 labeled tail" in too_little_data(np.array([0] * 30 + [2]), [2], 5)


def _blobs(n_per_class=(40, 40, 6), seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x = np.concatenate([rng.normal(centers[k], 1.0, size=(n, 4)) for k, n in enumerate(n_per_class)])
    y = np.repeat(np.arange(3), n_per_class)
    return x.astype(np.float32), y


def _fast_miner():
    from mcm_core import MinorityMiner

    return MinorityMiner(num_classes=3, seed=0, n_models=1, ae_min_steps=50, ae_max_steps=150, rc_max_epochs=20,
                         rc_min_epochs=5)


def test_cross_validation_never_scores_a_row_with_a_model_that_saw_it_and_is_deterministic():
    x, y = _blobs()
    seen = []

    def fold_features(train):
        seen.append(train.copy())
        return x, x[:10]  # the first ten rows stand in for the unlabeled pool

    summary = cross_validate(y, 3, [2], folds=2, seed=0, fold_features=fold_features, make_miner=_fast_miner,
                             transform="sqrt")
    folds = report.stratified_folds(y, 2, 0)
    assert len(seen) == 2
    for fold, train in enumerate(seen):
        assert not (train & (folds == fold)).any() and train[folds != fold].all()
    assert summary["n_rows"] == len(y) and summary["n_tail"] == 6
    assert 0.0 <= summary["miner"]["auc_pr"] <= 1.0
    assert set(summary["baselines"]) == {"entropy", "maxscore", "margin", "weighted_entropy"}
    assert summary["best_baseline"] in summary["baselines"]
    assert 0.0 <= summary["tpr"] <= 1.0 and 0.0 <= summary["fpr"] <= 1.0
    pool = summary.pop("pool_scores")  # the mean of the two fold models' scores, on the held-out scale
    assert pool.shape == (10,) and ((0.0 <= pool) & (pool <= 1.0)).all()
    again = cross_validate(y, 3, [2], folds=2, seed=0, fold_features=lambda train: (x, x[:10]),
                           make_miner=_fast_miner, transform="sqrt")
    assert (again.pop("pool_scores") == pool).all() and again == summary


def test_cross_validation_stops_between_folds_when_asked():
    from backend.report.heldout import Postponed

    x, y = _blobs()
    calls = []
    with pytest.raises(Postponed):
        cross_validate(y, 3, [2], folds=3, seed=0, fold_features=lambda train: calls.append(1) or (x, None),
                       make_miner=_fast_miner, transform="sqrt", should_stop=lambda: len(calls) >= 1)
    assert len(calls) == 1


class _FakeViews:
    """Label Studio's Data Manager views as the sdk returns them (objects with .id and .data)."""

    def __init__(self):
        self.items = {}

    def list(self, project):
        from types import SimpleNamespace

        return [SimpleNamespace(id=i, data=dict(d)) for i, d in self.items.items()]

    def create(self, project, data):
        from types import SimpleNamespace

        self.items[len(self.items) + 1] = dict(data)
        return SimpleNamespace(id=len(self.items))

    def update(self, id, project, data):
        from types import SimpleNamespace

        self.items[int(id)] = dict(data)
        return SimpleNamespace(id=int(id))

    def delete(self, id):
        del self.items[int(id)]


def test_enable_ordering_records_when_the_tab_was_created_and_keeps_it_on_updates():
    from types import SimpleNamespace

    from backend.labelstudio.tabs import ENABLED_AT_KEY, tab_data, upsert_tabs

    views = _FakeViews()
    ls = SimpleNamespace(call=lambda what, fn, *a, **k: fn(*a, **k), client=SimpleNamespace(views=views))
    [(_view, created)] = upsert_tabs(ls, 1, [tab_data("Tail classes first")])
    recorded = views.items[1][ENABLED_AT_KEY]
    assert created and report.parse_time(recorded) is not None
    views.items[1][ENABLED_AT_KEY] = "2020-01-01T00:00:00Z"  # as if created long ago
    [(_view, created)] = upsert_tabs(ls, 1, [tab_data("Tail classes first")])
    assert not created and views.items[1][ENABLED_AT_KEY] == "2020-01-01T00:00:00Z"
    assert views.items[1]["ordering"] == ["-tasks:predictions_score"]


def test_maintainer_hands_a_settled_version_to_the_report():
    from types import SimpleNamespace

    from backend.maintainer import Maintainer

    now = [1000.0]
    seen = []
    context = SimpleNamespace(settings=SimpleNamespace(maintain_seconds=10.0, fill_after_seconds=300.0))
    maintainer = Maintainer(context, is_busy=lambda pid: False, clock=lambda: now[0],
                            on_settled=lambda pid, version: seen.append((pid, version)))
    ledger = {"current": "v", "versions": {"v": {"published_at": 900.0}}}
    publisher = SimpleNamespace(ledger=SimpleNamespace(read=lambda: ledger))
    maintainer.settled(3, publisher, "v")
    assert seen == []  # current for 100 s only: annotators may still be labeling
    now[0] = 1200.0
    maintainer.settled(3, publisher, "v")
    assert seen == [(3, "v")]
    maintainer.settled(3, publisher, "unpublished")
    assert seen == [(3, "v")]


def test_the_ledger_keeps_what_a_version_was_trained_on_and_its_timings():
    from backend.publishing import version_record

    meta = {"trained_at": "2026-01-01T00:00:00Z", "n_labeled": 616, "train_seconds": 12.3456,
            "tail_classes": ["3"], "classes": ["a"], "image_key": "image"}
    assert version_record(meta, pool_s=0.1234, score_s=2) == {
        "trained_at": "2026-01-01T00:00:00Z", "n_labeled": 616, "train_seconds": 12.3456, "tail_classes": ["3"],
        "pool_s": 0.123, "score_s": 2.0}
