"""Every environment setting of the backend in one place.

Why one module: `--help`, the README and the code read the same table, so a
setting cannot be documented in one place and parsed differently in another.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from typing import Mapping

# name -> (default, help). Order is the order shown by `python _wsgi.py --help`.
SETTINGS_HELP: dict[str, tuple[str | None, str]] = {
    "LABEL_STUDIO_URL": (None, "Base URL of Label Studio (e.g. http://localhost:8080). Needed to fetch "
                         "annotated tasks, download /data/... images and push predictions."),
    "LABEL_STUDIO_API_KEY": (None, "Personal access token (JWT refresh token, exchanged for access tokens) "
                             "or legacy token. Only ever sent to the LABEL_STUDIO_URL host."),
    "MODEL_DIR": ("./models", "Where models, versions and feature caches live: MODEL_DIR/<project_id>/."),
    "MCM_BACKBONE": ("resnet18", "Feature extractor: resnet18 | resnet50 | torchscript:<path> | simple-cnn."),
    "MCM_BACKBONE_WEIGHTS": (None, "Local weights file for resnet18/resnet50 (else torchvision's cache)."),
    "MCM_ALLOWED_HOSTS": ("", "Comma-separated hostnames, IPs or CIDRs that may be fetched even though "
                          "they are loopback/private/link-local (e.g. 127.0.0.1,10.0.0.0/8,minio)."),
    "BASIC_AUTH_USER": (None, "With BASIC_AUTH_PASS: require HTTP basic auth on every route except "
                        "/health and the annotation webhook (see README)."),
    "BASIC_AUTH_PASS": (None, "Password for BASIC_AUTH_USER."),
    "REDIS_URL": (None, "Unset: train and re-score in a background thread of this process. Set (e.g. "
                  "redis://redis:6379/0): the web process only enqueues; training and chunked re-scoring run "
                  "as RQ jobs in `rq worker` processes sharing MODEL_DIR (see backend/distributed.py)."),
    "MCM_RQ_QUEUE": ("mcm", "With REDIS_URL: the RQ queue the jobs go to (start workers on the same queue)."),
    "MCM_SCORE_CHUNK_TASKS": ("5000", "With REDIS_URL: unlabeled tasks per re-scoring job; the chunks of one "
                              "project are scored by all workers in parallel."),
    "MCM_DEBOUNCE_SECONDS": ("2", "Wait this long after the last training event before training, so a "
                             "burst of annotations causes one training."),
    "MCM_RETRAIN_MIN_INTERVAL": ("30", "At most one training start per project per this many seconds (a live "
                                 "team's submissions are batched; see docs/lifecycle.md)."),
    "MCM_RETRAIN_MAX_WAIT": ("60", "Train at the latest this many seconds after the first untrained event, even "
                             "while events keep arriving faster than MCM_DEBOUNCE_SECONDS apart."),
    "MCM_HEAD_SIZE": ("100", "Tasks pushed at once under a new version (the head of the queue); at least 4 x "
                      "the labels added since the previous version. The rest follows when the version settles."),
    "MCM_FILL_AFTER_SECONDS": ("300", "Once a version has been current this long (no newer training), push the "
                               "scores of the rest of the pool too. A project's first version fills at once."),
    "MCM_PREDICTION_GRACE_SECONDS": ("86400", "Keep a superseded version's predictions this long before deleting "
                                     "them (Label Studio rejects a submission whose pre-filled prediction was "
                                     "deleted). Default: Label Studio's task lock time, 24 h."),
    "MCM_POOL_RELIST_SECONDS": ("600", "List the project's unlabeled tasks from Label Studio again after this "
                                "long (30-40 s of Label Studio time on a 100k-task project); new tasks also arrive "
                                "at once through the TASKS_CREATED webhook."),
    "MCM_MAINTAIN_SECONDS": ("10", "How often the background maintainer fills, retires and checks that Label "
                             "Studio's model_version follows the backend's."),
    "MCM_SEED": ("0", "Seed for every random choice (training is deterministic given the data)."),
    "MCM_PREDICT_CHUNK": ("500", "Predictions per import/predictions request when pushing scores (at most 500, "
                          "Label Studio's import batch: a refused request then creates nothing)."),
    "MCM_IMAGE_MAX_BYTES": ("20000000", "Largest image download accepted, in bytes."),
    "MCM_IMAGE_TIMEOUT": ("10", "Seconds before an image download is abandoned."),
    "MCM_SCORE_TRANSFORM": ("sqrt", "How raw scores map into [0,1]: linear (score/upper bound) or sqrt "
                            "(sqrt of that; spreads the small values). Both monotone."),
    "MCM_CNN_EPOCHS": ("8", "simple-cnn only: training epochs of the small CNN at each retrain."),
    "MCM_TORCH_THREADS": ("1", "torch intra-op threads of the backend process. 1 is fastest for the miner's "
                          "small networks (measured: 10k-example fit 19 s with 1 thread, minutes with 2 on a "
                          "busy 2-core machine); raise it for big ResNet extractions on an idle machine."),
    "MCM_MINER_OPTIONS": ("", "JSON object of extra MinorityMiner keyword options, e.g. {\"n_models\": 1} "
                          "(faster training on big projects: one autoencoder instead of the ensemble)."),
    "LOG_LEVEL": ("INFO", "Python logging level."),
}

SCORE_TRANSFORMS = ("linear", "sqrt")


def _number(env: Mapping[str, str], name: str, cast: type = int):
    """The setting `name` as int or float (its default when unset), or a ValueError naming it."""
    raw = env.get(name) or SETTINGS_HELP[name][0]
    try:
        return cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Parsed, validated settings; build with `Settings.from_env()`."""

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    model_dir: str = "./models"
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    score_transform: str = "sqrt"
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    redis_url: str | None = None
    rq_queue: str = "mcm"
    score_chunk_tasks: int = 5000
    debounce_seconds: float = 2.0
    retrain_min_interval: float = 30.0
    retrain_max_wait: float = 60.0
    head_size: int = 100
    fill_after_seconds: float = 300.0
    prediction_grace_seconds: float = 86400.0
    pool_relist_seconds: float = 600.0
    maintain_seconds: float = 10.0
    seed: int = 0
    predict_chunk: int = 500
    image_max_bytes: int = 20_000_000
    image_timeout: float = 10.0
    cnn_epochs: int = 8
    torch_threads: int = 1
    miner_options: str = ""   # JSON text (kept as text so Settings stays hashable)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.score_transform not in SCORE_TRANSFORMS:
            raise ValueError(f"MCM_SCORE_TRANSFORM must be one of {SCORE_TRANSFORMS}, got {self.score_transform!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.predict_chunk < 1:
            raise ValueError("MCM_PREDICT_CHUNK must be >= 1")
        if self.score_chunk_tasks < 1:
            raise ValueError("MCM_SCORE_CHUNK_TASKS must be >= 1")
        if not self.rq_queue:
            raise ValueError("MCM_RQ_QUEUE must not be empty")
        if self.miner_options:
            try:
                options = json.loads(self.miner_options)
            except ValueError as exc:
                raise ValueError(f"MCM_MINER_OPTIONS is not valid JSON: {exc}") from None
            if not isinstance(options, dict) or {"num_classes", "seed"} & set(options):
                raise ValueError("MCM_MINER_OPTIONS must be a JSON object of MinorityMiner keyword options "
                                 "(num_classes and seed are set by the backend)")
        if self.cnn_epochs < 1:
            raise ValueError("MCM_CNN_EPOCHS must be >= 1")
        if self.torch_threads < 1:
            raise ValueError("MCM_TORCH_THREADS must be >= 1")
        for name, value in (("MCM_DEBOUNCE_SECONDS", self.debounce_seconds),
                            ("MCM_RETRAIN_MIN_INTERVAL", self.retrain_min_interval),
                            ("MCM_RETRAIN_MAX_WAIT", self.retrain_max_wait),
                            ("MCM_FILL_AFTER_SECONDS", self.fill_after_seconds),
                            ("MCM_PREDICTION_GRACE_SECONDS", self.prediction_grace_seconds),
                            ("MCM_POOL_RELIST_SECONDS", self.pool_relist_seconds)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.head_size < 1:
            raise ValueError("MCM_HEAD_SIZE must be >= 1")
        if self.maintain_seconds <= 0:
            raise ValueError("MCM_MAINTAIN_SECONDS must be > 0")
        for entry in self.allowed_hosts:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"MCM_ALLOWED_HOSTS entry {entry!r} is not a valid CIDR") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        if (env.get("MCM_SCORE_DIRECTION") or "tail-high") != "tail-high":
            raise ValueError("MCM_SCORE_DIRECTION=tail-low is no longer supported: Label Studio's open-source UI "
                             "disables Uncertainty sampling, so the only supported ordering is the 'Tail classes "
                             "first' tab (highest score first). Unset MCM_SCORE_DIRECTION.")
        values = dict(
            label_studio_url=(env.get("LABEL_STUDIO_URL") or None),
            label_studio_api_key=(env.get("LABEL_STUDIO_API_KEY") or None),
            model_dir=env.get("MODEL_DIR") or "./models",
            backbone=env.get("MCM_BACKBONE") or "resnet18",
            backbone_weights=env.get("MCM_BACKBONE_WEIGHTS") or None,
            allowed_hosts=tuple(h.strip().lower() for h in (env.get("MCM_ALLOWED_HOSTS") or "").split(",")
                                if h.strip()),
            score_transform=env.get("MCM_SCORE_TRANSFORM") or "sqrt",
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            redis_url=env.get("REDIS_URL") or None,
            rq_queue=env.get("MCM_RQ_QUEUE") or "mcm",
            score_chunk_tasks=_number(env, "MCM_SCORE_CHUNK_TASKS"),
            debounce_seconds=_number(env, "MCM_DEBOUNCE_SECONDS", float),
            retrain_min_interval=_number(env, "MCM_RETRAIN_MIN_INTERVAL", float),
            retrain_max_wait=_number(env, "MCM_RETRAIN_MAX_WAIT", float),
            head_size=_number(env, "MCM_HEAD_SIZE"),
            fill_after_seconds=_number(env, "MCM_FILL_AFTER_SECONDS", float),
            prediction_grace_seconds=_number(env, "MCM_PREDICTION_GRACE_SECONDS", float),
            pool_relist_seconds=_number(env, "MCM_POOL_RELIST_SECONDS", float),
            maintain_seconds=_number(env, "MCM_MAINTAIN_SECONDS", float),
            seed=_number(env, "MCM_SEED"),
            predict_chunk=_number(env, "MCM_PREDICT_CHUNK"),
            image_max_bytes=_number(env, "MCM_IMAGE_MAX_BYTES"),
            image_timeout=_number(env, "MCM_IMAGE_TIMEOUT", float),
            cnn_epochs=_number(env, "MCM_CNN_EPOCHS"),
            torch_threads=_number(env, "MCM_TORCH_THREADS"),
            miner_options=(env.get("MCM_MINER_OPTIONS") or "").strip(),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
        )
        values.update(overrides)
        return cls(**values)

    @property
    def miner_kwargs(self) -> dict:
        """MCM_MINER_OPTIONS parsed (validated in __post_init__)."""
        return json.loads(self.miner_options) if self.miner_options else {}

    def project_dir(self, project_id: int) -> str:
        return os.path.join(self.model_dir, str(int(project_id)))


def settings_help_text() -> str:
    """The settings table as plain text for `--help`."""
    lines = ["environment settings:"]
    for name, (default, text) in SETTINGS_HELP.items():
        shown = f" (default: {default})" if default not in (None, "") else ""
        lines.append(f"  {name}{shown}\n      {text}")
    return "\n".join(lines)
