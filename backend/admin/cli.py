"""Admin command: connect the backend to a Label Studio project and switch tail-first ordering on.

Why a command: the steps that make a person see rare-class tasks first are easy to get subtly
wrong in the UI (loopback blocked, the annotation webhook without credentials, sorting by score
doing nothing because `project.model_version` is the backend's title). This does them in order
and checks each one.

    python -m backend.admin [--ls-url URL] [--api-key KEY] COMMAND --project N ...

Commands: connect, enable-ordering, tail-classes, retrain, status, report. Every failure prints one line naming the
cause (Label Studio unreachable, bad token, unknown project, backend not connected) and exits 1.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any, Sequence

from ..label_config import LabelConfigError, declare_tail, parse_label_config
from ..labelstudio import client as labelstudio
from ..labelstudio import tabs as tabs_mod
from ..labelstudio.admin import AdminError, LabelStudioAdmin, clean_json, clean_text
from ..labelstudio.tabs import VIEW_TITLE
from .backend_client import (Backend, backend_get, backend_status, basic_auth_from_env, configured_backend_url,
                             resolve_backend)
from .report import cmd_report

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
SEQUENTIAL_SAMPLING = "Sequential sampling"


# ----------------------------------------------------------------------------- commands
def cmd_connect(ls: LabelStudioAdmin, args: argparse.Namespace) -> int:
    project = ls.project(args.project)
    backend_url = args.url.rstrip("/")
    auth = basic_auth_from_env()
    backend_get(Backend(backend_url, auth), "/health")  # fail early with a clear line when the backend is down
    fields: dict[str, Any] = dict(url=backend_url, project=project.id, title=args.title, is_interactive=False)
    if auth:
        fields.update(auth_method="BASIC_AUTH", basic_auth_user=auth[0], basic_auth_pass=auth[1])
    existing = [b for b in ls.ml_backends(project.id) if (b.url or "").rstrip("/") == backend_url]
    if existing:
        ml = ls.call("updating the ML backend", ls.client.ml.update, id=existing[0].id, **fields)
        print(f"ML backend {ml.id} already registered for project {project.id}: settings updated")
    else:
        ml = ls.call(f"registering the ML backend {backend_url} (Label Studio must reach it: for a loopback "
                     "backend start Label Studio with ML_BLOCK_LOCAL_IP=false USE_DEFAULT_BANNED_SUBNETS=false)",
                     ls.client.ml.create, **fields)
        print(f"registered ML backend {ml.id} ({backend_url}) for project {project.id} '{clean_text(project.title)}'")

    # Label Studio creates a webhook <backend>/webhook for annotation events when the backend is
    # registered; it does not carry the basic-auth credentials (only START_TRAINING does).
    hook_url = backend_url + "/webhook"
    hooks = [h for h in ls.call("listing webhooks", ls.client.webhooks.list, project=str(project.id)) or []
             if (h.url or "").rstrip("/") == hook_url]
    if not hooks:
        raise AdminError(f"Label Studio did not create the annotation webhook {hook_url} for project "
                         f"{project.id}: annotations will not trigger training")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        for hook in hooks:
            headers = dict(hook.headers or {})
            headers["Authorization"] = f"Basic {token}"
            ls.call("adding basic auth to the annotation webhook", ls.client.webhooks.update,
                    id=hook.id, url=hook.url, headers=headers)
        print(f"annotation webhook {hook_url} now sends basic auth")
    else:
        print(f"annotation webhook {hook_url} active (no basic auth configured)")

    # The Model page's "Start model training on annotation submission" is what triggers training:
    # Label Studio then sends START_TRAINING after every N annotations (the backend paces them).
    ls.raw("PATCH", f"api/projects/{project.id}/", "switching training on annotation submission",
           json={"min_annotations_to_start_training": args.train_every})
    if args.train_every:
        print(f"training on annotation submission: ON (Label Studio asks for a training every {args.train_every} "
              "annotation(s); the backend trains at most once per MCM_RETRAIN_MIN_INTERVAL)")
    else:
        print("training on annotation submission: OFF (train with the Start Training button or `retrain`)")
    print("next: the backend trains on the labels already there (or on the first submissions) and creates the "
          f"'{VIEW_TITLE}' tab with its first model (unless MCM_AUTO_TAB=false); `python -m backend.admin "
          f"enable-ordering --project {project.id}` creates or re-points it (--lanes N: one tab per annotator)")
    return 0


def newest_prediction_version(ls: LabelStudioAdmin, project_id: int, preferred: str | None) -> tuple[str, int]:
    """The version `project.model_version` should point to, and how many predictions it has.

    The backend's current version wins when Label Studio holds predictions of it; otherwise
    the version with the most recent prediction.
    """
    versions = ls.model_versions(project_id)
    if not versions:
        raise AdminError(f"project {project_id} has no predictions yet: wait for training to finish "
                         f"(`status --project {project_id}`) or start it with `retrain`")
    counts = {v["model_version"]: int(v.get("count") or 0) for v in versions}
    if preferred and counts.get(preferred):
        return preferred, counts[preferred]
    return versions[0]["model_version"], int(versions[0].get("count") or 0)


def backend_of(ml: Any, url: str | None) -> Backend:
    """The backend to ask for its status: --url / MCM_BACKEND_URL (with the credentials), else the URL
    Label Studio stores for the project's ML backend (without them; refused when they are set)."""
    return resolve_backend(url, ml.url)


def cmd_enable_ordering(ls: LabelStudioAdmin, args: argparse.Namespace) -> int:
    project = ls.project(args.project)
    ml = ls.connected_backend(project.id)
    status: dict | None = None
    try:
        status = backend_status(backend_of(ml, args.url), project.id)
    except AdminError as exc:
        print(f"warning: could not read the backend's status ({exc}); using Label Studio's newest predictions")
    version, count = newest_prediction_version(ls, project.id, (status or {}).get("model_version"))
    shown_old, shown_new = clean_text(repr(project.model_version)), clean_text(repr(version))
    if project.model_version != version:
        ls.call("setting project.model_version", ls.client.projects.update, id=project.id, model_version=version)
        print(f"project.model_version: {shown_old} -> {shown_new} ({count} predictions)")
    else:
        print(f"project.model_version already {shown_new} ({count} predictions)")

    tabs = [tabs_mod.tab_data(args.view_title)]
    if args.lanes > 1:
        unlabeled = [t["id"] for t in labelstudio.list_unlabeled_tasks(ls.client, project.id)]
        try:
            lanes = tabs_mod.lane_filters(unlabeled, args.lanes)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        tabs += [tabs_mod.tab_data(tabs_mod.lane_title(args.view_title, i + 1, args.lanes), item)
                 for i, item in enumerate(lanes)]
    results = tabs_mod.upsert_tabs(ls, project.id, tabs, stale_prefix=f"{args.view_title} - lane ")
    for data, (view, created) in zip(tabs, results):
        print(f"{'created' if created else 'updated'} Data Manager tab '{data['title']}' (view {view.id}): "
              "unlabeled tasks, highest prediction score (likely tail class) first")
    if project.sampling == UNCERTAINTY_SAMPLING:
        # It serves the LOWEST score first (the common classes here) and the open-source UI cannot show it.
        ls.call("resetting project sampling", ls.client.projects.update, id=project.id, sampling=SEQUENTIAL_SAMPLING)
        print(f"project sampling: {UNCERTAINTY_SAMPLING!r} -> {SEQUENTIAL_SAMPLING!r} (Uncertainty sampling would "
              "serve the lowest scores, i.e. the common classes, first)")
    which = (f"each their own '{args.view_title} - lane K of {args.lanes}' tab" if args.lanes > 1 else
             f"the '{args.view_title}' tab")
    print(f"Annotators: open {which} in the project's Data Manager and click 'Label Tasks As Displayed' (in the "
          "menu next to 'Label All Tasks', which ignores the tab's order).")
    if args.lanes > 1:
        print("Lanes: Label Studio serves a tab's first task to everyone who opens that tab, so annotators "
              "working at the same time must use different lanes.")
    print("After each training the backend re-points project.model_version itself and the tab re-orders; "
          "reload an open Data Manager page to see the new order.")
    return 0


def cmd_tail_classes(ls: LabelStudioAdmin, args: argparse.Namespace) -> int:
    """Show, or set, the classes the admin hunts: stored in the project's label config as
    mcm_tail="true" on their <Choice>/<Label> (visible and editable in Settings > Labeling Interface)."""
    project = ls.project(args.project)
    try:
        config = parse_label_config(project.label_config or "")
        if args.set is not None or args.only_declared:
            names = [n.strip() for n in (args.set or ",".join(config.declared_tail)).split(",") if n.strip()]
            edited = declare_tail(project.label_config, names, count_rule=not args.only_declared)
            if edited != project.label_config:
                ls.call("saving the label config", ls.client.projects.update, id=project.id, label_config=edited)
            config = parse_label_config(edited)
    except LabelConfigError as exc:
        raise AdminError(str(exc)) from None
    declared = ", ".join(clean_text(c) for c in config.declared_tail) or "none"
    print(f"declared tail classes: {declared}; the count rule "
          f"{'also adds classes rare beyond chance' if config.count_tail else 'is off (declared classes only)'}")
    if args.set is not None or args.only_declared:
        print("The next training uses them (Start Training on the Model page, or `python -m backend.admin retrain "
              f"--project {project.id}`).")
    return 0


def cmd_retrain(ls: LabelStudioAdmin, args: argparse.Namespace) -> int:
    project = ls.project(args.project)
    ml = ls.connected_backend(project.id)
    ls.call(f"requesting training from ML backend {ml.id}", ls.client.ml.train, id=ml.id)
    print(f"training requested from {clean_text(ml.url)} for project {project.id}; "
          f"follow it with `python -m backend.admin status --project {project.id}`")
    return 0


def collect_status(ls: LabelStudioAdmin, project_id: int, url: str | None = None) -> dict:
    """Label Studio's and the backend's view of the project; every string cleaned for printing."""
    project = ls.project(project_id)
    ml = ls.connected_backend(project.id)
    try:
        backend = backend_status(backend_of(ml, url), project.id)
    except AdminError as exc:
        backend = {"error": str(exc)}
    versions = ls.model_versions(project.id)
    return clean_json({
        "label_studio": {
            "url": ls.url,
            "project": project.id,
            "title": project.title,
            "tasks": getattr(project, "task_number", None),
            # finished_task_number counts imported annotations too (num_tasks_with_annotations does not)
            "labeled_tasks": getattr(project, "finished_task_number", None),
            "model_version": project.model_version,
            "sampling": project.sampling,
            "train_every_n_annotations": getattr(project, "min_annotations_to_start_training", None),
            "predictions_per_version": {v["model_version"]: v.get("count") for v in versions},
            "ml_backend": {"id": ml.id, "url": ml.url, "state": getattr(ml, "state", None)},
        },
        "backend": backend,
    })


def cmd_status(ls: LabelStudioAdmin, args: argparse.Namespace) -> int:
    info = collect_status(ls, args.project, args.url)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    lsi, be = info["label_studio"], info["backend"]
    print(f"Label Studio {lsi['url']} project {lsi['project']} '{lsi['title']}': {lsi['tasks']} tasks, "
          f"{lsi['labeled_tasks']} labeled; sampling {lsi['sampling']!r}")
    print(f"  project.model_version: {lsi['model_version']!r}")
    every = lsi.get("train_every_n_annotations")
    print("  training on annotation submission: " + (f"ON (every {every} annotation(s))" if every else
                                                     "OFF (Start Training button / `retrain` only)"))
    print("  predictions per version: " + (", ".join(f"{k}={v}" for k, v in lsi["predictions_per_version"].items())
                                          or "none"))
    print(f"  ML backend {lsi['ml_backend']['id']}: {lsi['ml_backend']['url']} (state {lsi['ml_backend']['state']})")
    if "error" in be:
        print(f"backend: {be['error']}")
        return 1
    print(f"backend model version: {be.get('model_version')!r} (trained at {be.get('trained_at')}; "
          f"training now: {be.get('training')})")
    print(f"  labeled: {be.get('n_labeled')}; per class: "
          + ", ".join(f"{k}={v}" for k, v in sorted((be.get("labeled_per_class") or {}).items())))
    print(f"  tail classes: {', '.join(map(str, be.get('tail_classes') or [])) or 'none detected'}")
    print(f"  tasks scored: {be.get('n_scored')}")
    if be.get("last_error"):
        print(f"  last error: {be['last_error']}")
    if be.get("model_version") and lsi["model_version"] != be.get("model_version"):
        print(f"  note: project.model_version differs from the backend's version; run "
              f"`enable-ordering --project {lsi['project']}` so sorting by score uses the new predictions")
    return 0


# ----------------------------------------------------------------------------- entry point
BACKEND_URL_HELP = ("backend URL to read its status from, with BASIC_AUTH_USER/BASIC_AUTH_PASS (default: "
                    "$MCM_BACKEND_URL, else the ML backend URL stored in Label Studio, contacted without credentials)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.admin",
        description="Connect the minority-class mining backend to Label Studio and put the tail first.")
    parser.add_argument("--ls-url", default=os.environ.get("LABEL_STUDIO_URL"),
                        help="Label Studio URL (default: $LABEL_STUDIO_URL)")
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                        help="Label Studio token (default: $LABEL_STUDIO_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("connect", help="register the backend for a project (basic auth from "
                       "BASIC_AUTH_USER/BASIC_AUTH_PASS, also on the annotation webhook)")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--url", required=True, help="backend URL as Label Studio reaches it, e.g. http://127.0.0.1:9090")
    p.add_argument("--title", default="Minority-class mining", help="ML backend title shown in Label Studio")
    p.add_argument("--train-every", type=int, default=1, metavar="K",
                   help="Label Studio asks for a training after every K annotations (the Model page's 'Start model "
                   "training on annotation submission'); 0 switches it off. Default: 1")
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("enable-ordering", help=f"create/update the '{VIEW_TITLE}' tab and point "
                       "project.model_version at the newest predictions")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--view-title", default=VIEW_TITLE)
    p.add_argument("--lanes", type=int, default=1, metavar="N",
                   help="also create N tabs over disjoint shares of the unlabeled tasks, one per annotator working "
                   "at the same time (Label Studio serves a tab's first task to everyone on it). Default: 1")
    p.add_argument("--url", default=None, help=BACKEND_URL_HELP)
    p.set_defaults(func=cmd_enable_ordering)

    p = sub.add_parser("tail-classes", help="show or declare the classes to hunt (stored in the label config as "
                                            "mcm_tail=\"true\"; the count rule still adds others unless "
                                            "--only-declared)")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--set", default=None, metavar="A,B", help="comma-separated class names to declare tail "
                   "(replaces the current declaration; '' clears it)")
    p.add_argument("--only-declared", action="store_true", help="no class becomes tail by its counts alone")
    p.set_defaults(func=cmd_tail_classes)

    p = sub.add_parser("retrain", help="ask the connected backend to train now")
    p.add_argument("--project", type=int, required=True)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("report", help="the mining report (tail yield, classes over time, held-out ranking quality, "
                       "pool scores, versions) as PNG files, summary.json and report.html, fetched from the backend")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default: ./mcm-report-<project>)")
    p.add_argument("--url", default=None, help="backend URL (default: $MCM_BACKEND_URL, else the ML backend "
                   "connected to the project in Label Studio, which never gets the basic-auth credentials; with "
                   "--url or $MCM_BACKEND_URL, Label Studio is not contacted)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the held-out evaluation if it is being computed")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="model version, labeled per class, tail classes, last training, scored tasks")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--url", default=None, help=BACKEND_URL_HELP)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "train_every", 0) < 0:
        parser.error("--train-every must be >= 0")
    if getattr(args, "lanes", 1) < 1:
        parser.error("--lanes must be >= 1")
    if getattr(args, "wait", 0.0) < 0:
        parser.error("--wait must be >= 0")
    try:
        # `report` with --url / MCM_BACKEND_URL talks to the backend only (Label Studio may not be reachable).
        ls = None if args.command == "report" and configured_backend_url(args.url) else \
            LabelStudioAdmin(args.ls_url, args.api_key)
        return args.func(ls, args)
    except AdminError as exc:
        print(f"error: {clean_text(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
