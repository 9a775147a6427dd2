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
    from mcm_core.bench.quality import DEFAULT_NAME, run_seed
    d = load_dataset("digits")
    r = run_seed(d, seed=0, cnn_epochs=1, variants=["single AE (no ensemble)"],
                 miner_kwargs={"ae_min_steps": 100, "ae_max_steps": 300, "n_models": 2})
    m = r["metrics"]
    assert DEFAULT_NAME in m and "entropy (M outputs)" in m and "ablation: RC + entropy" in m
    assert "single AE (no ensemble)" in m and "hal (CE head)" in m
    for row in m.values():
        assert 0.0 <= row["auc_pr"] <= 1.0 and 0.0 <= row["p@50"] <= 1.0
    assert r["info"]["n_pool_tail"] == 2 * r["info"]["n_pool"] // 10
    assert r["info"]["tail_classes_train"] == [0, 1]


def test_variants_are_selectable_and_valid():
    from mcm_core import MinorityMiner
    from mcm_core.bench.quality import VARIANTS

    for name, kwargs in VARIANTS.items():
        assert "," not in name, f"--variants is a comma list: {name!r} cannot be selected"
        MinorityMiner(10, **kwargs)  # every variant is a valid set of options


def test_table_reports_the_goal_against_best_of_entropy_and_maxscore():
    from mcm_core.bench.quality import DEFAULT_NAME, format_table

    def row(auc):
        return {m: {"mean": auc, "std": 0.0} for m in ("auc_pr", "avg_f", "p@50", "p@100")}

    summary = {DEFAULT_NAME: row(0.93), "entropy (M outputs)": row(0.80), "maxscore (CE head)": row(0.78),
               "weighted_entropy (M outputs)": row(0.90), "random": row(0.95)}
    lines = format_table("toy", summary, 5).splitlines()
    target = next(line for line in lines if line.startswith("target"))
    assert "entropy (M outputs) (0.8000)" in target and "+16.25%" in target and ": met)" in target
    overall = next(line for line in lines if line.startswith("best baseline overall"))
    assert "weighted_entropy (M outputs)" in overall and "+3.3%" in overall  # random is never the best baseline
    summary["maxscore (CE head)"] = row(0.81)
    target = next(line for line in format_table("toy", summary, 5).splitlines() if line.startswith("target"))
    assert "maxscore (CE head)" in target and "NOT met" in target
