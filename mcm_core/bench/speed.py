"""Speed benchmark: is mining cheap next to feature extraction?

``python -m mcm_core.bench.speed [--quick] [--out DIR]`` (also ``python -m mcm_core.bench --speed``)

Times ``MinorityMiner(num_classes=10).fit`` and ``.score`` on N synthetic feature vectors
(D = 512, C = 10; N = 10k, 100k, 1M, or 10k and 100k with ``--quick``) and, in the same run, a
torchvision ResNet-18 forward pass on 224x224 images (random weights: timing only) at batch 1
and batch 32. The figure that matters is the scoring overhead per image relative to the
backbone: ``score seconds per vector / resnet18 seconds per image`` (target < 1 %).

Features are Gaussian class clusters with a skewed (head/tail) label distribution, so the RC
layer's early stopping behaves as on real data rather than stopping at once on noise. Fit time
includes the RC layer and the novelty reference (the default strategy; ``--strategy`` times
another). Scoring the default computes distances to up to 2,048 reference rows per vector. ``--fit-cap N`` fits on the first N vectors only; the table and JSON then say so.
Timings are wall clock on a possibly shared machine: the JSON records the load average.
Default ``--threads 1`` for both the miner and ResNet-18 (same budget for both sides of the
ratio; the miner's many small optimiser steps slow down badly with 2 threads on a busy box).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

DIM = 512
NUM_CLASSES = 10
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGET_OVERHEAD_PCT = 1.0


def synthetic_features(n: int, dim: int = DIM, num_classes: int = NUM_CLASSES,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skewed Gaussian clusters: class k has probability proportional to 0.6**k (class 0 is
    ~40 %, class 9 ~0.4 %), mean ``2 * randn(D) / sqrt(D)`` (norm ~2: overlapping classes, like
    real features) plus unit Gaussian noise, float32."""
    rng = np.random.default_rng(seed)
    prior = 0.6 ** np.arange(num_classes)
    prior /= prior.sum()
    labels = rng.choice(num_classes, size=n, p=prior).astype(np.int64)
    means = rng.standard_normal((num_classes, dim), dtype=np.float32) * (2.0 / np.sqrt(dim))
    feats = rng.standard_normal((n, dim), dtype=np.float32)
    for k in range(num_classes):  # in place, class by class: no (n, dim) temporary
        feats[labels == k] += means[k]
    return feats, labels


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_resnet18(batch_sizes: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Seconds per image of a ResNet-18 forward (eval, no grad, random weights, 224x224)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    rows = []
    with torch.no_grad():
        for bs in batch_sizes:
            x = torch.randn(bs, 3, 224, 224)
            model(x)  # warm-up (allocator, oneDNN primitive creation)
            sec = _median_seconds(lambda: model(x), repeats)
            rows.append({"batch_size": bs, "seconds_per_batch": sec,
                         "seconds_per_image": sec / bs, "images_per_second": bs / sec,
                         "repeats": repeats})
    return rows


def time_miner(n: int, fit_cap: int | None, score_repeats: int, seed: int,
               strategy: str = "tail_novelty") -> dict[str, Any]:
    """Fit on min(n, fit_cap) vectors, score all n; wall-clock seconds and throughput."""
    from mcm_core import MinorityMiner

    feats, labels = synthetic_features(n, seed=seed)
    n_fit = n if fit_cap is None else min(n, fit_cap)
    miner = MinorityMiner(num_classes=NUM_CLASSES, seed=seed, strategy=strategy)
    start = time.perf_counter()
    miner.fit(feats[:n_fit], labels[:n_fit])
    fit_sec = time.perf_counter() - start
    miner.score_samples(feats[: min(n, 1000)])  # warm-up
    score_sec = _median_seconds(lambda: miner.score_samples(feats), score_repeats)
    scores = miner.score_samples(feats[: min(n, 1000)])
    if not np.all(np.isfinite(scores)):
        raise RuntimeError("miner produced non-finite scores")
    return {
        "n": n, "strategy": strategy, "n_fit": n_fit, "fit_capped": n_fit < n, "dim": DIM, "num_classes": NUM_CLASSES,
        "fit_seconds": fit_sec, "fit_vectors_per_second": n_fit / fit_sec,
        "score_seconds": score_sec, "score_vectors_per_second": n / score_sec,
        "score_seconds_per_vector": score_sec / n, "score_repeats": score_repeats,
        "fit_info": {k: v for k, v in miner.fit_info_.items() if k != "labeled_per_class"},
    }


def _format_table(result: dict[str, Any]) -> str:
    lines = []
    rn = result["resnet18"]
    lines.append("ResNet-18 forward, 224x224, random weights (eval, no grad):")
    for row in rn:
        lines.append(f"  batch {row['batch_size']:>3}: {row['seconds_per_image'] * 1e3:8.2f} ms/image "
                     f"({row['images_per_second']:7.1f} images/s)")
    lines.append("")
    header = (f"{'N':>9} {'fit on':>9} {'fit s':>8} {'fit vec/s':>11} {'score s':>8} "
              f"{'score vec/s':>12} {'us/vector':>10} " +
              " ".join(f"{'% of rn18 b' + str(r['batch_size']):>15}" for r in rn))
    strategy = result["miner"][0]["strategy"] if result["miner"] else "tail_novelty"
    lines.append(f"MinorityMiner(num_classes={NUM_CLASSES}, strategy={strategy!r}), D={DIM}:")
    lines.append(header)
    for row in result["miner"]:
        fit_on = f"{row['n_fit']}" + ("*" if row["fit_capped"] else "")
        pcts = " ".join(f"{row['overhead_pct'][str(r['batch_size'])]:14.4f}%" for r in rn)
        lines.append(
            f"{row['n']:>9} {fit_on:>9} {row['fit_seconds']:8.2f} {row['fit_vectors_per_second']:11.0f} "
            f"{row['score_seconds']:8.3f} {row['score_vectors_per_second']:12.0f} "
            f"{row['score_seconds_per_vector'] * 1e6:10.3f} {pcts}")
    if any(row["fit_capped"] for row in result["miner"]):
        lines.append("  * fit CAPPED: fitted on the first 'fit on' vectors only (--fit-cap); "
                     "scoring always covers all N.")
    worst = result["max_overhead_pct"]
    verdict = "MET" if worst < TARGET_OVERHEAD_PCT else "NOT MET"
    lines.append("")
    lines.append(f"Scoring overhead relative to a ResNet-18 forward: at most {worst:.4f}% per image "
                 f"(target < {TARGET_OVERHEAD_PCT}%: {verdict}; worst over N and over the ResNet batch "
                 "sizes, i.e. against its cheapest per-image cost)")
    lines.append(f"threads={result['machine']['torch_threads']} cpus={result['machine']['cpu_count']} "
                 f"loadavg start={result['machine']['loadavg_start']} end={result['machine']['loadavg_end']}"
                 " (shared machine: wall-clock figures)")
    return "\n".join(lines)


def _write_json_atomic(obj: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".speed-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def run(sizes: Sequence[int], *, fit_cap: int | None = None, resnet_batch_sizes: Sequence[int] = (1, 32),
        resnet_repeats: int = 5, score_repeats: int = 3, seed: int = 0,
        threads: int | None = None, strategy: str = "tail_novelty") -> dict[str, Any]:
    """Run the benchmark and return the result dict (what the JSON file holds)."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_start = [round(v, 2) for v in os.getloadavg()]
        resnet = time_resnet18(resnet_batch_sizes, resnet_repeats)
        used_threads = torch.get_num_threads()
        miner_rows = []
        for n in sizes:
            logging.getLogger(__name__).info("timing MinorityMiner on N=%d", n)
            row = time_miner(n, fit_cap, score_repeats, seed, strategy)
            row["overhead_pct"] = {str(r["batch_size"]): 100.0 * row["score_seconds_per_vector"]
                                   / r["seconds_per_image"] for r in resnet}
            miner_rows.append(row)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "benchmark": "mcm_core.bench.speed",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "max_overhead_pct": max(v for row in miner_rows for v in row["overhead_pct"].values()),
        "resnet18": resnet,
        "miner": miner_rows,
        "machine": {
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": used_threads, "loadavg_start": load_start,
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcm_core.bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 100k only")
    parser.add_argument("--sizes", type=_positive_int, nargs="+",
                        help="explicit N values (overrides --quick)")
    parser.add_argument("--out", default="bench_out", help="output directory (default bench_out/)")
    parser.add_argument("--fit-cap", type=_positive_int, default=None,
                        help="fit on at most this many vectors (reported as capped); default: no cap")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch intra-op threads for both the miner and ResNet-18 (default 1: "
                             "the miner's small ops get much slower with >1 thread on a busy machine)")
    parser.add_argument("--resnet-batch-sizes", type=_positive_int, nargs="+", default=[1, 32])
    parser.add_argument("--resnet-repeats", type=_positive_int, default=5)
    parser.add_argument("--score-repeats", type=_positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="tail_novelty", choices=("tail_novelty", "reconstruction", "paper"),
                        help="the miner's strategy (default: the library's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    result = run(sizes, fit_cap=args.fit_cap, resnet_batch_sizes=args.resnet_batch_sizes,
                 resnet_repeats=args.resnet_repeats, score_repeats=args.score_repeats,
                 seed=args.seed, threads=args.threads, strategy=args.strategy)
    print(_format_table(result))
    path = os.path.join(args.out, "speed.json")
    _write_json_atomic(result, path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
