"""The mining report's figures: matplotlib, rendered on the server as PNG.

A figure without enough data is still drawn, with a message saying what is missing, so the page
layout and the files `admin report` writes stay the same; one that fails to draw becomes such a
message too (logged), never a 500.

Text is drawn literally: class names come from Label Studio, and matplotlib would read `$...$` in
them as mathtext (an unbalanced one raises). Every title, axis label, legend entry and text of ours
has parse_math and usetex off (`_literal`), and no tick formatter here emits mathtext.

No lock: figures use matplotlib's object API (Figure + FigureCanvasAgg, no pyplot state), each
render owns its figure and renderer, matplotlib keeps its font objects per thread, and mathtext (whose
parser is shared) is never used; so projects render in parallel (`png` renders each figure of a
report once).
"""
from __future__ import annotations

import io
import logging
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, PercentFormatter

from . import stats
from .document import Report

logger = logging.getLogger(__name__)

SIZE = (7.6, 4.3)
DPI = 110
PHASE_COLORS = {"before": "#9a9a9a", "after": "#1f77b4", "unknown": "#8064a2"}
MINER_COLOR, BASELINE_COLOR, RATE_COLOR, TAIL_COLOR = "#1f77b4", "#e07b00", "#d62728", "#c0392b"
MAX_VERSIONS_PLOTTED = 60
MAX_NAMED_CLASSES = 12      # lines with a legend entry in `classes`; the others share one "other" entry
MAX_TITLE_CLASSES = 3       # tail class names spelled out in a title (the legend lists more)
TITLES = {
    "tail_yield": "Tail yield: share of tail-class labels",
    "classes": "Labeled tasks per class",
    "precision_recall": "Ranking quality on held-out labeled tasks",
    "pool_scores": "Scores of the unlabeled pool",
    "versions": "Model versions",
}


# ------------------------------------------------------------------------------ what each figure can show
def figure_states(rep: Report) -> dict[str, dict]:
    """Per figure: {"status": "ok" | "too_little_data" | "computing" | ..., "message"}."""
    held = rep.summary["heldout"]
    states = {
        "tail_yield": ("ok", None) if rep.events and rep.tail else
        ("too_little_data", "no labeled task yet" if not rep.events else
         "no tail class yet: every labeled class has at least 0.3 x the mean class count"),
        "classes": ("ok", None) if rep.events else ("too_little_data", "no labeled task yet"),
        "precision_recall": ("ok", None) if rep.heldout else heldout_message(held),
        "pool_scores": ("ok", None) if rep.pool_scores is not None and len(rep.pool_scores) else
        ("too_little_data", "no ranking of the unlabeled pool yet (train a model first)" if rep.pool_scores is None
         else "no unlabeled task left"),
        "versions": ("ok", None) if rep.versions else ("too_little_data", "no model version trained yet"),
    }
    return {name: {"status": s, "message": m} for name, (s, m) in states.items()}


def heldout_message(held: dict) -> tuple[str, str]:
    status = held.get("status")
    if status in ("computing", "queued", "not requested"):
        extra = f" ({held['message']})" if held.get("message") and held["message"] != "queued" else ""
        return "computing", f"being computed for {held.get('version')}{extra}: reload in a minute"
    return status or "too_little_data", held.get("message") or "not available"


# ------------------------------------------------------------------------------ rendering
def _new_figure():

    fig = Figure(figsize=SIZE, dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def _png(fig) -> bytes:

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _message_figure(title: str, status: str, message: str):
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=12, loc="left")
    heading = {"computing": "Being computed", "queued": "Being computed", "too_little_data": "Not enough data yet",
               "failed": "Could not be computed", "disabled": "Switched off"}.get(status, "Not available")
    ax.text(0.5, 0.56, heading, ha="center", va="bottom", fontsize=15, fontweight="bold", color="#444444",
            transform=ax.transAxes)
    ax.text(0.5, 0.5, "\n".join(_wrap(message, 64)), ha="center", va="top", fontsize=11, color="#555555",
            transform=ax.transAxes, bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"})
    return fig


def _literal(fig) -> None:
    """Every text of ours in `fig` drawn as is: no mathtext (`$`), no LaTeX. Tick labels are left alone
    (ours are numbers, version numbers and times, and their formatters emit no mathtext)."""
    for ax in fig.axes:
        texts = [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None),
                 ax.xaxis.label, ax.yaxis.label, *ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
        for text in texts:
            if text is not None:
                text.set_parse_math(False)
                text.set_usetex(False)


def _names(names: list[str], limit: int = MAX_TITLE_CLASSES) -> str:
    """At most `limit` names, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def _percent(ax) -> None:

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _enabled_line(ax, x: float, rep: Report) -> None:
    """The moment ordering was enabled, as a dotted line with its own legend entry."""
    when = stats.iso(rep.enabled_at)[:16].replace("T", " ")
    ax.axvline(x, color="#333333", linestyle=":", linewidth=1.5, label=f"ordering enabled ({when} UTC)")


def _fig_tail_yield(rep: Report):
    """One bar per run of labeled tasks (equal widths, so a short run since ordering stays visible)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = {"before": "before ordering", "after": "since ordering (tail first)", "unknown": "ordering time unknown"}
    shown = set()
    for i, b in enumerate(rep.buckets):
        label = names[b["phase"]]
        ax.bar(i, b["share"], width=0.82, color=PHASE_COLORS[b["phase"]], label=None if label in shown else label)
        shown.add(label)
        if len(rep.buckets) <= 30:
            ax.text(i, b["share"], f"{b['n_tail']}/{b['n']}", ha="center", va="bottom", fontsize=7, color="#333333")
    y = rep.summary["tail_yield"]
    rate = y.get("base_rate")
    if rate is not None:
        ax.axhline(rate, color=RATE_COLOR, linestyle="--", linewidth=1.4,
                   label=f"expected at random since ordering: {rate:.1%}")
    first_after = next((i for i, b in enumerate(rep.buckets) if b["phase"] == "after"), None)
    if rep.enabled_at is not None:
        _enabled_line(ax, (len(rep.buckets) if first_after is None else first_after) - 0.5, rep)
    ticks = list(range(0, len(rep.buckets), max(1, len(rep.buckets) // 12)))
    ax.set_xticks(ticks, [f"{rep.buckets[i]['start'] + 1}" for i in ticks], fontsize=8)
    ax.set_xlim(-0.6, len(rep.buckets) - 0.4)
    top = max([b["share"] for b in rep.buckets] + [rate or 0])
    ax.set_ylim(0, min(1.12, top * 1.25 + 0.05))
    _percent(ax)
    ax.set_ylabel("tail-class share of the run")
    ax.set_xlabel(f"runs of up to {stats.BUCKET_SIZE} labeled tasks, oldest first (number of the run's first "
                  "labeled task)")
    parts = []
    for key, name in (("before", "before"), ("after", "since"), ("unknown", "all")):
        p = y.get(key)
        if p:
            parts.append(f"{name}: {p['share']:.1%} ({p['n_tail']} of {p['n']})")
    ax.set_title(TITLES["tail_yield"] + " — " + "; ".join(parts), fontsize=10, loc="left")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.92)
    ax.grid(axis="y", alpha=0.3)
    return fig


TAIL_LINE_COLORS = ("#d62728", "#8e44ad", "#e67e22", "#8c564b", "#c2185b", "#2e7d32")


def named_classes(rep: Report) -> list[str]:
    """The classes drawn with their own line colour and legend entry: the tail classes, then the most
    labeled others, MAX_NAMED_CLASSES in all (all of them when only one more would be left over)."""
    counts = rep.summary["labeled_per_class"]
    if len(rep.classes) <= MAX_NAMED_CLASSES + 1:
        return list(rep.classes)
    by_count = sorted(rep.classes, key=lambda c: (c not in rep.tail, -counts.get(c, 0), c))
    return by_count[:MAX_NAMED_CLASSES]


def _steps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The vertices of a step line that holds each y until the next x (matplotlib's steps-post)."""
    xs = np.repeat(x, 2)[1:]
    ys = np.repeat(y, 2)[:-1]
    return np.column_stack([xs, ys])


def _fig_classes(rep: Report):
    """Cumulative labels per class; beyond MAX_NAMED_CLASSES, the other classes are thin grey lines
    under one legend entry (2,000 legend entries took 13 s to lay out and could not be read)."""

    fig = _new_figure()
    ax = fig.add_subplot()
    steps = stats.class_steps(rep.events, rep.classes)
    counts, ratios = rep.summary["labeled_per_class"], rep.summary["skewness_ratio"]
    named = named_classes(rep)
    heads = [c for c in named if c not in rep.tail]
    blues = colormaps["Blues"]
    others = [c for c in rep.classes if c not in set(named)]
    if others:
        ax.add_collection(LineCollection([_steps(*steps[c]) for c in others], colors="#b8b8b8", linewidths=0.6,
                                         zorder=1))
    for name in named:
        is_tail = name in rep.tail
        color = TAIL_LINE_COLORS[rep.tail.index(name) % len(TAIL_LINE_COLORS)] if is_tail else \
            blues(0.4 + 0.5 * heads.index(name) / max(1, len(heads) - 1))
        ax.step(*steps[name], where="post", color=color, linewidth=2.8 if is_tail else 1.0,
                zorder=3 if is_tail else 2,
                label=f"{name[:18]}: {counts[name]} (r={ratios[name]:.2f}{', tail' if is_tail else ''})")
    if rep.enabled_at is not None:
        index = next((i for i, e in enumerate(rep.events) if e.at >= rep.enabled_at), len(rep.events))
        _enabled_line(ax, index + 0.5, rep)
    handles, labels = ax.get_legend_handles_labels()
    if others:
        n_tail = sum(1 for c in others if c in rep.tail)
        handles.append(Line2D([], [], color="#b8b8b8", linewidth=0.6))
        labels.append(f"other ({len(others)} classes" + (f", {n_tail} tail)" if n_tail else ")"))
    ax.set_xlim(0, max(1, len(rep.events)))
    ax.set_ylim(0, max([int(y[-1]) for _x, y in steps.values()] + [1]) * 1.05)
    ax.set_xlabel("labeled tasks, in the order they were first annotated")
    ax.set_ylabel("labeled tasks of the class (cumulative)")
    ax.set_title(f"{TITLES['classes']} — tail classes (thick): {_names(rep.tail) or 'none'}; r = count / mean "
                 "count, tail if r < 0.3", fontsize=10, loc="left")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _fig_precision_recall(rep: Report):
    held = rep.heldout
    fig = _new_figure()
    ax = fig.add_subplot()
    curves = [("miner (MinorityMiner)", held["miner"], MINER_COLOR, 2.4)]
    best = held.get("best_baseline")
    if best:
        curves.append((f"best uncertainty baseline: {best}", held["baselines"][best], BASELINE_COLOR, 1.8))
    for name, part, color, width in curves:
        c = part["curve"]
        ax.step(c["recall"], c["precision"], where="post", color=color, linewidth=width,
                label=f"{name}, AUC-PR {part['auc_pr']:.3f}")
    ax.axhline(held["prevalence"], color="#777777", linestyle="--", linewidth=1.2,
               label=f"random order (tail prevalence {held['prevalence']:.1%})")
    threshold = held.get("threshold")
    if threshold:
        ax.plot([threshold["recall"]], [threshold["precision"]], "o", color=RATE_COLOR, markersize=7,
                label=f"lowest score with precision >= {threshold['target']:.0%}: {threshold['score']:.3f}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall of held-out tail-class tasks")
    ax.set_ylabel("precision (share of tail among tasks above a score)")
    _percent(ax)

    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title(f"{TITLES['precision_recall']} — {held.get('folds')}-fold CV, {held.get('n_tail')} tail of "
                 f"{held.get('n_labeled')} ({held.get('version')})", fontsize=10, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _fig_pool_scores(rep: Report):

    fig = _new_figure()
    ax = fig.add_subplot()
    pool = rep.summary["pool"]
    edges = np.asarray(pool["histogram"]["edges"])
    counts = np.asarray(pool["histogram"]["counts"])
    cut, left = pool.get("queue_score_at_likely"), pool.get("likely_tail_left")
    likely = np.asarray(pool.get("histogram_likely") or np.zeros_like(counts))
    ax.bar(edges[:-1], counts - likely, width=np.diff(edges), align="edge", color="#7f9fbf", edgecolor="white",
           linewidth=0.5)
    ax.bar(edges[:-1], likely, bottom=counts - likely, width=np.diff(edges), align="edge", color=TAIL_COLOR,
           edgecolor="white", linewidth=0.5)
    if left is not None:
        if cut is not None:
            ax.axvline(cut, color=TAIL_COLOR, linestyle="--", linewidth=1.4,
                       label=f"the tab's first {left} tasks score >= {cut:.3f}")
        ax.plot([], [], "s", color=TAIL_COLOR,
                label=f"likely tail tasks left: {left} of {pool['n_unlabeled']} (held-out precision >= "
                      f"{pool['precision_target']:.0%} at their score)")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    else:
        ax.text(0.98, 0.95, "likely-tail count: needs the held-out evaluation", ha="right", va="top",
                transform=ax.transAxes, fontsize=8, color="#555555")
    if counts.max(initial=0) > 60:  # a long tail of few high scores stays visible next to the many low ones
        ax.set_yscale("symlog", linthresh=10)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))  # its default is mathtext
        ax.set_ylabel("unlabeled tasks (log scale above 10)")
    else:
        ax.set_ylabel("unlabeled tasks")
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mining score (what the 'Tail classes first' tab sorts by; high = likely tail)")
    ax.set_title(f"{TITLES['pool_scores']} — {pool['n_unlabeled']} tasks ranked by {pool['version']}",
                 fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _fig_versions(rep: Report):
    fig = _new_figure()
    ax = fig.add_subplot()
    rows = rep.versions[-MAX_VERSIONS_PLOTTED:]
    x = np.arange(len(rows))
    train = np.asarray([r.get("train_seconds") or 0.0 for r in rows], dtype=float)
    rescore = np.asarray([r.get("rescore_seconds") or 0.0 for r in rows], dtype=float)
    ax.bar(x, train, width=0.7, color="#4c72b0", label="training (s)")
    ax.bar(x, rescore, width=0.7, bottom=train, color="#dd8452", label="re-scoring + publishing the head (s)")
    ax.set_xlim(-0.6, max(len(rows), 8) - 0.4)
    ax.set_ylabel("seconds")
    ax.set_xticks(x, [f"v{r['number']}\n{(r.get('trained_at') or '')[11:16]}" for r in rows],
                  fontsize=7 if len(rows) > 12 else 8)
    if len(rows) > 20:
        for i, label in enumerate(ax.get_xticklabels()):
            label.set_visible(i % max(1, len(rows) // 15) == 0)
    twin = ax.twinx()
    twin.plot(x, [r.get("n_labeled") or 0 for r in rows], "o-", color="#2a2a2a", markersize=4,
              label="labeled tasks it was trained on")
    twin.set_ylabel("labeled tasks")
    twin.set_ylim(0, max([r.get("n_labeled") or 0 for r in rows] + [1]) * 1.15)
    ax.set_ylim(0, max(float((train + rescore).max(initial=0)), 1.0) * 1.15)
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=3, fontsize=8, frameon=False)
    shown = f"last {len(rows)} of {len(rep.versions)}" if len(rep.versions) > len(rows) else f"{len(rows)}"
    ax.set_title(f"{TITLES['versions']} — {shown} (time of training, UTC)", fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    return fig


DRAW = {"tail_yield": _fig_tail_yield, "classes": _fig_classes, "precision_recall": _fig_precision_recall,
        "pool_scores": _fig_pool_scores, "versions": _fig_versions}


def draw_figure(rep: Report, name: str):
    """One figure (the too-little-data message when there is nothing to draw yet), all its text literal."""
    state = figure_states(rep)[name]
    fig = DRAW[name](rep) if state["status"] == "ok" else _message_figure(TITLES[name], state["status"],
                                                                          state["message"])
    _literal(fig)
    return fig


def render_figure(rep: Report, name: str) -> bytes:
    """One figure as PNG bytes; a figure that fails to draw becomes a message naming the error (logged)."""
    try:
        return _png(draw_figure(rep, name))
    except Exception as exc:  # one figure never breaks the page nor answers 500
        logger.exception("project %s: the report's %s figure could not be drawn", rep.project_id, name)
        fig = _message_figure(TITLES[name], "failed", f"could not be drawn ({exc.__class__.__name__}); see the "
                                                      "backend's log")
        _literal(fig)
        return _png(fig)


def png(rep: Report, name: str) -> bytes:
    """The PNG of one figure of `rep`, rendered once per report (figures render in parallel across
    reports: each report has its own lock)."""
    with rep.lock:
        if name not in rep.figures:
            rep.figures[name] = render_figure(rep, name)
        return rep.figures[name]
