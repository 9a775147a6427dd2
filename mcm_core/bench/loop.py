"""Annotation-loop benchmark (the paper's fine-tuning claim): does the mined queue give a better
model for the same labeling budget?

Per setting, seed and budget B, for every strategy: start from the skewed labeled set, then R
rounds of: fit the strategy on the labeled features -> pick the B highest-scored pool examples
not yet labeled -> oracle labels (the pool's true labels) -> retrain the model on all labels so
far. Reported per strategy: the tail examples found within the budget, the tail classes covered
by the first 12 and the first 40 picks (pick order: round 1 first, each round in descending score
order), and the final mean recall on the tail classes (and overall accuracy) of a uniform held-out
test set, of two final models: M itself, and the backend's own classifier
(mcm_core.prefill.PrefillClassifier, a plain softmax) fitted on the final M's dense features of
every label so far (the issue's "final model").

The model is the paper's small CNN M. Round 0 trains it on the skewed set (shared by every
strategy); each later round retrains its dense layers (penultimate feature layer + head) from the
previous round's weights on all labels so far, with the convolutions frozen (as a frozen
backbone in the backend), so a round costs seconds instead of a full CNN training.

    python -m mcm_core.bench.loop            # mnist-few, mnist-three x 3 seeds x budgets 20, 40; 3 rounds
    python -m mcm_core.bench.loop --quick    # mnist-paper, 1 seed, budget 40
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import MinorityMiner
from ..baselines import entropy, margin_uncertainty, tail_mass, weighted_entropy, TailMassStrategy
from ..metrics import tail_classes
from ..prefill import PrefillClassifier
from ..scoring import softmax
from ..small_cnn import (dense_features_logits, fine_tune_dense, small_cnn_conv_outputs, train_small_cnn)
from .data import SETTINGS, iter_settings, make_setting
from .output import add_common_arguments, comma_list, save_figure, start, write_results

# The issue's cells: two MNIST settings with 2 and 3 rare classes (1-4 labels each) x budgets 20, 40.
LOOP_SETTINGS = ("mnist-few", "mnist-three")
COVERAGE_DEPTHS = (12, 40)  # "classes covered after 12 / 40 tasks"


@dataclass
class RoundState:
    """What a strategy sees in one round: labeled features/labels (config indices), the unlabeled
    pool's features and the current model's logits on it."""
    f_lab: np.ndarray
    y_lab: np.ndarray
    f_pool: np.ndarray
    z_pool: np.ndarray
    num_classes: int
    seed: int
    budget: int


def _miner_scores(**kwargs) -> Callable[[RoundState], np.ndarray]:
    def run(s: RoundState) -> np.ndarray:
        return MinorityMiner(s.num_classes, seed=s.seed, **kwargs).fit(s.f_lab, s.y_lab).score_samples(s.f_pool)
    return run


def _miner_queue(**kwargs) -> Callable[[RoundState], np.ndarray]:
    """The miner's queue; its doubt forms (queue_teach_by) get the doubt of the backend's classifier
    (PrefillClassifier on the labeled features, the classifier the backend pre-fills with)."""
    def run(s: RoundState) -> np.ndarray:
        miner = MinorityMiner(s.num_classes, seed=s.seed, **kwargs).fit(s.f_lab, s.y_lab)
        proba = PrefillClassifier(s.num_classes, s.seed).fit(s.f_lab, s.y_lab).predict_proba(s.f_pool) \
            if miner.queue_needs_proba else None
        return miner.queue_scores(s.f_pool, proba)
    return run


def _m_proba(fn) -> Callable[[RoundState], np.ndarray]:
    return lambda s: fn(softmax(s.z_pool), s)


STRATEGIES: dict[str, Callable[[RoundState], np.ndarray]] = {
    "random": lambda s: np.random.default_rng(s.seed + 7919 * len(s.y_lab)).random(len(s.f_pool)),
    "entropy (M)": _m_proba(lambda p, s: entropy(p)),
    "margin (M)": _m_proba(lambda p, s: margin_uncertainty(p)),
    "weighted entropy (M)": _m_proba(lambda p, s: weighted_entropy(
        p, np.bincount(s.y_lab, minlength=s.num_classes) / len(s.y_lab))),
    "M tail mass": _m_proba(lambda p, s: tail_mass(p, tail_classes(s.y_lab, s.num_classes))),
    "RC tail mass": lambda s: TailMassStrategy(s.num_classes, seed=s.seed).fit(s.f_lab, s.y_lab).score_samples(s.f_pool),
    "paper miner": _miner_scores(strategy="paper"),
    "reconstruction miner (previous default)": _miner_scores(strategy="reconstruction"),
    "default miner score": _miner_scores(),
    "default queue": _miner_queue(),
}
# The queue's teaching weight (mcm_core.queue): 0 = each predicted tail class in score order; 1 = score x
# distance to what is labeled; "ramp=20": the weight grows with the class's labels, in full from 20; "window=200":
# the queue as the default was before (200-task window); "distance": taught by the distance alone (the default
# before the doubt); "doubt" / "novel doubt": by the doubt of the backend's classifier (x the novelty) in every
# tail bucket, in full from the first label. The "default queue" is the miner's defaults: the novel doubt in
# the buckets whose estimated share of rare examples reaches queue_doubt_purity, the distance in the others.
STRATEGIES.update({f"queue teach={t:g}": _miner_queue(queue_teach=t, queue_teach_ramp=0) for t in (0.0, 0.5, 1.0)})
STRATEGIES["queue teach=1 ramp=20"] = _miner_queue(queue_teach=1.0, queue_teach_ramp=20)
STRATEGIES["queue window=200"] = _miner_queue(queue_window=200)
STRATEGIES["queue distance"] = _miner_queue(queue_teach_by="distance")
STRATEGIES["queue doubt ramp=0"] = _miner_queue(queue_teach_by="doubt", queue_doubt_purity=0.0)
STRATEGIES["queue novel doubt"] = _miner_queue(queue_teach_by="novel_doubt", queue_doubt_purity=0.0)
UNCERTAINTY = ("entropy (M)", "margin (M)", "weighted entropy (M)")


def is_queue(name: str) -> bool:
    """A candidate for the default queue (compared with the baselines, not with each other)."""
    return name == "default queue" or name.startswith("queue ")


def pick(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the ``budget`` highest scores (stable: ties keep pool order)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:budget]


def tail_recalls(z: np.ndarray, y: np.ndarray, tails: list[int]) -> dict[int, float]:
    pred = z.argmax(1)
    return {k: float((pred[y == k] == k).mean()) for k in tails if (y == k).any()}


def classes_covered(picked_labels, tails, depth: int) -> int:
    """Tail classes with at least one example among the first ``depth`` picks (in pick order)."""
    return int(len(set(np.asarray(picked_labels)[:depth].tolist()) & {int(k) for k in tails}))


def classifier_recalls(f_lab: np.ndarray, y_lab: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                       tails: list[int], num_classes: int, seed: int) -> tuple[dict[int, float], float]:
    """The backend's own classifier (PrefillClassifier: plain softmax, no class weights) fitted on
    the labeled features: (its recall per tail class on the test features, its test accuracy)."""
    clf = PrefillClassifier(num_classes, seed).fit(f_lab, y_lab)
    p = clf.predict_proba(f_test)
    return tail_recalls(p, y_test, tails), float((p.argmax(1) == y_test).mean())


def run_strategy(name: str, strategy, model0, conv: dict, y_train: np.ndarray, y_pool: np.ndarray,
                 y_test: np.ndarray, tails: list[int], num_classes: int, budget: int, rounds: int,
                 finetune_epochs: int, seed: int) -> dict:
    """One annotation loop. ``y_pool`` holds the oracle labels (config indices; never shown to the
    strategy, only used once an example is picked)."""
    model = copy.deepcopy(model0)
    labeled_pool: list[int] = []
    history = []
    # the current model's features: the strategy's input, then (after retraining) the classifier's
    f_tr, _ = dense_features_logits(model, conv["train"])
    f_pool, z_pool = dense_features_logits(model, conv["pool"])
    for r in range(rounds):
        remaining = np.setdiff1d(np.arange(len(y_pool)), labeled_pool)
        lab = np.asarray(labeled_pool, dtype=np.int64)
        state = RoundState(np.concatenate([f_tr, f_pool[lab]]), np.concatenate([y_train, y_pool[lab]]),
                           f_pool[remaining], z_pool[remaining], num_classes, seed, budget)
        t0 = time.time()
        scores = strategy(state)
        if scores.shape != (len(remaining),):
            raise ValueError(f"{name} returned {scores.shape} scores for {len(remaining)} pool examples")
        chosen = remaining[pick(scores, budget)]
        recognised = z_pool[chosen].argmax(1) == y_pool[chosen]
        is_tail = np.isin(y_pool[chosen], tails)
        labeled_pool.extend(chosen.tolist())
        # retrain on every label so far (oracle labels for the picked pool examples)
        lab = np.asarray(labeled_pool, dtype=np.int64)
        fine_tune_dense(model, np.concatenate([conv["train"], conv["pool"][lab]]),
                        np.concatenate([y_train, y_pool[lab]]), finetune_epochs, seed=seed + r + 1)
        f_tr, _ = dense_features_logits(model, conv["train"])
        f_pool, z_pool = dense_features_logits(model, conv["pool"])
        f_test, z_test = dense_features_logits(model, conv["test"])
        rec = tail_recalls(z_test, y_test, tails)
        # the backend's classifier on the retrained M's features of every label so far
        clf_rec, clf_acc = classifier_recalls(np.concatenate([f_tr, f_pool[lab]]), np.concatenate([y_train, y_pool[lab]]),
                                              f_test, y_test, tails, num_classes, seed)
        history.append({"round": r + 1, "picked": chosen.tolist(), "tail_picked": int(is_tail.sum()),
                        "tail_picked_per_class": {int(k): int((y_pool[chosen] == k).sum()) for k in tails},
                        "tail_picked_already_recognised": int((recognised & is_tail).sum()),
                        "strategy_seconds": time.time() - t0,
                        "tail_recall": rec, "mean_tail_recall": float(np.mean(list(rec.values()))),
                        "test_acc": float((z_test.argmax(1) == y_test).mean()),
                        "clf_tail_recall": clf_rec, "clf_mean_tail_recall": float(np.mean(list(clf_rec.values()))),
                        "clf_test_acc": clf_acc})
    picked = np.asarray(labeled_pool)
    return {"strategy": name, "rounds": history, "n_picked": int(len(picked)),
            "n_unique": int(len(np.unique(picked))),
            "tail_found": int(np.isin(y_pool[picked], tails).sum()),
            "covered": {str(d): classes_covered(y_pool[picked], tails, d) for d in COVERAGE_DEPTHS},
            "n_tails": len(tails),
            "final_mean_tail_recall": history[-1]["mean_tail_recall"], "final_test_acc": history[-1]["test_acc"],
            "final_tail_recall": history[-1]["tail_recall"],
            "final_clf_mean_tail_recall": history[-1]["clf_mean_tail_recall"],
            "final_clf_test_acc": history[-1]["clf_test_acc"], "final_clf_tail_recall": history[-1]["clf_tail_recall"]}


def run_seed(dataset, setting, seed: int, budgets: list[int], rounds: int, strategies: list[str],
             cnn_epochs: int, finetune_epochs: int) -> dict:
    d = make_setting(dataset, setting, seed)
    if setting.novel:
        raise ValueError("the annotation loop needs every class in the label config (no novel class)")
    C = d.num_classes
    imgs = {k: dataset.images[getattr(d.split, k)] for k in ("train", "pool", "test")}
    model0 = train_small_cnn(imgs["train"], d.y_train, C, seed=seed, epochs=cnn_epochs)
    conv = {k: small_cnn_conv_outputs(model0, v) for k, v in imgs.items()}
    y_pool, y_test = d.to_config(d.y_pool), d.to_config(d.y_test)
    tails = [int(k) for k in d.to_config(np.array(setting.positive_classes))]
    _, z0 = dense_features_logits(model0, conv["test"])
    rec0 = tail_recalls(z0, y_test, tails)
    out = {"seed": seed, "tails": tails, "train_per_class": np.bincount(d.y_train, minlength=C).tolist(),
           "pool_tail": int(np.isin(y_pool, tails).sum()), "n_pool": int(len(y_pool)),
           "round0_mean_tail_recall": float(np.mean(list(rec0.values()))),
           "round0_test_acc": float((z0.argmax(1) == y_test).mean()), "runs": {}}
    for b in budgets:
        for name in strategies:
            t0 = time.time()
            r = run_strategy(name, STRATEGIES[name], model0, conv, d.y_train, y_pool, y_test, tails, C, b, rounds,
                             finetune_epochs, seed)
            r["seconds"] = time.time() - t0
            out["runs"].setdefault(str(b), {})[name] = r
    return out


def summarise(seed_results: list[dict], budgets: list[int], strategies: list[str]) -> dict:
    out = {}
    for b in budgets:
        out[str(b)] = {}
        for name in strategies:
            runs = [sr["runs"][str(b)][name] for sr in seed_results]
            out[str(b)][name] = {
                "tail_found": float(np.mean([r["tail_found"] for r in runs])),
                "tail_found_std": float(np.std([r["tail_found"] for r in runs])),
                "final_mean_tail_recall": float(np.mean([r["final_mean_tail_recall"] for r in runs])),
                "final_mean_tail_recall_std": float(np.std([r["final_mean_tail_recall"] for r in runs])),
                "final_test_acc": float(np.mean([r["final_test_acc"] for r in runs])),
                "tail_already_recognised": float(np.mean([sum(h["tail_picked_already_recognised"]
                                                              for h in r["rounds"]) for r in runs])),
                "recall_by_round": np.mean([[h["mean_tail_recall"] for h in r["rounds"]] for r in runs], 0).tolist(),
                "tail_found_by_round": np.mean([np.cumsum([h["tail_picked"] for h in r["rounds"]])
                                                for r in runs], 0).tolist(),
            }
            if all("pool_tail" in sr for sr in seed_results) and all("n_picked" in r for r in runs):
                # the most tail examples any strategy could find: the budget, or the tail the pool holds
                out[str(b)][name]["tail_possible"] = float(np.mean([min(r["n_picked"], sr["pool_tail"])
                                                                    for r, sr in zip(runs, seed_results)]))
            if all("covered" in r for r in runs):   # the columns added for issue 23
                out[str(b)][name].update({
                    "n_tails": runs[0]["n_tails"],
                    **{f"covered_{d}": float(np.mean([r["covered"][str(d)] for r in runs])) for d in COVERAGE_DEPTHS},
                    "clf_recall": float(np.mean([r["final_clf_mean_tail_recall"] for r in runs])),
                    "clf_recall_std": float(np.std([r["final_clf_mean_tail_recall"] for r in runs])),
                    "clf_test_acc": float(np.mean([r["final_clf_test_acc"] for r in runs])),
                    "clf_recall_by_round": np.mean([[h["clf_mean_tail_recall"] for h in r["rounds"]]
                                                    for r in runs], 0).tolist(),
                })
    return out


def verdicts(rows: dict) -> list[dict]:
    """Issue 23's done-when for each candidate queue in one cell: tail found >= 1.2x the best
    uncertainty baseline's (the one of entropy / margin / weighted entropy with most tail found),
    and the highest final mean tail recall of the backend's classifier among the candidate and every
    strategy that is not a candidate queue (ties count as highest)."""
    unc = [n for n in UNCERTAINTY if n in rows]
    if not unc or all(is_queue(n) for n in rows):
        return []
    best_u = max(unc, key=lambda n: rows[n]["tail_found"])
    rivals = [n for n in rows if not is_queue(n)]
    out = []
    for name in (n for n in rows if is_queue(n)):
        key = "clf_recall" if "clf_recall" in rows[name] else "final_mean_tail_recall"
        best_rival = max(rivals, key=lambda n: rows[n][key])
        ratio = rows[name]["tail_found"] / max(rows[best_u]["tail_found"], 1e-9)
        highest = rows[name][key] >= rows[best_rival][key]
        ratios = {n: rows[name]["tail_found"] / max(rows[n]["tail_found"], 1e-9) for n in unc}
        possible = rows[name].get("tail_possible")
        ceiling = None if possible is None else possible / max(rows[best_u]["tail_found"], 1e-9)
        out.append({"strategy": name, "best_uncertainty": best_u, "ratio": ratio, "ratios": ratios, "ceiling": ceiling,
                    "recall_key": key,
                    "recall": rows[name][key], "best_rival": best_rival, "best_rival_recall": rows[best_rival][key],
                    "highest": bool(highest), "met": bool(ratio >= 1.2 and highest)})
    return out


def verdict_line(v: dict) -> str:
    what = "classifier" if v["recall_key"] == "clf_recall" else "M"
    others = ", ".join(f"vs {n} {r:.2f}x" for n, r in v["ratios"].items() if n != v["best_uncertainty"])
    ceiling = "" if v.get("ceiling") is None else f"; at most {v['ceiling']:.2f}x possible"
    return (f"verdict {v['strategy']}: tail found {v['ratio']:.2f}x {v['best_uncertainty']} (goal >= 1.2x: "
            f"{'yes' if v['ratio'] >= 1.2 else 'no'}{ceiling}{'; ' + others if others else ''}); "
            f"final tail recall ({what}) {v['recall']:.3f} vs best other "
            f"{v['best_rival']} {v['best_rival_recall']:.3f} (highest: {'yes' if v['highest'] else 'no'}) -> "
            f"{'MET' if v['met'] else 'not met'}")


def format_table(setting: str, summary: dict, n_seeds: int, rounds: int, round0: float) -> str:
    lines = []
    for b, rows in summary.items():
        lines.append(f"## {setting}, budget {b} x {rounds} rounds, mean over {n_seeds} seed(s); "
                     f"round-0 mean tail recall {round0:.3f}")
        lines.append(f"{'strategy':42s} {'tail found':>10s} {'(recognised)':>12s} {'cov@12':>6s} {'cov@40':>6s} "
                     f"{'M tail recall':>15s} {'M acc':>6s} {'clf tail recall':>15s} {'clf acc':>7s}")
        for name, r in rows.items():
            new = (f"{r['covered_12']:6.2f} {r['covered_40']:6.2f}",
                   f"{r['clf_recall']:7.3f} +- {r['clf_recall_std']:.3f} {r['clf_test_acc']:7.3f}") \
                if "clf_recall" in r else (f"{'-':>6s} {'-':>6s}", "")
            lines.append(f"{name:42s} {r['tail_found']:10.1f} {r['tail_already_recognised']:12.1f} {new[0]} "
                         f"{r['final_mean_tail_recall']:7.3f} +- {r['final_mean_tail_recall_std']:.3f} "
                         f"{r['final_test_acc']:6.3f} {new[1]}")
        lines += [verdict_line(v) for v in verdicts(rows)]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """One markdown table per setting and budget: tail found, of them already recognised, final
    mean tail recall and test accuracy (means over seeds); best figure of each column in bold.
    Summaries with the issue-23 columns also get the tail classes covered by the first 12 / 40
    picks, the backend classifier's final tail recall and accuracy, and one verdict line per
    candidate queue."""
    out = []
    for s, res in results.items():
        for b, rows in res["summary"].items():
            full = all("clf_recall" in r for r in rows.values())
            keys = ["tail_found", "final_mean_tail_recall", "final_test_acc"]
            out += [f"{s}, {b} examples per round (round-0 mean tail recall {res['round0_mean_tail_recall']:.3f})", ""]
            if full:
                n = next(iter(rows.values()))["n_tails"]
                keys += ["covered_12", "covered_40", "clf_recall", "clf_test_acc"]
                out += [f"| strategy | tail found | already recognised | classes covered @12 (of {n}) | @40 | "
                        "final tail recall (classifier) | classifier test acc | final tail recall (M) | M test acc |",
                        "|---|---|---|---|---|---|---|---|---|"]
            else:
                out += ["| strategy | tail found | already recognised | final tail recall | final test acc |",
                        "|---|---|---|---|---|"]
            best = {k: max(r[k] for r in rows.values()) for k in keys}

            def cell(r, k, fmt):
                return f"**{r[k]:{fmt}}**" if r[k] == best[k] else f"{r[k]:{fmt}}"
            for name, r in rows.items():
                m_rec = f"{cell(r, 'final_mean_tail_recall', '.3f')} +- {r['final_mean_tail_recall_std']:.3f}"
                if full:
                    out.append(f"| {name} | {cell(r, 'tail_found', '.1f')} | {r['tail_already_recognised']:.1f} | "
                               f"{cell(r, 'covered_12', '.2f')} | {cell(r, 'covered_40', '.2f')} | "
                               f"{cell(r, 'clf_recall', '.3f')} +- {r['clf_recall_std']:.3f} | "
                               f"{cell(r, 'clf_test_acc', '.3f')} | {m_rec} | {cell(r, 'final_test_acc', '.3f')} |")
                else:
                    out.append(f"| {name} | {cell(r, 'tail_found', '.1f')} | {r['tail_already_recognised']:.1f} | "
                               f"{m_rec} | {cell(r, 'final_test_acc', '.3f')} |")
            out.append("")
            lines = [verdict_line(v) for v in verdicts(rows)]
            if lines:
                out += [f"- {line}" for line in lines] + [""]
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(s, b) for s, res in results.items() for b in res["summary"]]
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 8.5), squeeze=False)
    for j, (s, b) in enumerate(panels):
        rows = results[s]["summary"][b]
        r0 = results[s]["round0_mean_tail_recall"]
        for name, r in rows.items():
            lw = 2.5 if name.startswith("default") or is_queue(name) else 1.2
            xs = np.arange(len(r["recall_by_round"]) + 1) * int(b)
            axes[0, j].plot(xs, [r0, *r.get("clf_recall_by_round", r["recall_by_round"])], marker="o", lw=lw,
                            label=name)
            axes[1, j].plot(xs, [0, *r["tail_found_by_round"]], marker="o", lw=lw, label=name)
        what = "classifier" if all("clf_recall_by_round" in r for r in rows.values()) else "M"
        axes[0, j].set_title(f"{s}, budget {b}/round: mean tail-class recall ({what}; test)", fontsize=9)
        axes[1, j].set_title(f"{s}, budget {b}/round: tail examples labeled", fontsize=9)
        for ax in axes[:, j]:
            ax.set_xlabel("examples labeled")
        axes[0, j].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcm_core.bench.loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="mnist-paper, 1 seed, budget 40, M trained 10 epochs")
    add_common_arguments(ap, f"comma list (default {', '.join(LOOP_SETTINGS)})",
                         "output directory for loop.json, loop.png and loop.md")
    ap.add_argument("--budgets", default=None, help="comma list of examples per round (default 20,40; quick 40)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--strategies", default=None, help=f"comma list; choices: {' | '.join(STRATEGIES)}")
    ap.add_argument("--cnn-epochs", type=int, default=None, help="round-0 CNN epochs (default 15, quick 10)")
    ap.add_argument("--finetune-epochs", type=int, default=5, help="dense-layer epochs per round")
    args = ap.parse_args(argv)
    seeds = start(args)
    settings = comma_list(ap, args.settings, ["mnist-paper"] if args.quick else LOOP_SETTINGS,
                          lambda s: s in SETTINGS and not SETTINGS[s].novel, "or novel-class setting")
    budgets = [int(b) for b in (args.budgets or ("40" if args.quick else "20,40")).split(",")]
    strategies = comma_list(ap, args.strategies, STRATEGIES, lambda s: s in STRATEGIES, "strategy")
    cnn_epochs = args.cnn_epochs or (10 if args.quick else 15)
    out = Path(args.out)
    t0 = time.time()
    results = {}
    for name, st, ds in iter_settings(settings):
        seed_results = []
        for seed in range(args.first_seed, args.first_seed + seeds):
            t1 = time.time()
            sr = run_seed(ds, st, seed, budgets, args.rounds, strategies, cnn_epochs, args.finetune_epochs)
            seed_results.append(sr)
            b = str(budgets[-1])
            print(f"[{name} seed {seed} ({seed - args.first_seed + 1}/{seeds})] train {sr['train_per_class']} | "
                  f"round-0 tail recall {sr['round0_mean_tail_recall']:.3f} | budget {b} (tail found/M/classifier "
                  "recall): " + ", ".join(
                      f"{k} {v['tail_found']}/{v['final_mean_tail_recall']:.2f}/{v['final_clf_mean_tail_recall']:.2f}"
                      for k, v in sr["runs"][b].items())
                  + f" | {time.time() - t1:.0f}s", flush=True)
        summary = summarise(seed_results, budgets, strategies)
        r0 = float(np.mean([sr["round0_mean_tail_recall"] for sr in seed_results]))
        results[name] = {"summary": summary, "seeds": seed_results, "round0_mean_tail_recall": r0}
        print(format_table(name, summary, seeds, args.rounds, r0), flush=True)
    total = time.time() - t0
    payload = {"config": {"settings": settings, "seeds": seeds, "first_seed": args.first_seed, "budgets": budgets,
                          "rounds": args.rounds,
                          "strategies": strategies, "cnn_epochs": cnn_epochs,
                          "finetune_epochs": args.finetune_epochs, "threads": args.threads},
               "total_seconds": total, "results": results}
    write_results(out, "loop.json", payload, "loop.png", lambda path: plot(results, path))
    (out / "loop.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
