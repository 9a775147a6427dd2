"""Shared steps of the benchmarks: the common command-line options, the JSON of every figure and the PNG plot."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from ..atomic import atomic_write_json


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def plot_pr(ax, curves: dict, names: list[str], highlight: str, title: str, xlabel: str = "recall",
            legend: dict | None = None) -> None:
    """Precision-recall curves `names` of `curves` ({name: {"precision", "recall"}}) on one axis,
    `highlight` drawn thicker."""
    for k in names:
        c = curves[k]
        ax.plot(c["recall"], c["precision"], lw=2.5 if k == highlight else 1.2, label=k[:40])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.legend(**(legend or {"fontsize": 6, "loc": "lower left"}))


def write_results(out: Path, json_name: str, payload: dict, png_name: str, plot: Callable[[Path], None]) -> None:
    """JSON (with the machine's load average) + plot, then one closing line."""
    payload = {**payload, "load_avg": os.getloadavg()}
    atomic_write_json(out / json_name, payload)
    plot(out / png_name)
    print(f"wrote {out / json_name} and {out / png_name}; total {payload['total_seconds']:.1f}s, "
          f"load average {payload['load_avg'][0]:.1f}")


def add_common_arguments(ap, settings_help: str, out_help: str) -> None:
    """--seeds, --settings, --out and --threads, the same in every benchmark."""
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 1)")
    ap.add_argument("--settings", default=None, help=settings_help)
    ap.add_argument("--out", default="bench_out", help=out_help)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")


def start(args) -> int:
    """Apply --threads; the number of seeds (--seeds, else 1 with --quick, else 3)."""
    import torch
    torch.set_num_threads(args.threads)
    return args.seeds or (1 if getattr(args, "quick", False) else 3)


def comma_list(ap, text: str | None, default: Iterable[str], allowed: Callable[[str], bool], what: str) -> list[str]:
    """The comma list `text` (else `default`), each item checked: ap.error names the first one refused."""
    items = text.split(",") if text else list(default)
    for item in items:
        if not allowed(item):
            ap.error(f"unknown {what} {item!r}")
    return items
