"""The mining report's HTML page: one document, no JavaScript, the figures inlined as PNG data URIs.

One request shows everything, and the page works behind basic auth or saved to a file. Every
value taken from Label Studio (class names, tab titles, errors) is HTML-escaped. The figures are
backend/report/figures.py's.
"""
from __future__ import annotations

import base64
import html
from . import stats
from .document import Report
from .figures import TITLES, heldout_message, png


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#1f3a5f;color:#fff;padding:14px 28px}header h1{margin:0;font-size:21px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}main{padding:16px 28px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(205px,1fr));gap:12px;margin-bottom:16px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .k{font-size:12px;color:#555;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:26px;font-weight:600;margin:4px 0}.card .s{font-size:12px;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(640px,1fr));gap:14px}
figure{margin:0;background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
figure img{width:100%;height:auto;display:block}figcaption{font-size:12.5px;color:#444;padding:6px 6px 2px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0 18px}
td,th{border-bottom:1px solid #e3e3e3;padding:4px 10px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.tail{color:#c0392b;font-weight:600}
.note{font-size:13px;color:#444}.err{color:#b00020}h2{font-size:17px;margin:22px 0 6px}
.card .warn{color:#b00020;font-weight:600;margin-top:6px}
"""


MAX_CARD_CLASSES = 12  # tail classes named in the card; the class table lists them all


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def no_better_than_random(held: dict) -> str | None:
    """The first card's warning when the held-out ranking does not beat random order by a margin."""
    if held.get("better_than_random") is not False:
        return None
    return (f"The ranking is no better than random on this project's own labels: held-out AUC-PR "
            f"{held['auc_pr']:.3f} vs {held['prevalence']:.3f} at random (needs a margin of "
            f"{held.get('random_margin', stats.RANDOM_MARGIN):.2f}). Label more tasks (the tail-first tab still "
            "finds what the model knows), or declare the tail classes (docs/report.md).")


def weak_features(s: dict) -> str | None:
    """The first card's warning when the model's features do not separate the classes (the version's
    reliability verdict, backend/fitting.reliability_meta): its message says what would help."""
    reliability = s.get("reliability")
    if not isinstance(reliability, dict) or reliability.get("verdict") != "weak":
        return None
    return f"Weak model: {reliability.get('message') or 'the features do not separate the classes.'}"


def _base_rate_card(y: dict) -> tuple[str, str, str]:
    """"Expected at random": an estimate with its 95 % interval, or "unknown" with the reason."""
    shown = y.get("base_rate_estimate")
    if shown is None:
        return "Expected at random (estimate)", "unknown", y.get("base_rate_method") or ""
    sub = f"estimate, 95 % interval {_pct(shown['low'])}-{_pct(shown['high'])}: {shown['method']}"
    if y.get("lift_after"):
        sub += f"; yield / estimate: x{y['lift_after']:.1f}"
    return "Expected at random (estimate)", _pct(shown["value"]), sub


def _cards(s: dict) -> str:
    y, held, pool = s["tail_yield"], s["heldout"], s["pool"]
    after, before = y.get("after"), y.get("before")
    cards = []
    warning = " ".join(w for w in (weak_features(s), no_better_than_random(held)) if w) or None
    if after:
        sub = f"{after['n_tail']} of {after['n']} labeled since ordering"
        if before:
            sub += f"; before: {_pct(before['share'])} ({before['n_tail']} of {before['n']})"
        cards.append(("Tail yield since ordering", _pct(after["share"]), sub, warning))
    else:
        whole = y.get("unknown") or before
        note = "ordering time unknown" if s["ordering"]["enabled_at"] is None else "nothing labeled since ordering"
        cards.append(("Tail yield", _pct(whole["share"]) if whole else "–", note, warning))
    cards.append(_base_rate_card(y))
    if held.get("auc_pr") is not None:
        stale = "" if held.get("evaluated_version") == held.get("version") else \
            f" (from {held.get('evaluated_version')}; {held.get('version')} is being computed)"
        cards.append(("Held-out AUC-PR", f"{held['auc_pr']:.3f}",
                      f"best uncertainty baseline ({held.get('best_baseline')}): {held.get('best_baseline_auc_pr'):.3f}; "
                      f"random: {held.get('prevalence'):.3f}{stale}"))
    elif held.get("status") in ("computing", "queued", "not requested"):
        cards.append(("Held-out AUC-PR", "…", heldout_message(held)[1]))
    else:  # too little data, unsupported, disabled, failed: say which, never "being computed"
        cards.append(("Held-out AUC-PR", "–", held.get("message") or heldout_message(held)[1]))
    left = pool.get("likely_tail_left")
    cards.append(("Likely tail tasks left", "–" if left is None else str(left),
                  f"of {pool.get('n_unlabeled')} unlabeled (held-out precision >= {stats.PRECISION_TARGET:.0%})"
                  if left is not None else "needs the held-out evaluation"))
    tails = s["tail_classes"]
    shown = ", ".join(tails[:MAX_CARD_CLASSES]) + (f" and {len(tails) - MAX_CARD_CLASSES} more (table below)"
                                                    if len(tails) > MAX_CARD_CLASSES else "")
    cards.append(("Tail classes", shown or "none", f"of {len(s['classes'])} classes; {s.get('tail_rule') or ''}"))
    cards.append(("Labeled", str(s["n_labeled_tasks"]), f"tasks; {s['n_annotations']} annotations"))
    return "".join(f'<div class="card"><div class="k">{_e(card[0])}</div><div class="v">{_e(card[1])}</div>'
                   f'<div class="s">{_e(card[2])}</div>'
                   + (f'<div class="s warn">{_e(card[3])}</div>' if len(card) > 3 and card[3] else "") + "</div>"
                   for card in cards)


CAPTIONS = {
    "tail_yield": "Each bar is a run of up to {size} consecutive labeled tasks (a run never spans the moment "
                  "ordering was enabled); its height is the share labeled with a class that was a tail class then "
                  "(of the model ordering the queue). The dashed line, when drawn, is an estimate of what random "
                  "order would have yielded since ordering was enabled ({method}); it is left out when that is "
                  "not known to within +-50 %.",
    "classes": "Tasks labeled per class as labeling went on. Thick lines: the tail classes of the current model "
               "(declared by the admin with mcm_tail=\"true\" in the label config, or counted: skewness ratio "
               "r = count / mean count below 0.3 with a count improbable by chance, or never labeled; a counted "
               "class stays tail until it has as many labels as an average class).",
    "precision_recall": "Each labeled task scored by a model that never saw it ({folds}-fold stratified "
                        "cross-validation, seed {seed}; for simple-cnn each fold also retrains the CNN). Positives: "
                        "the tail classes. Baselines: {source}. AUC-PR is average precision; random order scores "
                        "the prevalence. Tail tasks labeled from the tail-first queue were picked by the miner "
                        "itself and are easier to find than the tail left in the pool: read it as an upper bound.",
    "pool_scores": "The scores the tab sorts the unlabeled tasks by (log scale above 10 tasks per bar when "
                   "bars are tall). Likely tail tasks left: unlabeled tasks that "
                   "the cross-validation's fold models score at or above the lowest score at which their held-out "
                   "precision was still {target:.0%} (same models, same scale); red: as many tasks from the top "
                   "of the tab. An estimate: held-out rows are labeled tasks, whose tail share differs from the "
                   "pool's.",
    "versions": "Per version: training time, then re-scoring the pool and pushing the head of the queue; the line "
                "is how many labeled tasks it learned from.",
}


def _caption(name: str, s: dict) -> str:
    held = s["heldout"]
    text = CAPTIONS[name].format(size=stats.BUCKET_SIZE, method=s["tail_yield"].get("base_rate_method") or "n/a",
                                 folds=held.get("folds", "k"), seed=held.get("seed", "-"),
                                 source=held.get("baseline_source") or "uncertainty scores of a softmax head",
                                 target=stats.PRECISION_TARGET)
    return _e(text)


def _tail_kind(c: str, s: dict) -> str:
    if c not in s["tail_classes"]:
        return ""
    return "tail (declared)" if c in (s.get("tail_declared") or ()) else "tail (counted)"


def _class_table(s: dict) -> str:
    model_counts = (s.get("model") or {}).get("labeled_per_class") or {}
    rows = "".join(
        f'<tr><td{" class=tail" if c in s["tail_classes"] else ""}>{_e(c)}</td><td>{s["labeled_per_class"][c]}</td>'
        f'<td>{s["skewness_ratio"][c]:.2f}</td><td>{_e(model_counts.get(c, "–"))}</td>'
        f'<td>{_tail_kind(c, s)}</td><td>{"tail" if c in s["tail_classes_now"] else ""}</td></tr>'
        for c in s["classes"])
    return ("<table><tr><th>class</th><th>labeled now</th><th>skewness ratio</th><th>in the current model</th>"
            f"<th>tail (model)</th><th>tail (labels now)</th></tr>{rows}</table>")


def _versions_table(s: dict, limit: int = 15) -> str:
    def num(v, fmt="{:.1f}"):
        return "–" if v is None else fmt.format(v)

    rows = "".join(
        f"<tr><td>{_e(r['version'])}{' (current)' if r['current'] else ''}</td><td>{_e(r['trained_at'])}</td>"
        f"<td>{_e(r['n_labeled'])}</td><td>{num(r['train_seconds'])}</td><td>{num(r['rescore_seconds'])}</td>"
        f"<td>{_e(r['published_at'] or '–')}</td><td>{_e(', '.join(r.get('tail_classes') or []))}</td></tr>"
        for r in reversed(s["versions"][-limit:]))
    return ("<table><tr><th>version</th><th>trained at (UTC)</th><th>labeled</th><th>training s</th>"
            "<th>re-scoring s</th><th>published at (UTC)</th><th>tail classes</th></tr>" + rows + "</table>")


def render_html(rep: Report) -> str:
    s = rep.summary
    pid = rep.project_id
    ordering = s["ordering"]
    when = (f"ordering enabled {ordering['enabled_at']} (tab “{ordering['tab']}”)" if ordering["enabled_at"]
            else f"ordering enabled: {ordering['note']}")
    figures = []
    for name, state in s["figures"].items():
        data = base64.b64encode(png(rep, name)).decode("ascii")
        alt = TITLES[name] + ("" if state["status"] == "ok" else f": {state['message']}")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
                       f"<figcaption>{_caption(name, s)}</figcaption></figure>")
    error = f'<p class="err">Last error: {_e(s["last_error"])}</p>' if s.get("last_error") else \
        '<p class="note">Last error: none.</p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>Mining report: project {pid}'
        f"</title><style>{STYLE}</style></head><body><header><h1>Minority-class mining report — project {pid}"
        f"</h1><p>model {_e(s['model_version'] or 'none yet')} · Label Studio orders by {_e(s['published_version'])}"
        f" · {_e(when)} · generated {_e(s['generated_at'])}</p></header><main>"
        f'<section class="cards">{_cards(s)}</section><section class="grid">{"".join(figures)}</section>'
        f"<h2>Classes</h2>{_class_table(s)}<h2>Model versions</h2>{error}{_versions_table(s)}"
        f'<p class="note">The same numbers as JSON: <a href="?project={pid}&amp;format=json">?format=json</a>; '
        f"each figure as PNG: /mcm/report/&lt;figure&gt;.png?project={pid} "
        f"({', '.join(s['figures'])}). How every number is computed: docs/report.md.</p>"
        "</main></body></html>")
