"""`python -m backend.admin report`: fetch the mining report from the backend and write it to disk.

The backend computes the report (backend/report/source.py); this only waits for its held-out
evaluation, saves the figures, the page and summary.json, and prints the headline figures.
The JSON is not trusted to name files (only the report's fixed figure names are written) nor to
reach the terminal unfiltered (backend_client strips control characters from its strings).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..labelstudio.admin import AdminError, LabelStudioAdmin
from ..report.document import FIGURES
from .backend_client import Backend, backend_fetch, backend_get, configured_backend_url, resolve_backend

REPORT_TIMEOUT = 300.0  # building a report reads the project's export from Label Studio
PENDING = ("queued", "computing")


def report_backend(ls: LabelStudioAdmin | None, args: argparse.Namespace) -> Backend:
    """--url or MCM_BACKEND_URL; else the project's ML backend in Label Studio (never with credentials)."""
    if configured_backend_url(args.url) or ls is None:
        return resolve_backend(args.url, None)
    return resolve_backend(None, ls.connected_backend(ls.project(args.project).id).url)


def figure_names(summary: dict) -> list[str]:
    """The figures to save: the report's fixed names only (a name from the JSON becomes a file name,
    so anything else, `../x` included, is skipped with a warning)."""
    listed = summary.get("figures")
    listed = listed if isinstance(listed, dict) else {}
    for name in listed:
        if name not in FIGURES:
            print(f"warning: ignoring figure {str(name)[:80]!r} listed by the backend (expected one of "
                  f"{', '.join(FIGURES)})")
    return [name for name in FIGURES if name in listed]


def _heldout_status(summary: dict) -> object:
    held = summary.get("heldout")
    return held.get("status") if isinstance(held, dict) else None


def cmd_report(ls: LabelStudioAdmin | None, args: argparse.Namespace) -> int:
    """Fetch the mining report from the backend: figures as PNG, summary.json and the page."""
    backend = report_backend(ls, args)
    params = {"project": args.project}
    summary = backend_get(backend, "/mcm/report", {**params, "format": "json"}, REPORT_TIMEOUT)
    deadline = time.monotonic() + args.wait
    while _heldout_status(summary) in PENDING and time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        summary = backend_get(backend, "/mcm/report", {**params, "format": "json"}, REPORT_TIMEOUT)
    names = figure_names(summary)
    out = Path(args.out or f"mcm-report-{args.project}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        response = backend_fetch(backend, f"/mcm/report/{name}.png", params, REPORT_TIMEOUT)
        (out / f"{name}.png").write_bytes(response.content)
        written.append(f"{name}.png")
    page = backend_fetch(backend, "/mcm/report", params, REPORT_TIMEOUT)
    (out / "report.html").write_text(page.text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    try:
        lines = report_lines(summary)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AdminError(f"the backend's report at {backend.url} lacks an expected field ({type(exc).__name__}: "
                         f"{str(exc)[:80]}); the files were written to {out}") from None
    for line in lines:
        print(line)
    print(f"wrote {', '.join(written + ['report.html'])} and summary.json to {out}")
    return 0


def _share(part: dict | None) -> str:
    return f"{part['share']:.1%} ({part['n_tail']} of {part['n']})" if part else "-"


def report_lines(summary: dict) -> list[str]:
    """The report's headline figures as text."""
    y, held, pool = summary["tail_yield"], summary["heldout"], summary["pool"]
    enabled = summary["ordering"]["enabled_at"] or "unknown"
    lines = [f"project {summary['project']}: {summary['n_labeled_tasks']} labeled tasks, {summary['n_annotations']} "
             f"annotations; tail classes: {', '.join(summary['tail_classes']) or 'none'}; model "
             f"{summary['model_version']}",
             f"  ordering enabled: {enabled}",
             f"  tail yield before: {_share(y.get('before'))}; since: {_share(y.get('after'))}"
             + (f"; all (time unknown): {_share(y.get('unknown'))}" if y.get("unknown") else ""),
             "  expected at random since ordering: "
             + (f"{y['base_rate']:.1%} ({y['base_rate_method']})" if y.get("base_rate") is not None else "-")]
    if held.get("auc_pr") is not None:
        lines.append(f"  held-out AUC-PR ({held['folds']}-fold CV on {held['n_labeled']} labels, {held['n_tail']} tail; "
                     f"{held['evaluated_version']}): miner {held['auc_pr']:.3f}, best uncertainty baseline "
                     f"{held['best_baseline']} {held['best_baseline_auc_pr']:.3f}, random {held['prevalence']:.3f}")
    else:
        lines.append(f"  held-out AUC-PR: {held['status']}" + (f" ({held['message']})" if held.get("message") else ""))
    if pool.get("likely_tail_left") is not None:
        lines.append(f"  likely tail tasks left: {pool['likely_tail_left']} of {pool['n_unlabeled']} unlabeled")
    if summary.get("last_error"):
        lines.append(f"  last error: {summary['last_error']}")
    return lines
