"""Re-scoring throughput of the RQ scale-out with 1 and 2 workers (a script, not a test).

    python -m backend.bench_scaleout [--unlabeled 20000] [--workload features|images] [--workers 1,2]
                                     [--chunk 2500] [--redis-url URL]

Builds one project behind an in-process fake Label Studio (backend.bench's), trains it once in this
process, then for each worker count starts that many real `rq worker` processes on a fresh queue and
times the fan-out of backend.distributed (list unlabeled tasks, one job per chunk, the push job that
depends on them) from enqueue to "pushed". Workloads:
  features  cached 512-d features (resnet18 identity, random weights from a local file): each chunk
            job loads the model and cache, scores with the miner, writes its result file;
  images    cached 28x28 prepared images with simple-cnn: each chunk job also runs the CNN.
Also times the single-process path (backend.jobs.refresh_project) for reference. Without
--redis-url a private redis-server is started on a free port. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(work: str) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    import redis
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return url, proc
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def _build_project(args, work: str):
    """Fake Label Studio + cache filled for every task; returns (settings, env for workers, fake)."""
    import torch
    import torchvision

    from backend.bench import _BenchLabelStudio, _label_config, synthetic_tasks
    from backend.runtime import Runtime
    from backend.settings import Settings

    rng = np.random.default_rng(0)
    n_classes, head = 10, 5
    weights = np.array([20.0] * head + [1.0] * (n_classes - head))
    classes = [f"class{i}" for i in range(n_classes)]
    labels = rng.choice(n_classes, args.annotated, p=weights / weights.sum())
    hidden = rng.choice(n_classes, args.unlabeled, p=weights / weights.sum())
    tasks = synthetic_tasks(labels, classes, args.unlabeled)
    api_key = "bench-token"
    fake = _BenchLabelStudio(api_key)
    fake.project.update({"label_config": _label_config(classes), "model_version": ""})
    fake.tasks = tasks

    env = {"MODEL_DIR": os.path.join(work, "models"), "LABEL_STUDIO_URL": fake.url, "LABEL_STUDIO_API_KEY": api_key,
           "MCM_TORCH_THREADS": "1", "MCM_SCORE_CHUNK_TASKS": str(args.chunk), "MCM_PREDICT_CHUNK": "1000"}
    if args.workload == "features":
        weights_path = os.path.join(work, "resnet18-random.pt")
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_path)
        env.update(MCM_BACKBONE="resnet18", MCM_BACKBONE_WEIGHTS=weights_path)
    else:
        env.update(MCM_BACKBONE="simple-cnn", MCM_CNN_EPOCHS="1")
    settings = Settings.from_env(env)
    runtime = Runtime(settings)
    all_labels = np.concatenate([labels, hidden])
    if args.workload == "features":
        centers = rng.normal(size=(n_classes, 512)).astype(np.float32)
        values = (centers[all_labels] + rng.normal(scale=2.0, size=(len(tasks), 512))).astype(np.float32)
    else:
        from sklearn.datasets import load_digits
        digits = load_digits()
        by_class = [digits.images[digits.target == c] for c in range(n_classes)]
        picks = np.stack([by_class[c][rng.integers(len(by_class[c]))] for c in all_labels.tolist()])
        big = np.kron(picks, np.ones((4, 4)))[:, 2:30, 2:30]  # 8x8 digits (0..16) -> 28x28
        values = np.clip(big * 16, 0, 255).astype(np.uint8)[..., None]  # (N, H, W, C) like prepare()
        expected = tuple(runtime.extractor.backbone.input_shape)
        if values.shape[1:] != expected:
            raise RuntimeError(f"simple-cnn expects prepared images of shape {expected}, got {values.shape[1:]}")
    keys = [(t["id"], t["data"]["image"]) for t in tasks]
    cache = runtime.cache(1)
    cache.put(keys, values)
    return settings, env, fake, runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unlabeled", type=int, default=20_000)
    parser.add_argument("--annotated", type=int, default=2_000)
    parser.add_argument("--workload", choices=("features", "images"), default="features")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    parser.add_argument("--chunk", type=int, default=2500, help="MCM_SCORE_CHUNK_TASKS")
    parser.add_argument("--worker-class", default="backend.distributed.PreloadWorker",
                        help="rq worker -w class ('' = RQ's plain forking Worker)")
    parser.add_argument("--redis-url", default=None, help="an existing Redis (else a private redis-server)")
    parser.add_argument("--log-dir", default=None, help="write each worker's log here")
    parser.add_argument("--out", default=None, help="also write the JSON figures here")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] [%(name)s] %(message)s")

    import redis
    from rq import Queue
    from rq.job import Job

    from backend import distributed, jobs

    work = tempfile.mkdtemp(prefix="mcm-bench-scaleout-")
    redis_proc = None
    procs: list[subprocess.Popen] = []
    try:
        redis_url = args.redis_url
        if not redis_url:
            redis_url, redis_proc = _start_redis(work)
        settings, env, fake, runtime = _build_project(args, work)
        version = jobs.train_project(1, runtime=runtime, rescore=False)
        rows = []

        started = time.monotonic()
        pushed = jobs.refresh_project(1, runtime=runtime)["pool"]
        seconds = time.monotonic() - started
        rows.append({"mode": "in-process (no RQ)", "workers": 0, "tasks": pushed, "seconds": round(seconds, 2),
                     "tasks_per_second": round(pushed / seconds, 1)})

        connection = redis.Redis.from_url(redis_url)
        for n_workers in [int(n) for n in args.workers.split(",")]:
            queue = f"mcm-bench-{uuid.uuid4().hex[:8]}"
            worker_env = {**os.environ, **env, "PYTHONPATH": ROOT, "REDIS_URL": redis_url, "MCM_RQ_QUEUE": queue}
            rq_bin = os.path.join(os.path.dirname(sys.executable), "rq")
            command = [rq_bin, "worker", "--url", redis_url, queue]
            if args.worker_class:
                command[2:2] = ["-w", args.worker_class]
            logs = [open(os.path.join(args.log_dir, f"worker-{n_workers}-{i}.log"), "w") if args.log_dir
                    else subprocess.DEVNULL for i in range(n_workers)]
            procs = [subprocess.Popen(command, cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
                     for log in logs]
            from rq import Worker
            deadline = time.monotonic() + 120
            while len(Worker.all(connection=connection, queue=Queue(queue, connection=connection))) < n_workers:
                if time.monotonic() > deadline:  # start-up is not scoring time: wait for registration
                    raise RuntimeError("workers did not start")
                time.sleep(0.2)
            shutil.rmtree(os.path.join(settings.project_dir(1), "scores"), ignore_errors=True)
            coord = distributed._Coordinator(connection, queue)
            started = time.monotonic()
            ids = distributed.fan_out_rescoring(coord, runtime, 1, version, None)
            push = Job.fetch(ids[-1], connection=connection)
            while push.get_status() not in ("finished", "failed", "stopped", "canceled"):
                time.sleep(0.1)
            seconds = time.monotonic() - started
            if push.get_status() != "finished":
                raise RuntimeError(f"push job {push.id} ended {push.get_status()}: {push.exc_info}")
            pushed = int(push.return_value())
            rows.append({"mode": "RQ fan-out", "workers": n_workers, "tasks": pushed, "seconds": round(seconds, 2),
                         "tasks_per_second": round(pushed / seconds, 1), "chunks": len(ids) - 1})
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
            procs = []

        print(f"re-scoring {args.unlabeled} unlabeled tasks, workload={args.workload}, chunk={args.chunk}, "
              f"worker class {args.worker_class or 'rq.Worker'}, {os.cpu_count()} CPUs, torch threads 1 per process")
        print(f"{'mode':<22}{'workers':>8}{'tasks':>8}{'seconds':>10}{'tasks/s':>10}")
        for row in rows:
            print(f"{row['mode']:<22}{row['workers']:>8}{row['tasks']:>8}{row['seconds']:>10}"
                  f"{row['tasks_per_second']:>10}")
        figures = {"unlabeled": args.unlabeled, "annotated": args.annotated, "workload": args.workload,
                   "worker_class": args.worker_class or "rq.Worker",
                   "chunk": args.chunk, "cpus": os.cpu_count(), "rows": rows}
        print(json.dumps(figures))
        if args.out:
            with open(args.out, "w") as handle:
                handle.write(json.dumps(figures, indent=1) + "\n")
        return 0
    finally:
        for proc in procs:
            proc.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
