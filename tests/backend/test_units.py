"""Unit tests of the backend's building blocks (no HTTP app)."""
from __future__ import annotations

import json
import os
import queue as stdlib_queue
import threading

import numpy as np
import pytest

from backend.annotations import task_label
from backend.ingest.cache import ArrayCache
from backend.ingest.fetch import AddressPolicy, BlockedAddressError
from backend.label_config import LabelConfigError, parse_label_config
from backend.versions import ModelStore
from backend.ranking import map_scores
from backend.settings import Settings, settings_help_text
from backend.pacing import TrainingScheduler

from backend_fakes import LABEL_CONFIG


# --- settings ---------------------------------------------------------------------------------
def test_settings_from_env_parses_and_validates():
    s = Settings.from_env({"MCM_ALLOWED_HOSTS": " 127.0.0.1, 10.0.0.0/8 ,Minio", "MCM_DEBOUNCE_SECONDS": "0.5",
                           "MCM_RETRAIN_MIN_INTERVAL": "12", "MCM_PREDICTION_GRACE_SECONDS": "7200",
                           "MODEL_DIR": "/x"})
    assert s.allowed_hosts == ("127.0.0.1", "10.0.0.0/8", "minio")
    assert s.debounce_seconds == 0.5 and s.model_dir == "/x"
    assert s.retrain_min_interval == 12.0 and s.prediction_grace_seconds == 7200.0
    assert Settings.from_env({}).backbone == "resnet18"
    # Uncertainty sampling (tail-low scores) is not a supported ordering any more: say so at start-up.
    assert Settings.from_env({"MCM_SCORE_DIRECTION": "tail-high"}).backbone == "resnet18"
    with pytest.raises(ValueError, match="MCM_SCORE_DIRECTION=tail-low is no longer supported"):
        Settings.from_env({"MCM_SCORE_DIRECTION": "tail-low"})
    for name in ("MCM_RETRAIN_MIN_INTERVAL", "MCM_PREDICTION_GRACE_SECONDS", "MCM_FILL_AFTER_SECONDS"):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: "-1"})
    with pytest.raises(ValueError, match="MCM_HEAD_SIZE"):
        Settings.from_env({"MCM_HEAD_SIZE": "0"})
    with pytest.raises(ValueError, match="MCM_SEED"):
        Settings.from_env({"MCM_SEED": "x"})
    with pytest.raises(ValueError, match="BASIC_AUTH"):
        Settings.from_env({"BASIC_AUTH_USER": "u"})
    with pytest.raises(ValueError, match="CIDR"):
        Settings.from_env({"MCM_ALLOWED_HOSTS": "10.0.0.0/99"})
    assert Settings.from_env({"MCM_MINER_OPTIONS": '{"n_models": 1}'}).miner_kwargs == {"queue_window": 500, "n_models": 1}
    with pytest.raises(ValueError, match="MCM_MINER_OPTIONS"):
        Settings.from_env({"MCM_MINER_OPTIONS": "{n_models"})
    with pytest.raises(ValueError, match="MCM_MINER_OPTIONS"):
        Settings.from_env({"MCM_MINER_OPTIONS": '{"seed": 3}'})


def test_help_text_lists_every_setting():
    text = settings_help_text()
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR", "MCM_BACKBONE", "MCM_BACKBONE_WEIGHTS",
                 "MCM_ALLOWED_HOSTS", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "REDIS_URL",
                 "MCM_DEBOUNCE_SECONDS", "MCM_RETRAIN_MIN_INTERVAL", "MCM_RETRAIN_MAX_WAIT", "MCM_HEAD_SIZE",
                 "MCM_FILL_AFTER_SECONDS", "MCM_PREDICTION_GRACE_SECONDS", "MCM_SEED", "MCM_PREDICT_CHUNK",
                 "LOG_LEVEL"):
        assert name in text


# --- label config -----------------------------------------------------------------------------
def test_label_config_supported():
    config = parse_label_config(LABEL_CONFIG)
    assert (config.image_name, config.image_key, config.control_name) == ("image", "image", "choice")
    assert config.classes == ("zero", "one", "seven")


@pytest.mark.parametrize("xml, expected", [
    ('<View><Image name="i" value="$image"/></View>', "no <Choices>"),
    ('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/>'
     '</Choices></View>', "no <Image>"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/><Choice value="b"/>'
     '</Choices><Choices name="d" toName="i"><Choice value="a"/><Choice value="b"/></Choices></View>',
     "2 <Choices>"),
    ('<View><Image name="i" value="$a"/><Image name="j" value="$b"/><Choices name="c" toName="i">'
     '<Choice value="a"/><Choice value="b"/></Choices></View>', "2 <Image>"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/><Choice value="b"/>'
     '</Choices><TextArea name="t" toName="i"/></View>', "TextArea"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i" choice="multiple"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "single choice"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>',
     "at least 2"),
    ("<View", "not valid XML"),
    ("", "empty"),
])
def test_label_config_unsupported_names_the_problem(xml, expected):
    with pytest.raises(LabelConfigError, match=expected):
        parse_label_config(xml)


# --- annotations --------------------------------------------------------------------------------
def _ann(label, id_, updated, cancelled=False, control="choice"):
    return {"id": id_, "updated_at": updated, "was_cancelled": cancelled,
            "result": [{"from_name": control, "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}


def test_task_label_latest_wins_and_cancelled_ignored():
    config = parse_label_config(LABEL_CONFIG)
    task = {"id": 1, "annotations": [_ann("zero", 1, "2026-01-01"), _ann("seven", 2, "2026-01-02"),
                                     _ann("one", 3, "2026-01-03", cancelled=True)]}
    assert task_label(task, config) == ("seven", None)
    label, reason = task_label({"id": 2, "annotations": [_ann("cat", 1, "2026")]}, config)
    assert label is None and "unknown label 'cat'" in reason
    label, reason = task_label({"id": 3, "annotations": [_ann("zero", 1, "2026", control="other")]}, config)
    assert label is None and "no non-cancelled annotation" in reason


# --- scores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["linear", "sqrt"])
def test_score_mapping_monotone_in_unit_interval(transform):
    raw = np.array([-1.0, 0.0, 1e-6, 0.01, 0.5, 1.9, 2.0, 5.0, np.nan])
    mapped = map_scores(raw, 2.0, transform)
    assert np.all((mapped >= 0) & (mapped <= 1))
    finite = mapped[:-1]
    assert np.all(np.diff(finite) >= 0) and finite[2] > finite[1] and finite[3] > finite[2]
    assert finite[-2] == 1.0 and mapped[-1] == 0.0  # at the bound: 1; NaN: 0


# --- address policy -------------------------------------------------------------------------------
def _resolver(table):
    return lambda host: table[host]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "169.254.169.254", "::1",
                                     "fd00::1", "0.0.0.0", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1"])
def test_private_addresses_refused(address):
    policy = AddressPolicy((), _resolver({"evil.example": [address]}))
    with pytest.raises(BlockedAddressError, match="MCM_ALLOWED_HOSTS"):
        policy.check("evil.example")


def test_every_resolved_address_is_checked_and_allow_list_works():
    table = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34"],
             "minio": ["172.18.0.2"]}
    with pytest.raises(BlockedAddressError):
        AddressPolicy((), _resolver(table)).check("mixed.example")
    AddressPolicy((), _resolver(table)).check("public.example")
    AddressPolicy(("10.0.0.0/8",), _resolver(table)).check("mixed.example")
    AddressPolicy(("minio",), _resolver(table)).check("minio")
    with pytest.raises(BlockedAddressError):
        AddressPolicy(("10.0.0.0/8",), _resolver(table)).check("minio")


# --- feature cache ------------------------------------------------------------------------------
def test_array_cache_persists_and_keys_by_task_and_url(tmp_path):
    directory = str(tmp_path / "cache")
    cache = ArrayCache(directory)
    keys = [(1, "a.png"), (2, "b.png")]
    cache.put(keys, np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    assert cache.missing([(1, "a.png"), (1, "changed.png"), (3, "c.png")]) == [1, 2]
    reloaded = ArrayCache(directory)
    np.testing.assert_array_equal(reloaded.get([(2, "b.png"), (1, "a.png")]), [[3, 4], [1, 2]])
    assert not [p for p in os.listdir(directory) if p.endswith(".tmp.npz")]


def test_array_cache_compacts_many_shards(tmp_path):
    cache = ArrayCache(str(tmp_path))
    for i in range(40):
        cache.put([(i, f"{i}.png")], np.full((1, 3), i, dtype=np.float32))
    assert len([p for p in os.listdir(tmp_path) if p.startswith("shard-")]) < 40
    reloaded = ArrayCache(str(tmp_path))
    assert len(reloaded) == 40
    np.testing.assert_array_equal(reloaded.get([(39, "39.png"), (0, "0.png")])[:, 0], [39, 0])


# --- model store ------------------------------------------------------------------------------
def test_model_store_versions_and_pointer(tmp_path):
    store = ModelStore(str(tmp_path / "7"))
    assert store.current_version() is None and store.versions() == []

    def write(directory):
        with open(os.path.join(directory, "miner.pt"), "w") as handle:
            handle.write("x")
        return {"extra": 1}

    v1 = store.save(write, {"n": 1})
    v2 = store.save(write, {"n": 2})
    assert store.versions() == [v1, v2] and store.current_version() == v2
    assert store.read_meta(v2)["n"] == 2 and store.read_meta(v2)["extra"] == 1

    def broken(directory):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.save(broken, {"n": 3})
    assert store.current_version() == v2 and store.versions() == [v1, v2]
    assert not [d for d in os.listdir(store.project_dir) if d.startswith(".saving-")]


# --- training queue -----------------------------------------------------------------------------
def test_burst_of_events_causes_at_most_two_trainings():
    runs = []
    started, gate = threading.Event(), threading.Event()

    def train(project_id):
        runs.append(project_id)
        started.set()
        assert gate.wait(60), "the test never let the training finish"

    # The debounce only has to outlast the gaps inside one loop of 50 requests (microseconds).
    queue = TrainingScheduler(train, debounce_seconds=0.5)
    try:
        first = [queue.request(1, "ANNOTATION_CREATED") for _ in range(50)]
        assert first == ["scheduled"] + ["coalesced"] * 49
        assert started.wait(60), "the first training never started"
        statuses = [queue.request(1, "ANNOTATION_CREATED") for _ in range(50)]  # while it runs
        assert statuses[0] == "queued-after-running" and set(statuses[1:]) == {"coalesced"}
        gate.set()
        assert queue.wait_idle(timeout=60)
        assert runs == [1, 1]
    finally:
        gate.set()
        queue.close()


def test_queue_runs_projects_independently_and_survives_errors():
    runs = []

    def train(project_id):
        runs.append(project_id)
        if project_id == 2:
            raise RuntimeError("label studio down")

    queue = TrainingScheduler(train, debounce_seconds=0.0)
    try:
        queue.request(1)
        queue.request(2)
        assert queue.wait_idle(timeout=10)
        assert sorted(runs) == [1, 2]
        assert "label studio down" in queue.last_error(2) and queue.last_error(1) is None
        queue.request(1)
        assert queue.wait_idle(timeout=10) and runs.count(1) == 2
    finally:
        queue.close()


def test_a_live_team_is_batched_by_the_minimum_interval():
    """A steady stream of events (always closer together than the debounce) still trains (max_wait), and
    every event within the minimum interval of that training's start waits for one follow-up, not one each."""
    starts = []
    started, finish = threading.Event(), threading.Event()

    def train(project_id):
        starts.append(project_id)
        started.set()
        assert finish.wait(60), "the test never let the training finish"

    queue = TrainingScheduler(train, debounce_seconds=3600.0, min_interval=3600.0, max_wait=0.0)
    try:
        assert queue.request(1, "START_TRAINING") == "scheduled"
        assert started.wait(60), "a stream that never pauses for the debounce must still train (max_wait)"
        finish.set()
        assert queue.wait_idle(1, timeout=60)
        statuses = [queue.request(1, "START_TRAINING") for _ in range(24)]  # the team keeps submitting
        assert statuses == ["scheduled"] + ["coalesced"] * 23  # one pending training covers them all
        assert queue.is_training(1) and queue.next_start(1) > 3000  # held until the interval has passed
        assert queue.runs(1) == len(starts) == 1
    finally:
        finish.set()
        queue.close()


def test_one_training_at_a_time_across_projects():
    running, overlaps = [], []
    lock = threading.Lock()
    started = stdlib_queue.Queue()
    release = {project_id: threading.Event() for project_id in range(1, 9)}

    def train(project_id):
        with lock:
            running.append(project_id)
            if len(running) > 1:
                overlaps.append(tuple(running))
        started.put(project_id)
        assert release[project_id].wait(60), "the test never let the training finish"
        with lock:
            running.remove(project_id)

    threads_before = set(threading.enumerate())
    queue = TrainingScheduler(train, debounce_seconds=0.0)
    try:
        for project_id in range(1, 9):
            queue.request(project_id)
        for _ in range(8):  # each training holds until released: a second one started meanwhile would overlap
            project_id = started.get(timeout=60)
            with lock:
                assert running == [project_id], running
            release[project_id].set()
        assert queue.wait_idle(timeout=10)
    finally:
        for event in release.values():
            event.set()
        queue.close()
    assert overlaps == [] and sum(queue.runs(p) for p in range(1, 9)) == 8
    # this queue's threads only: other tests' queues may still be winding down
    assert len([t for t in set(threading.enumerate()) - threads_before if t.name.startswith("mcm-train")]) <= 2


def test_docs_settings_page_is_generated_from_the_table():
    """docs/settings.md is `python -m backend.settings --markdown`: regenerate it after changing a setting."""
    from pathlib import Path

    from backend.settings import TABLE, settings_markdown

    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert page.strip() == settings_markdown().strip()
    assert all(f"`{s.env}`" in page for s in TABLE)


# --- Data Manager tabs ----------------------------------------------------------------------------
def test_lanes_split_the_unlabeled_tasks_into_disjoint_equal_id_ranges():
    from backend.labelstudio.tabs import lane_filters

    ids = [3, 4, 10, 11, 12, 40, 41, 42, 90]
    items = lane_filters(ids, 3)
    assert items[0]["value"] == {"min": 3, "max": 10} and items[0]["operator"] == "in"
    assert items[1]["value"] == {"min": 11, "max": 40}
    assert items[2] == {"filter": "filter:tasks:id", "operator": "greater_or_equal", "type": "Number", "value": 41}

    def lane_of(task_id):
        hits = [i for i, it in enumerate(items) if (it["value"]["min"] <= task_id <= it["value"]["max"]
                                                    if it["operator"] == "in" else task_id >= it["value"])]
        assert len(hits) == 1, (task_id, hits)  # every task in exactly one lane, new ids in the last
        return hits[0]
    assert [sum(lane_of(t) == lane for t in ids) for lane in range(3)] == [3, 3, 3]
    assert lane_of(1000) == 2
    assert lane_filters(ids, 1) == [{"filter": "filter:tasks:id", "operator": "greater_or_equal", "type": "Number",
                                     "value": 3}]
    with pytest.raises(ValueError, match="cannot be split"):
        lane_filters([1, 2], 3)


@pytest.mark.parametrize("window", [0, 12])
def test_the_tab_follows_the_score_unless_a_queue_window_is_set(window):
    """MCM_QUEUE_WINDOW=0: the published ranking is the mining score's order, unchanged. N > 0 (500 by
    default): the N best-scored tasks (the same ones) are re-ordered above every other task."""
    import types

    from mcm_core import MinorityMiner
    from backend.classification import score_features
    from backend.ranking import Ranking
    from backend.scoring import outside_window, queue_order

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)).astype(np.float32)
    y = np.r_[np.repeat([0, 1, 2], 60), [3, 3, 4, 4]]
    x = centers[y] + 0.3 * rng.normal(size=(len(y), 16)).astype(np.float32)
    settings = Settings.from_env({"MCM_QUEUE_WINDOW": str(window)})
    assert Settings.from_env({}).queue_window == 500
    miner = MinorityMiner(num_classes=5, seed=0, **settings.miner_kwargs).fit(x, y)
    pool_y = rng.integers(0, 5, 80)
    pool = centers[pool_y] + 0.3 * rng.normal(size=(80, 16)).astype(np.float32)
    ids = np.arange(101, 181)
    scores, labels = score_features(miner, pool, "sqrt")
    ranking = Ranking.build(ids, scores, labels)
    features = dict(zip(ids.tolist(), pool))
    ingest = types.SimpleNamespace(features=lambda pid, keys, model=None: np.stack([features[k] for k, _ in keys]))
    model = types.SimpleNamespace(miner=miner, prefill=None)
    queued = queue_order(1, ranking, {int(t): f"u{t}" for t in ids}, ingest, model)
    if window == 0:
        assert queued.task_ids.tolist() == ranking.task_ids.tolist()
        assert np.array_equal(queued.scores, ranking.scores)
        assert np.array_equal(outside_window(scores, miner), scores)
        return
    assert set(queued.task_ids[:window].tolist()) == set(ranking.task_ids[:window].tolist())
    assert (queued.scores[:window] > 0.5).all() and (queued.scores[window:] <= 0.5).all()
    assert np.allclose(np.sort(queued.scores[window:]), np.sort(0.5 * ranking.scores[window:]))
    assert np.array_equal(outside_window(scores, miner), 0.5 * scores)


def test_a_doubt_taught_queue_gets_the_versions_prefill_classifier():
    """queue_teach_by (MCM_MINER_OPTIONS) "doubt" / "novel_doubt": queue_order hands the miner the
    version's pre-fill classifier's probabilities of the window's tasks; a version without that
    classifier (older files) queues by the distance; "distance" never computes them."""
    import types

    from mcm_core import MinorityMiner
    from mcm_core.prefill import PrefillClassifier
    from backend.classification import score_features
    from backend.ranking import Ranking
    from backend.scoring import queue_order, queue_proba

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(5, 16)).astype(np.float32)
    y = np.r_[np.repeat([0, 1, 2], 60), [3, 3, 4, 4]]
    x = centers[y] + 0.6 * rng.normal(size=(len(y), 16)).astype(np.float32)
    pool_y = rng.integers(0, 5, 80)
    pool = centers[pool_y] + 0.6 * rng.normal(size=(80, 16)).astype(np.float32)
    ids = np.arange(101, 181)
    features = dict(zip(ids.tolist(), pool))

    def read(pid, keys, model=None):
        return np.stack([features[k] for k, _ in keys])

    ingest = types.SimpleNamespace(features=read)
    prefill = PrefillClassifier(5, seed=0).fit(x, y)
    orders = {}
    for teach_by in ("distance", "novel_doubt"):
        settings = Settings.from_env({"MCM_QUEUE_WINDOW": "40",
                                      "MCM_MINER_OPTIONS": json.dumps({"queue_teach_by": teach_by,
                                                                           "queue_doubt_purity": 0.0})})
        miner = MinorityMiner(num_classes=5, seed=0, **settings.miner_kwargs).fit(x, y)
        ranking = Ranking.build(ids, *score_features(miner, pool, "sqrt"))
        urls = {int(t): f"u{t}" for t in ids}
        with_clf = queue_order(1, ranking, urls, ingest, types.SimpleNamespace(miner=miner, prefill=prefill))
        without = queue_order(1, ranking, urls, ingest, types.SimpleNamespace(miner=miner, prefill=None))
        orders[teach_by] = (with_clf.task_ids.tolist(), without.task_ids.tolist())
        proba = queue_proba(types.SimpleNamespace(miner=miner, prefill=prefill), pool[:40])
        assert (proba is None) == (teach_by == "distance")
    assert orders["distance"][0] == orders["distance"][1]      # the distance ignores the classifier
    assert orders["novel_doubt"][0] != orders["novel_doubt"][1]  # the doubt re-orders the window
    assert set(orders["novel_doubt"][0][:40]) == set(orders["distance"][0][:40])  # the same window
    # the miner hears the whole pool's size, not the window's: the purity scales the false alarms by it
    seen = []
    original = miner.queue_scores
    miner.queue_scores = lambda f, proba=None, pool_size=None: seen.append(pool_size) or original(f, proba, pool_size)
    queue_order(1, ranking, urls, ingest, types.SimpleNamespace(miner=miner, prefill=prefill))
    assert seen == [len(ids)] and len(ids) > 40

