"""CPU cost of the torchvision candidate source (a script, not a test).

    python -m benchmarks.detector_cost [--archs fasterrcnn_mobilenet_v3_large_320_fpn,...] [--images 12]

What a `torchvision:<arch>` detection project costs per unlabeled image on this machine: the
detector's own detections with their box-head features (`TorchvisionDetector.detect`, what every
unlabeled image goes through once) and the box-head features of 10 given boxes (`box_features`,
what every annotated image goes through once). No weights can be downloaded here, so each
architecture is loaded through the real loading code (`MCM_DETECTOR_WEIGHTS`: a state_dict file)
from a randomly initialised model of the COCO shape (91 classes). The cost does not depend on the
weights' values (the backbone, the RPN's fixed number of proposals and the box head on all of them
run whatever the weights) except through the number of kept detections, whose features are read
again: the score threshold is 0 here, so every image keeps the cap of 100 (an upper bound). Their
ranking quality is not what this measures. Images: 640x480 canvases of MNIST digits (the detector
resizes every image to its own input size). Prints per-call medians and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

DEFAULT_ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                 "fasterrcnn_resnet50_fpn")


def images(n: int, seed: int = 0) -> list:
    from PIL import Image

    from mcm_core.bench.data import load_dataset
    from mcm_core.bench.detection_data import make_images

    digits = load_dataset("mnist")
    canvases = make_images(digits.images, digits.labels, n, seed, (0, 1), 0.03, size=240)
    return [Image.fromarray(c.pixels, "L").resize((640, 480)).convert("RGB") for c in canvases]


def random_weights(arch: str, directory: str) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=91)
    path = os.path.join(directory, f"{arch}.pth")
    torch.save(model.state_dict(), path)
    return path


def time_arch(arch: str, pictures: list, threads: int, directory: str) -> dict:
    from mcm_core.detectors import TorchvisionDetector

    started = time.perf_counter()
    # score threshold 0: every image returns the cap of 100 detections, whose features are read
    # again; the most a detection can cost (the backend's threshold is 0.05)
    detector = TorchvisionDetector(arch, random_weights(arch, directory), score_threshold=0.0, num_threads=threads)
    load = time.perf_counter() - started
    boxes = np.array([[0.1 * i, 0.1, 0.1 * i + 0.2, 0.4] for i in range(8)] + [[0.2, 0.5, 0.5, 0.9], [0.6, 0.5, 0.9, 0.95]])
    detector.detect(pictures[0])  # warm-up: first-call allocations
    detect, features, found = [], [], []
    for picture in pictures:
        t = time.perf_counter()
        b, _, _ = detector.detect(picture)
        detect.append(time.perf_counter() - t)
        found.append(len(b))
        t = time.perf_counter()
        detector.box_features(picture, boxes)
        features.append(time.perf_counter() - t)
    return {"arch": arch, "load_seconds": round(load, 2), "detect_median_s": round(statistics.median(detect), 3),
            "detect_max_s": round(max(detect), 3), "box_features_10_median_s": round(statistics.median(features), 3),
            "detections_per_image": round(float(np.mean(found)), 1), "feature_dim": detector.feature_dim,
            "images": len(pictures)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detector_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma list of torchvision:<arch> names")
    ap.add_argument("--images", type=int, default=12, help="images timed per architecture (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (MCM_TORCH_THREADS)")
    args = ap.parse_args(argv)
    pictures = images(args.images)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for arch in [a for a in args.archs.split(",") if a]:
            load_before = os.getloadavg()[0]
            row = {**time_arch(arch, pictures, args.threads, directory),
                   "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'arch':40s} {'detect s/image':>15s} {'10 box features s':>18s} {'load':>12s}")
    for r in rows:
        print(f"{r['arch']:40s} {r['detect_median_s']:15.3f} {r['box_features_10_median_s']:18.3f} "
              f"{r['load_avg_1m'][0]:5.2f}-{r['load_avg_1m'][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
