import sys
import types

import numpy as np
import pytest

from mcm_core.bench.__main__ import main as bench_main
from mcm_core.bench.data import DEFAULT_TAIL_RATIOS, load_dataset, skewed_split
from mcm_core.metrics import skewness_ratios


def test_skewed_split_follows_the_protocol():
    labels = np.repeat(np.arange(10), 500)
    s = skewed_split(labels, 10, seed=0)
    assert len(np.intersect1d(s.train, s.pool)) == 0 and len(np.intersect1d(s.pool, s.test)) == 0
    assert len(np.intersect1d(s.train, s.test)) == 0
    pool_counts = np.bincount(labels[s.pool], minlength=10)
    test_counts = np.bincount(labels[s.test], minlength=10)
    assert len(set(pool_counts)) == 1 and len(set(test_counts)) == 1  # uniform
    r = skewness_ratios(labels[s.train], 10)
    assert r[0] == pytest.approx(DEFAULT_TAIL_RATIOS[0], abs=0.003)
    assert r[1] == pytest.approx(DEFAULT_TAIL_RATIOS[1], abs=0.005)
    assert np.bincount(labels[s.train])[0] >= 1
    assert (r[2:] > 1).all()
    assert not np.array_equal(skewed_split(labels, 10, seed=1).pool, s.pool)


def test_digits_loads_as_images():
    d = load_dataset("digits")
    assert d.images.ndim == 3 and d.images.max() <= 1.0 and d.num_classes == 10
    with pytest.raises(ValueError):
        load_dataset("cifar")


def test_speed_flag_forwards_lazily(monkeypatch):
    seen = {}
    fake = types.ModuleType("mcm_core.bench.speed")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "mcm_core.bench.speed", fake)
    import mcm_core.bench as pkg
    monkeypatch.setattr(pkg, "speed", fake, raising=False)
    assert bench_main(["--speed", "--sizes", "10"]) == 0
    assert seen["argv"] == ["--sizes", "10"]


def test_quality_run_seed_on_digits():
    from mcm_core.bench.data import SETTINGS
    from mcm_core.bench.quality import DEFAULT_NAME, run_seed
    d = load_dataset("digits")
    r = run_seed(d, SETTINGS["digits-paper"], seed=0, cnn_epochs=1, variants=["reconstruction: single AE"],
                 miner_kwargs={"ae_min_steps": 100, "ae_max_steps": 300, "n_models": 2})
    m = r["metrics"]
    for name in (DEFAULT_NAME, "entropy (M outputs)", "margin (M outputs)", "RC tail mass", "M tail mass",
                 "reconstruction: single AE", "ablation: novelty N only"):
        assert name in m
    for row in m.values():
        assert 0.0 <= row["auc_pr"] <= 1.0 and 0.0 <= row["p@50"] <= 1.0
    assert r["info"]["n_pool_positive"] == 2 * r["info"]["n_pool"] // 10
    assert r["info"]["tail_classes_train"] == [0, 1]


def test_variants_are_selectable_and_valid():
    from mcm_core import MinorityMiner
    from mcm_core.bench.quality import DEFAULT_VARIANTS, VARIANTS

    assert set(DEFAULT_VARIANTS) <= set(VARIANTS)
    for name, kwargs in VARIANTS.items():
        assert "," not in name, f"--variants is a comma list: {name!r} cannot be selected"
        MinorityMiner(10, **kwargs)  # every variant is a valid set of options


def _row(auc):
    return {m: {"mean": auc, "std": 0.0} for m in ("auc_pr", "avg_f", "p@50", "p@100")}


def test_table_compares_the_default_with_the_best_baseline():
    from mcm_core.bench.quality import DEFAULT_NAME, format_table

    summary = {DEFAULT_NAME: _row(0.93), "entropy (M outputs)": _row(0.80), "RC tail mass": _row(0.90),
               "random": _row(0.99), "ablation: novelty N only": _row(0.98),
               "paper (RC + AE on logits; plain S)": _row(0.97)}
    lines = format_table("toy", "a toy", summary, 3).splitlines()
    best = next(line for line in lines if line.startswith("best baseline"))
    # random, ablations and the miner's own variants are never "the best baseline"
    assert "RC tail mass (0.900)" in best and "1.033x" in best
    ent = next(line for line in lines if line.startswith("entropy"))
    assert ent.rstrip().endswith("1.163x")  # 0.93 / 0.80


def test_overall_table_ratios_and_goals():
    from mcm_core.bench.quality import DEFAULT_NAME, overall_table

    results = {"a": {"summary": {DEFAULT_NAME: _row(0.9), "RC tail mass": _row(0.6), "M tail mass": _row(0.5)}},
               "b": {"summary": {DEFAULT_NAME: _row(0.8), "RC tail mass": _row(0.5), "M tail mass": _row(1.0)}}}
    text, overall = overall_table(results)
    assert overall["ratio_vs_best"] == pytest.approx({"a": 1.5, "b": 0.8})
    assert "mean ratio over settings 1.150x" in text and "min 0.800x" in text
    assert overall["baseline_means"]["M tail mass"] == pytest.approx(0.75)
    assert overall["default_mean"] == pytest.approx(0.85)


def test_settings_materialise_their_label_configs():
    from mcm_core.bench.data import SETTINGS, make_setting

    labels = np.repeat(np.arange(10), 500)
    ds = types.SimpleNamespace(labels=labels, num_classes=10, images=None)
    zero = make_setting(ds, SETTINGS["mnist-zero"], 0)
    assert np.bincount(zero.y_train, minlength=10)[:2].tolist() == [0, 0] and zero.num_classes == 10
    assert zero.pool_positive.sum() == 2 * len(zero.y_pool) // 10
    few = make_setting(ds, SETTINGS["mnist-few"], 0)
    assert np.bincount(few.y_train)[:2].tolist() == [1, 2]
    novel = make_setting(ds, SETTINGS["mnist-novel"], 0)
    assert novel.num_classes == 9 and novel.config_classes == list(range(1, 10))
    assert np.bincount(novel.y_train).tolist()[0] == 8  # class 1 is config index 0
    assert (labels[novel.split.train] != 0).all() and (novel.y_pool == 0).any()
    assert novel.to_config(np.array([0, 1, 9])).tolist() == [-1, 0, 8]
    many = make_setting(ds, SETTINGS["mnist-many"], 0)
    assert np.bincount(many.y_train)[:5].tolist() == [1, 4, 8, 16, 32]
    noisy = make_setting(ds, SETTINGS["mnist-noise"], 0)
    truth = labels[noisy.split.train]
    flipped = noisy.y_train != truth
    assert 0.15 < flipped[truth >= 2].mean() < 0.25 and not flipped[truth < 2].any()
    assert (noisy.y_train[flipped] >= 2).all()  # flipped to another head class
    again = make_setting(ds, SETTINGS["mnist-noise"], 0)
    assert np.array_equal(again.y_train, noisy.y_train)


def test_skewed_split_exact_counts():
    labels = np.repeat(np.arange(4), 100)
    s = skewed_split(labels, 4, seed=0, tail_counts={0: 0, 1: 3})
    assert np.bincount(labels[s.train], minlength=4)[:2].tolist() == [0, 3]
    with pytest.raises(ValueError):
        skewed_split(labels, 4, seed=0, tail_counts={0: -1})


def test_long_tailed_pool_keeps_few_tail_examples_and_the_same_test_split():
    labels = np.repeat(np.arange(4), 100)
    uniform = skewed_split(labels, 4, seed=0, tail_counts={0: 1, 1: 2})
    lt = skewed_split(labels, 4, seed=0, tail_counts={0: 1, 1: 2}, pool_tail=5)
    assert np.bincount(labels[lt.pool], minlength=4).tolist() == [5, 5, 30, 30]
    assert np.array_equal(lt.test, uniform.test) and np.array_equal(lt.train, uniform.train)
    assert set(lt.pool) < set(uniform.pool)
    for bad in (0, 31):
        with pytest.raises(ValueError, match="pool_tail"):
            skewed_split(labels, 4, seed=0, tail_counts={0: 1}, pool_tail=bad)


def test_markdown_table_marks_the_best_and_gives_ratios():
    from mcm_core.bench.quality import DEFAULT_NAME, markdown

    results = {"a": {"summary": {DEFAULT_NAME: _row(0.9), "RC tail mass": _row(0.6), "random": _row(0.95)}},
               "b": {"summary": {DEFAULT_NAME: _row(0.8), "RC tail mass": _row(1.0), "random": _row(0.1)}}}
    lines = markdown(results).splitlines()
    assert lines[2].startswith(f"| **{DEFAULT_NAME}** | **0.900** | 0.800 | 0.850 |")
    assert lines[3] == "| RC tail mass | 0.600 | **1.000** | 0.800 |"
    assert lines[-1] == "| **default / best baseline** | 1.500x | 0.800x | 1.150x |"


def test_speed_bench_times_the_chosen_strategy_and_reports_overhead():
    from mcm_core.bench import speed

    result = speed.run([400], resnet_batch_sizes=[1], resnet_repeats=1, score_repeats=1, threads=1,
                       strategy="paper")
    row = result["miner"][0]
    assert row["strategy"] == "paper" and row["n"] == 400 and row["score_seconds"] > 0
    assert min(row["fit_info"]["ae_steps"]) > 0  # it trained the AE (every strategy also keeps a novelty reference)
    assert set(row["overhead_pct"]) == {"1"} and result["max_overhead_pct"] == row["overhead_pct"]["1"]
    assert "strategy='paper'" in speed._format_table(result)
