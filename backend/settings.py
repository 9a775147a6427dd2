"""Every environment setting of the backend, in one table.

Why one table: `python _wsgi.py --help`, docs/settings.md (`python -m backend.settings
--markdown`), the parser and the defaults all read `TABLE`, so a setting cannot be
documented in one place and parsed or defaulted differently in another.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Setting:
    env: str                 # environment variable
    field: str               # Settings attribute
    kind: type               # str, int, float or bool (str for optional text, tuple for lists)
    default: Any             # None = unset
    help: str
    minimum: float | None = None
    group: str = "Backend"


TABLE: tuple[Setting, ...] = (
    Setting("LABEL_STUDIO_URL", "label_studio_url", str, None, "Base URL of Label Studio (e.g. "
            "http://localhost:8080). Needed to read tasks, download /data/... images and push predictions.",
            group="Label Studio"),
    Setting("LABEL_STUDIO_API_KEY", "label_studio_api_key", str, None, "Personal access token (JWT refresh "
            "token, exchanged for access tokens) or legacy token. Only ever sent to Label Studio's exact origin.",
            group="Label Studio"),
    Setting("MODEL_DIR", "model_dir", str, "./models", "Where models, versions, feature caches and the "
            "publishing ledger live: MODEL_DIR/<project_id>/."),
    Setting("MCM_BACKBONE", "backbone", str, "resnet18", "Feature extractor: resnet18 | resnet50 | "
            "torchscript:<path> (photos: pretrained) | pool-cnn (glyphs, icons, shapes in any colours, no weights: "
            "trained on the labels and the unlabeled pool at each training) | simple-cnn (small grayscale digits). "
            "docs/backend.md says which to choose."),
    Setting("MCM_BACKBONE_WEIGHTS", "backbone_weights", str, None, "Local weights file for resnet18/resnet50 "
            "(else torchvision's cache or download)."),
    Setting("MCM_SEED", "seed", int, 0, "Seed for every random choice (training is deterministic given the data)."),
    Setting("MCM_CNN_EPOCHS", "cnn_epochs", int, 8, "simple-cnn only: training epochs of the small CNN at each "
            "retrain.", minimum=1),
    Setting("MCM_TORCH_THREADS", "torch_threads", int, 1, "torch intra-op threads of the process. 1 is fastest "
            "for the miner's small networks on a busy machine; raise it for big ResNet extractions on an idle "
            "one.", minimum=1),
    Setting("MCM_MINER_OPTIONS", "miner_options", str, "", "JSON object of extra MinorityMiner keyword options, "
            "e.g. {\"n_models\": 1}. Checked at start-up."),
    Setting("MCM_SCORE_TRANSFORM", "score_transform", str, "sqrt", "How raw scores map into [0,1]: linear "
            "(score/upper bound) or sqrt (spreads the small values). Both monotone."),
    Setting("MCM_DEBOUNCE_SECONDS", "debounce_seconds", float, 2.0, "Train once no training request came for "
            "this long, so a burst of annotations causes one training.", minimum=0, group="When to train"),
    Setting("MCM_RETRAIN_MIN_INTERVAL", "retrain_min_interval", float, 30.0, "At most one training start per "
            "project per this many seconds.", minimum=0, group="When to train"),
    Setting("MCM_RETRAIN_MAX_WAIT", "retrain_max_wait", float, 60.0, "Train at the latest this long after the "
            "first untrained request, even while requests keep coming faster than the debounce.", minimum=0,
            group="When to train"),
    Setting("MCM_HEAD_SIZE", "head_size", int, 100, "Tasks pushed at once under a new version (the head of the "
            "queue); at least 4 x the labels added since the previous version.", minimum=1,
            group="Publishing predictions"),
    Setting("MCM_QUEUE_WINDOW", "queue_window", int, 500, "The N best-scored tasks are re-ordered so that the "
            "first ones show every rare class the model finds (its predicted tail classes in turn, the least "
            "labeled first) and their labels teach the model (mcm_core.queue: where the evidence says a class's "
            "tasks are mostly rare, those the version's classifier does not recognise yet first; MCM_MINER_OPTIONS "
            "'{\"queue_teach_by\": \"distance\"}': those unlike what is labeled). N should also hold the rare tasks "
            "the model ranks below those it already recognises. 0: the tab follows the mining score alone (one "
            "rare class at a time). Applies from the next training.",
            minimum=0, group="Publishing predictions"),
    Setting("MCM_AUTO_TAB", "auto_tab", bool, True, "On a project's first publish, create its Data Manager tab "
            "\"Tail classes first\" (unlabeled tasks, highest score first) unless a tab of that title exists; "
            "annotators then use \"Label Tasks As Displayed\" on it. false: only `admin enable-ordering` creates it "
            "(also the only way to get lanes).", group="Publishing predictions"),
    Setting("MCM_FILL_AFTER_SECONDS", "fill_after_seconds", float, 300.0, "Once a version has been current this "
            "long, push the rest of the pool too (a project's first version fills at once).", minimum=0,
            group="Publishing predictions"),
    Setting("MCM_PREDICTION_GRACE_SECONDS", "prediction_grace_seconds", float, 86400.0, "Keep a superseded "
            "version's predictions this long before deleting them (an open task may reference one). Default: "
            "Label Studio's task lock time, 24 h.", minimum=0, group="Publishing predictions"),
    Setting("MCM_POOL_RELIST_SECONDS", "pool_relist_seconds", float, 600.0, "List the project's unlabeled tasks "
            "again after this long; new tasks also arrive at once with TASKS_CREATED.", minimum=0,
            group="Publishing predictions"),
    Setting("MCM_MAINTAIN_SECONDS", "maintain_seconds", float, 10.0, "How often the background upkeep fills, "
            "retires and keeps Label Studio's model_version on ours.", minimum=0.001,
            group="Publishing predictions"),
    Setting("MCM_PREFILL", "prefill", str, "auto", "What a prediction pre-ticks. auto: the class of a plain "
            "classifier (softmax, no tail boost) on the same features, only for the classes whose held-out "
            "precision in the project's own labels is >= 90 % at the task's confidence (95 % lower bound >= 80 %; "
            "cross-validated at each training; meta.json and /mcm/status say which and why), and never while the "
            "model is weak; other tasks get the score and no choice. off: no pre-filled choice or box at all, "
            "scores only.", group="Publishing predictions"),
    Setting("MCM_WEAK_ORDER", "weak_order", str, "miner", "Classification: the tab's order while the reliability "
            "verdict is weak (the features do not separate the classes, checked at each training). miner: the "
            "miner's scores anyway (measured best: on newcomer images they found the rare ones at about the base "
            "rate, AUC-PR 1.5x it; docs/quality.md); random: a fixed pseudo-random order (the base rate in "
            "expectation); novelty: tasks least like the labeled common-class examples first (measured worse). "
            "/mcm/status tab_order says which the tab follows.", group="Publishing predictions"),
    Setting("MCM_PREDICT_CHUNK", "predict_chunk", int, 500, "Predictions per import request (at most 500, Label "
            "Studio's import batch: a refused request then creates nothing).", minimum=1,
            group="Publishing predictions"),
    Setting("MCM_ALLOWED_HOSTS", "allowed_hosts", tuple, (), "Comma-separated hostnames, IPs or CIDRs that may "
            "be fetched although loopback/private/link-local (e.g. 127.0.0.1,10.0.0.0/8,minio).", group="Images"),
    Setting("MCM_IMAGE_MAX_BYTES", "image_max_bytes", int, 20_000_000, "Largest image download accepted, in "
            "bytes.", minimum=1, group="Images"),
    Setting("MCM_IMAGE_TIMEOUT", "image_timeout", float, 10.0, "Seconds for a whole image download "
            "(connecting, redirects and body).", minimum=0.001, group="Images"),
    Setting("MCM_IMAGE_MAX_PIXELS", "image_max_pixels", int, 25_000_000, "Largest image decoded, in pixels, read "
            "from the file header: a JPEG over it is decoded at 1/2-1/8 scale, any other image over it is "
            "skipped. Also the pixels decoded at once across download threads.", minimum=1, group="Images"),
    Setting("BASIC_AUTH_USER", "basic_auth_user", str, None, "With BASIC_AUTH_PASS: HTTP basic auth on every "
            "route except / and /health, /webhook included (docs/security.md).", group="Security"),
    Setting("BASIC_AUTH_PASS", "basic_auth_pass", str, None, "Password for BASIC_AUTH_USER. Example values "
            "(change-me..., replace-with-...) are refused at start, as for LABEL_STUDIO_API_KEY.", group="Security"),
    Setting("MCM_MAX_REQUEST_BYTES", "max_request_bytes", int, 33_554_432, "Largest request body accepted on any "
            "route; larger ones get 413 before the body is read.", minimum=1024, group="Security"),
    Setting("MCM_ALLOW_UNAUTHENTICATED", "allow_unauthenticated", bool, False, "Without basic auth the backend "
            "serves only loopback clients and `python _wsgi.py` refuses a non-loopback --host. true: serve any "
            "client without authentication (only on a network that nothing but Label Studio reaches).",
            group="Security"),
    Setting("MCM_PROJECTS", "projects", tuple, (), "Comma-separated Label Studio project ids this backend acts "
            "on (e.g. 1,2,5). Set: authoritative, Label Studio is not asked. Unset: a project counts as connected "
            "when Label Studio lists an ML backend for it that points here (docs/security.md).", group="Security"),
    Setting("MCM_BACKEND_URL", "backend_url", str, None, "The URL Label Studio uses for this backend (the one "
            "entered in Settings > Model, e.g. http://backend:9090). Set: only a registered ML backend with this "
            "URL (trailing slash aside) connects a project. Unset: any ML backend registered for the project does. "
            "The admin command also reads it.", group="Security"),
    Setting("MCM_CONNECTION_TTL_SECONDS", "connection_ttl", float, 300.0, "How long Label Studio's answer about "
            "a project's ML backends is reused before it is asked again.", minimum=0, group="Security"),
    Setting("MCM_DETECTION_CANDIDATES", "detection_candidates", str, None, "Object detection projects "
            "(RectangleLabels): where each unlabeled image's candidate detections come from. "
            "label-studio:<model_version> = the RectangleLabels predictions another model version (your own "
            "detector, imported pre-annotations) has in Label Studio, box features from MCM_BACKBONE on the box "
            "crops; torchvision:<arch> = a torchvision Faster R-CNN run here (fasterrcnn_mobilenet_v3_large_320_fpn, "
            "fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2), box features "
            "from its box head. Required to connect a detection project (docs/detection.md).",
            group="Object detection"),
    Setting("MCM_DETECTOR_WEIGHTS", "detector_weights", str, None, "With torchvision:<arch>: a local state_dict "
            "of that detector (any number of classes); unset = torchvision's COCO weights (downloaded once: needs "
            "internet).", group="Object detection"),
    Setting("MCM_DETECTION_TOP_K", "detection_top_k", int, 3, "An image's score is the mean box score of its K "
            "most confident candidates (the paper's K = 3); an image without candidates scores 0.", minimum=1,
            group="Object detection"),
    Setting("MCM_DETECTION_REGION_MIN_CONFIDENCE", "detection_region_min_confidence", float, 0.5, "Candidates "
            "at least this confident are pushed as pre-annotation regions (with the RC layer's class); all "
            "candidates count for the score.", minimum=0, group="Object detection"),
    Setting("MCM_DETECTION_BACKGROUND_BOXES", "detection_background_boxes", int, 2, "Background boxes sampled "
            "per labeled image (overlapping no annotated box by IoU >= 0.3): the detector head's background "
            "class, so false-positive candidates are not mistaken for rare objects.", minimum=0,
            group="Object detection"),
    Setting("MCM_DETECTION_JITTERED_BOXES", "detection_jittered_boxes", int, 2, "Imprecise copies trained per "
            "annotated box (as a detector's box head learns from proposals): candidates are never pixel-exact.",
            minimum=0, group="Object detection"),
    Setting("REDIS_URL", "redis_url", str, None, "Unset: train and re-score in a background thread of this "
            "process. Set (e.g. redis://redis:6379/0): RQ workers do it (docs/operations.md).", group="Scale-out"),
    Setting("MCM_RQ_QUEUE", "rq_queue", str, "mcm", "With REDIS_URL: the RQ queue of the jobs.",
            group="Scale-out"),
    Setting("MCM_SCORE_CHUNK_TASKS", "score_chunk_tasks", int, 5000, "With REDIS_URL: pool tasks per scoring "
            "job; all workers score a project's chunks in parallel.", minimum=1, group="Scale-out"),
    Setting("MCM_REPORT_FOLDS", "report_folds", int, 5, "Folds of the held-out evaluation on the mining report "
            "(/mcm/report): k trainings per model version, run once the version has been current for "
            "MCM_FILL_AFTER_SECONDS or when the report is opened. 0 switches it off.", minimum=0, group="Report"),
    Setting("LOG_LEVEL", "log_level", str, "INFO", "Python logging level."),
)
_BY_FIELD = {s.field: s for s in TABLE}
SCORE_TRANSFORMS = ("linear", "sqrt")
PREFILL_MODES = ("auto", "off")
WEAK_ORDERS = ("novelty", "random", "miner")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# Values docker/.env.example ships for its secrets (and the like): a deployment that kept one is refused.
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "replace-with")
CANDIDATE_SOURCES = ("label-studio", "torchvision")


def _default(field: str) -> Any:
    return _BY_FIELD[field].default


def _parse(setting: Setting, raw: str) -> Any:
    """The environment text of one setting as its Python value, or a ValueError naming it."""
    if setting.kind is tuple:
        return tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    if setting.kind is str:
        return raw.strip().upper() if setting.field == "log_level" else raw.strip()
    if setting.kind is bool:
        value = raw.strip().lower()
        if value not in BOOLEANS:
            raise ValueError(f"{setting.env} must be true or false, got {raw!r}")
        return BOOLEANS[value]
    try:
        return setting.kind(raw)
    except ValueError:
        kind = "an integer" if setting.kind is int else "a number"
        raise ValueError(f"{setting.env} must be {kind}, got {raw!r}") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Parsed, validated settings; build with `Settings.from_env()`. Defaults: TABLE."""

    label_studio_url: str | None = _default("label_studio_url")
    label_studio_api_key: str | None = _default("label_studio_api_key")
    model_dir: str = _default("model_dir")
    backbone: str = _default("backbone")
    backbone_weights: str | None = _default("backbone_weights")
    seed: int = _default("seed")
    cnn_epochs: int = _default("cnn_epochs")
    torch_threads: int = _default("torch_threads")
    miner_options: str = _default("miner_options")   # JSON text (kept as text so Settings stays hashable)
    score_transform: str = _default("score_transform")
    debounce_seconds: float = _default("debounce_seconds")
    retrain_min_interval: float = _default("retrain_min_interval")
    retrain_max_wait: float = _default("retrain_max_wait")
    head_size: int = _default("head_size")
    queue_window: int = _default("queue_window")
    auto_tab: bool = _default("auto_tab")
    fill_after_seconds: float = _default("fill_after_seconds")
    prediction_grace_seconds: float = _default("prediction_grace_seconds")
    pool_relist_seconds: float = _default("pool_relist_seconds")
    maintain_seconds: float = _default("maintain_seconds")
    prefill: str = _default("prefill")
    weak_order: str = _default("weak_order")
    predict_chunk: int = _default("predict_chunk")
    allowed_hosts: tuple[str, ...] = _default("allowed_hosts")
    image_max_bytes: int = _default("image_max_bytes")
    image_timeout: float = _default("image_timeout")
    image_max_pixels: int = _default("image_max_pixels")
    basic_auth_user: str | None = _default("basic_auth_user")
    basic_auth_pass: str | None = _default("basic_auth_pass")
    max_request_bytes: int = _default("max_request_bytes")
    allow_unauthenticated: bool = _default("allow_unauthenticated")
    projects: tuple[str, ...] = _default("projects")
    backend_url: str | None = _default("backend_url")
    connection_ttl: float = _default("connection_ttl")
    detection_candidates: str | None = _default("detection_candidates")
    detector_weights: str | None = _default("detector_weights")
    detection_top_k: int = _default("detection_top_k")
    detection_region_min_confidence: float = _default("detection_region_min_confidence")
    detection_background_boxes: int = _default("detection_background_boxes")
    detection_jittered_boxes: int = _default("detection_jittered_boxes")
    redis_url: str | None = _default("redis_url")
    rq_queue: str = _default("rq_queue")
    score_chunk_tasks: int = _default("score_chunk_tasks")
    report_folds: int = _default("report_folds")
    log_level: str = _default("log_level")

    def __post_init__(self) -> None:
        for setting in TABLE:
            value = getattr(self, setting.field)
            if setting.minimum is not None and value < setting.minimum:
                raise ValueError(f"{setting.env} must be >= {setting.minimum:g}, got {value}")
        if self.prefill not in PREFILL_MODES:
            raise ValueError(f"MCM_PREFILL must be one of {', '.join(PREFILL_MODES)}, got {self.prefill!r}")
        if self.weak_order not in WEAK_ORDERS:
            raise ValueError(f"MCM_WEAK_ORDER must be one of {', '.join(WEAK_ORDERS)}, got {self.weak_order!r}")
        if self.score_transform not in SCORE_TRANSFORMS:
            raise ValueError(f"MCM_SCORE_TRANSFORM must be one of {SCORE_TRANSFORMS}, got {self.score_transform!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        for env, value in (("BASIC_AUTH_PASS", self.basic_auth_pass),
                           ("LABEL_STUDIO_API_KEY", self.label_studio_api_key)):
            if is_placeholder(value):  # the value is not echoed: it may be a real secret after all
                raise ValueError(f"{env} is still an example value (it starts with one of "
                                 f"{', '.join(PLACEHOLDER_PREFIXES)}; docker/.env.example): set a real secret")
        self.project_allow_list  # noqa: B018  (raises a ValueError naming MCM_PROJECTS)
        if self.report_folds == 1:
            raise ValueError("MCM_REPORT_FOLDS must be 0 (off) or at least 2")
        if not self.rq_queue:
            raise ValueError("MCM_RQ_QUEUE must not be empty")
        self.miner_kwargs  # noqa: B018  (raises a ValueError naming MCM_MINER_OPTIONS)
        self.candidate_source  # noqa: B018  (raises a ValueError naming MCM_DETECTION_CANDIDATES)
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
        values = {s.field: _parse(s, env[s.env]) for s in TABLE if env.get(s.env)}
        values.update(overrides)
        return cls(**values)

    @property
    def candidate_source(self) -> tuple[str, str] | None:
        """MCM_DETECTION_CANDIDATES parsed: ("label-studio", model version) or ("torchvision", arch)."""
        if not self.detection_candidates:
            return None
        kind, _, name = self.detection_candidates.partition(":")
        if kind not in CANDIDATE_SOURCES or not name.strip():
            raise ValueError(f"MCM_DETECTION_CANDIDATES must be label-studio:<model_version> or torchvision:<arch>, "
                             f"got {self.detection_candidates!r}")
        return kind, name.strip()

    @property
    def miner_kwargs(self) -> dict:
        """MinorityMiner keyword options: MCM_QUEUE_WINDOW, then MCM_MINER_OPTIONS parsed (which wins)."""
        if not self.miner_options:
            return {"queue_window": self.queue_window}
        try:
            options = json.loads(self.miner_options)
        except ValueError as exc:
            raise ValueError(f"MCM_MINER_OPTIONS is not valid JSON: {exc}") from None
        if not isinstance(options, dict) or {"num_classes", "seed"} & set(options):
            raise ValueError("MCM_MINER_OPTIONS must be a JSON object of MinorityMiner keyword options "
                             "(num_classes and seed are set by the backend)")
        return {"queue_window": self.queue_window, **options}

    @property
    def project_allow_list(self) -> frozenset[int] | None:
        """MCM_PROJECTS as ids, or None when unset (then Label Studio says which projects are connected)."""
        if not self.projects:
            return None
        ids = set()
        for entry in self.projects:
            text = str(entry).strip()
            if not text.isdigit():
                raise ValueError(f"MCM_PROJECTS must be comma-separated project ids (e.g. 1,2,5), got {entry!r}")
            ids.add(int(text))
        return frozenset(ids)

    def project_dir(self, project_id: int) -> str:
        return os.path.join(self.model_dir, str(int(project_id)))


def is_placeholder(value: str | None) -> bool:
    """A secret still set to an example value (change-me..., replace-with-...)."""
    return bool(value) and value.strip().lower().startswith(PLACEHOLDER_PREFIXES)


def _shown(setting: Setting) -> str:
    if setting.kind is bool:
        return "true" if setting.default else "false"
    if setting.default in (None, "", ()):
        return ""
    return ",".join(setting.default) if isinstance(setting.default, tuple) else f"{setting.default:g}" \
        if isinstance(setting.default, float) else str(setting.default)


# name -> (default as text, help): the form the Docker checks read.
SETTINGS_HELP: dict[str, tuple[str | None, str]] = {s.env: (_shown(s) or None, s.help) for s in TABLE}


def settings_help_text() -> str:
    """The settings table as plain text for `--help`."""
    lines = ["environment settings:"]
    for setting in TABLE:
        shown = f" (default: {_shown(setting)})" if _shown(setting) else ""
        lines.append(f"  {setting.env}{shown}\n      {setting.help}")
    return "\n".join(lines)


def settings_markdown() -> str:
    """docs/settings.md: the same table, grouped."""
    out = ["# Settings", "", "Every setting is an environment variable of the backend (and of its RQ workers). "
           "This page is generated from `backend/settings.py` by `python -m backend.settings --markdown`; "
           "`python _wsgi.py --help` prints the same table.", ""]
    for group in dict.fromkeys(s.group for s in TABLE):
        out += [f"## {group}", "", "| Setting | Default | Meaning |", "|---|---|---|"]
        out += [f"| `{s.env}` | {_shown(s) or '-'} | {s.help} |" for s in TABLE if s.group == group]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m backend.settings --markdown   (prints docs/settings.md)")
    print(settings_markdown())
