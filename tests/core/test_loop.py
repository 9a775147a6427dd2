import numpy as np
import pytest

from mcm_core.bench import loop
from mcm_core.small_cnn import SmallCNN


def _world(seed=0):
    """A small loop world on random 'convolution outputs': 3 classes, class 2 is the tail."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 64 * 7 * 7)).astype(np.float32)

    def draw(counts):
        y = np.repeat(np.arange(3), counts)
        return (centres[y] + 0.5 * rng.normal(size=(len(y), centres.shape[1]))).astype(np.float32), y

    conv, ys = {}, {}
    for part, counts in (("train", [40, 40, 2]), ("pool", [30, 30, 30]), ("test", [20, 20, 20])):
        conv[part], ys[part] = draw(counts)
    import torch
    torch.manual_seed(seed)
    return SmallCNN(3), conv, ys


def test_pick_is_stable_and_checks_budget():
    assert loop.pick(np.array([0.5, 0.9, 0.5, 0.1]), 3).tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        loop.pick(np.zeros(3), 0)


def test_loop_bookkeeping_budget_uniqueness_and_oracle_labels():
    model0, conv, ys = _world()
    before = {k: v.clone() for k, v in model0.state_dict().items()}
    seen = []

    def spy(state):
        seen.append((len(state.f_pool), state.y_lab.copy(), state.budget))
        return -np.arange(len(state.f_pool), dtype=float)  # always the first remaining examples

    r = loop.run_strategy("spy", spy, model0, conv, ys["train"], ys["pool"], ys["test"], [2], 3,
                          budget=7, rounds=3, finetune_epochs=1, seed=0)
    assert [s[0] for s in seen] == [90, 83, 76]           # the pool shrinks by the budget each round
    assert all(s[2] == 7 for s in seen)
    assert r["n_picked"] == r["n_unique"] == 21           # budget respected, nothing picked twice
    picked = [i for h in r["rounds"] for i in h["picked"]]
    assert picked == list(range(21))                      # remaining-pool indices map back to the pool
    # round 2 trains on the train labels plus the oracle labels of round 1's picks
    assert np.array_equal(seen[1][1], np.concatenate([ys["train"], ys["pool"][:7]]))
    assert r["tail_found"] == int((ys["pool"][:21] == 2).sum()) == 0
    assert [h["tail_picked"] for h in r["rounds"]] == [0, 0, 0]
    assert 0.0 <= r["final_mean_tail_recall"] <= 1.0 and 0.0 <= r["final_test_acc"] <= 1.0
    # the model given to the loop is not modified (each strategy starts from the same round-0 model)
    assert all(np.array_equal(before[k], v) for k, v in model0.state_dict().items())


def test_loop_tail_strategy_finds_the_tail_and_counts_it():
    model0, conv, ys = _world(1)
    oracle = {"ys": ys["pool"]}

    def cheat(state):  # ranks by the hidden truth: every pick is a tail example while any is left
        remaining = np.setdiff1d(np.arange(90), oracle.setdefault("taken", []))
        sc = (oracle["ys"][remaining] == 2).astype(float)
        oracle["taken"] = list(remaining[np.argsort(-sc, kind="stable")[:state.budget]]) + oracle["taken"]
        return sc

    r = loop.run_strategy("cheat", cheat, model0, conv, ys["train"], ys["pool"], ys["test"], [2], 3,
                          budget=10, rounds=2, finetune_epochs=2, seed=0)
    assert r["tail_found"] == 20 and [h["tail_picked_per_class"] for h in r["rounds"]] == [{2: 10}, {2: 10}]


def test_summary_and_markdown_of_two_seeds():
    def run(found, rec, acc, recognised):
        return {"tail_found": found, "final_mean_tail_recall": rec, "final_test_acc": acc,
                "rounds": [{"tail_picked_already_recognised": recognised, "mean_tail_recall": rec,
                            "tail_picked": found}]}

    seeds = [{"runs": {"10": {"a": run(8, 0.5, 0.9, 2), "b": run(4, 0.7, 0.8, 0)}}},
             {"runs": {"10": {"a": run(6, 0.7, 0.9, 4), "b": run(2, 0.9, 0.8, 0)}}}]
    summary = loop.summarise(seeds, [10], ["a", "b"])
    assert summary["10"]["a"]["tail_found"] == 7 and summary["10"]["b"]["final_mean_tail_recall"] == pytest.approx(0.8)
    assert summary["10"]["a"]["tail_already_recognised"] == 3
    assert summary["10"]["a"]["final_mean_tail_recall_std"] == pytest.approx(0.1)
    md = loop.markdown({"s": {"summary": summary, "round0_mean_tail_recall": 0.2}}).splitlines()
    assert md[4] == "| a | **7.0** | 3.0 | 0.600 +- 0.100 | **0.900** |"
    assert md[5] == "| b | 3.0 | 0.0 | **0.800** +- 0.100 | 0.800 |"


def test_classes_covered_counts_tail_classes_in_pick_order():
    picked = [5, 0, 0, 7, 1, 5, 2]
    assert loop.classes_covered(picked, [0, 1, 2], 1) == 0      # a head class first
    assert loop.classes_covered(picked, [0, 1, 2], 3) == 1      # repeats of a class count once
    assert loop.classes_covered(picked, [0, 1, 2], 5) == 2
    assert loop.classes_covered(picked, [0, 1, 2], 100) == 3    # depth beyond the picks: all of them
    assert loop.classes_covered(picked, [3, 4], 100) == 0
    assert loop.classes_covered([], [0], 12) == 0


def test_loop_reports_coverage_after_12_and_40_picks_in_pick_order():
    model0, conv, ys = _world(2)
    # pool order: 11 head examples, then tail class 2 at position 11, then head and class 2 up to
    # position 38, tail class 1 first at position 39; a strategy that always takes the first remaining
    y = ys["pool"]
    zeros, ones, twos = (np.flatnonzero(y == k).tolist() for k in range(3))
    order = np.asarray(zeros[:11] + twos[:1] + zeros[11:] + twos[1:9] + ones + twos[9:])
    assert sorted(order.tolist()) == list(range(len(y)))
    conv["pool"], y = conv["pool"][order], y[order]
    assert (y[:11] == 0).all() and y[11] == 2 and not (y[:39] == 1).any() and y[39] == 1

    def first(state):
        return -np.arange(len(state.f_pool), dtype=float)

    r = loop.run_strategy("first", first, model0, conv, ys["train"], y, ys["test"], [1, 2], 3,
                          budget=10, rounds=4, finetune_epochs=1, seed=0)
    picked = [i for h in r["rounds"] for i in h["picked"]]
    assert picked == list(range(40))
    assert r["covered"] == {"12": 1, "40": 2} and r["n_tails"] == 2
    r = loop.run_strategy("first", first, model0, conv, ys["train"], y, ys["test"], [1, 2], 3,
                          budget=13, rounds=3, finetune_epochs=1, seed=0)  # 39 picks: class 1 not reached
    assert r["covered"] == {"12": 1, "40": 1}


def test_classifier_recalls_on_separable_features():
    rng = np.random.default_rng(0)
    centres = 20.0 * np.eye(3, 8)

    def draw(counts):
        y = np.repeat(np.arange(3), counts)
        return centres[y] + 0.1 * rng.normal(size=(len(y), 8)), y

    f_lab, y_lab = draw([30, 30, 3])
    f_test, y_test = draw([10, 10, 10])
    rec, acc = loop.classifier_recalls(f_lab, y_lab, f_test, y_test, [2], 3, seed=0)
    assert rec == {2: 1.0} and acc == 1.0
    # a tail class absent from the labels is never predicted by the classifier
    rec, _ = loop.classifier_recalls(f_lab[y_lab != 2], y_lab[y_lab != 2], f_test, y_test, [1, 2], 3, seed=0)
    assert rec == {1: 1.0, 2: 0.0}


def test_loop_fits_the_classifier_on_every_label_so_far(monkeypatch):
    model0, conv, ys = _world(3)
    calls = []
    real = loop.classifier_recalls

    def spy(f_lab, y_lab, f_test, y_test, tails, num_classes, seed):
        out = real(f_lab, y_lab, f_test, y_test, tails, num_classes, seed)
        calls.append((f_lab.shape, y_lab.copy(), f_test.shape, out))
        return out

    monkeypatch.setattr(loop, "classifier_recalls", spy)
    r = loop.run_strategy("rev", lambda s: np.arange(len(s.f_pool), dtype=float), model0, conv, ys["train"],
                          ys["pool"], ys["test"], [2], 3, budget=6, rounds=2, finetune_epochs=1, seed=0)
    picked = [i for h in r["rounds"] for i in h["picked"]]
    assert picked == list(range(89, 77, -1))  # the last pool examples first
    assert len(calls) == 2                    # once per round, after the retraining
    n_train = len(ys["train"])
    for k, (shape, y_lab, test_shape, _) in enumerate(calls):
        n = 6 * (k + 1)
        assert shape == (n_train + n, 128) and test_shape == (len(ys["test"]), 128)
        assert np.array_equal(y_lab, np.concatenate([ys["train"], ys["pool"][picked[:n]]]))
    rec, acc = calls[-1][3]
    assert r["final_clf_tail_recall"] == rec and r["final_clf_test_acc"] == acc
    assert r["final_clf_mean_tail_recall"] == pytest.approx(np.mean(list(rec.values())))
    assert 0.0 <= r["final_clf_mean_tail_recall"] <= 1.0


def test_summary_new_columns_and_verdict():
    def run(found, rec, clf, cov12, cov40):
        return {"tail_found": found, "final_mean_tail_recall": rec, "final_test_acc": 0.9,
                "final_clf_mean_tail_recall": clf, "final_clf_test_acc": 0.95, "n_tails": 3,
                "covered": {"12": cov12, "40": cov40},
                "rounds": [{"tail_picked_already_recognised": 0, "mean_tail_recall": rec, "tail_picked": found,
                            "clf_mean_tail_recall": clf}]}

    names = ["random", "entropy (M)", "weighted entropy (M)", "queue teach=0", "queue teach=1"]
    seeds = [{"runs": {"20": {"random": run(5, 0.5, 0.5, 1, 2), "entropy (M)": run(20, 0.8, 0.7, 1, 3),
                              "weighted entropy (M)": run(30, 0.7, 0.6, 2, 3),
                              "queue teach=0": run(40, 0.6, 0.8, 3, 3), "queue teach=1": run(30, 0.9, 0.6, 2, 3)}}},
             {"runs": {"20": {"random": run(7, 0.5, 0.5, 1, 2), "entropy (M)": run(20, 0.8, 0.7, 1, 3),
                              "weighted entropy (M)": run(30, 0.7, 0.6, 1, 3),
                              "queue teach=0": run(38, 0.6, 0.8, 3, 3), "queue teach=1": run(30, 0.9, 0.6, 2, 2)}}}]
    rows = loop.summarise(seeds, [20], names)["20"]
    assert rows["weighted entropy (M)"]["covered_12"] == 1.5 and rows["queue teach=1"]["covered_40"] == 2.5
    assert rows["queue teach=0"]["clf_recall"] == pytest.approx(0.8) and rows["random"]["tail_found_std"] == 1.0
    v = {x["strategy"]: x for x in loop.verdicts(rows)}
    assert set(v) == {"queue teach=0", "queue teach=1"}          # only the candidate queues get a verdict
    assert v["queue teach=0"]["best_uncertainty"] == "weighted entropy (M)"  # most tail found of the three
    assert v["queue teach=0"]["ratio"] == pytest.approx(39 / 30) and v["queue teach=0"]["met"]
    assert v["queue teach=0"]["ratios"]["entropy (M)"] == pytest.approx(39 / 20)
    # teach=1: best M recall, but the classifier's recall decides; 1.0x the tail found
    assert v["queue teach=1"]["best_rival"] == "entropy (M)" and not v["queue teach=1"]["highest"]
    assert not v["queue teach=1"]["met"]
    md = loop.markdown({"s": {"summary": {"20": rows}, "round0_mean_tail_recall": 0.2}}).splitlines()
    assert "classes covered @12 (of 3)" in md[2] and "final tail recall (classifier)" in md[2]
    assert md[7].startswith("| queue teach=0 | **39.0** | 0.0 | **3.00** | **3.00** | **0.800** +- 0.000 |")
    assert any(line.startswith("- verdict queue teach=0:") and line.endswith("MET") for line in md)
    table = loop.format_table("s", {"20": rows}, 2, 1, 0.2)
    assert "verdict queue teach=1:" in table and "not met" in table
    assert v["queue teach=0"]["ceiling"] is None and "possible" not in table  # runs saved before: no ceiling


def test_the_verdict_says_how_much_tail_any_strategy_could_find():
    def run(found, picked=60):
        return {"tail_found": found, "n_picked": picked, "final_mean_tail_recall": 0.5, "final_test_acc": 0.9,
                "rounds": [{"tail_picked_already_recognised": 0, "mean_tail_recall": 0.5, "tail_picked": found}]}

    names = ["weighted entropy (M)", "default queue"]
    seeds = [{"pool_tail": 40, "runs": {"20": {"weighted entropy (M)": run(36), "default queue": run(39)}}},
             {"pool_tail": 300, "runs": {"20": {"weighted entropy (M)": run(58), "default queue": run(59)}}}]
    rows = loop.summarise(seeds, [20], names)["20"]
    assert rows["default queue"]["tail_possible"] == 50.0   # min(60, 40) and min(60, 300)
    (v,) = loop.verdicts(rows)
    assert v["ceiling"] == pytest.approx(50 / 47) and not v["met"]
    assert "at most 1.06x possible" in loop.verdict_line(v)
