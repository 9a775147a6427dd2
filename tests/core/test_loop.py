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
