"""Pictures for the reports: training curves drawn by matplotlib (SVG), PNG thumbnails, subsampled image lists."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

# The curves' panels: (title, metrics.jsonl keys, log scale when every value is positive).
PANELS = (
    ("loss", ("loss",), True),
    ("loss terms", ("loss_*",), True),
    ("timestep t", ("t",), False),
    ("gradient norm", ("grad_norm",), True),
    ("SDF sharpness", ("sharpness",), False),
    ("learning rate", ("lr_*",), True),
)
MAX_POINTS = 1500  # per curve: a longer log is thinned evenly, which an SVG of this width cannot show anyway


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3|4) or (H, W) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def evenly(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced, always keeping the first and the last (the newest)."""
    if len(items) <= n:
        return list(items)
    if n <= 1:
        return items[-1:]
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in picks]


def _keys(records: list[dict], patterns: tuple[str, ...]) -> list[str]:
    seen = []
    for record in records:
        for key in record:
            if key in seen:
                continue
            if any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns):
                seen.append(key)
    return seen


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``; a null (a non-finite value when logged) becomes NaN, a gap in the curve."""
    rows = [(r["step"], r[key]) for r in records if key in r]
    steps = np.array([s for s, _ in rows], dtype=np.float64)
    values = np.array([math.nan if v is None else float(v) for _, v in rows], dtype=np.float64)
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_POINTS)).round().astype(int))
    return (steps[keep], values[keep]) if len(steps) else (steps, values)


def curves_svg(records: list[dict]) -> bytes | None:
    """Training curves of a run's ``metrics.jsonl`` records as one SVG (text kept as text), None without records.

    A panel per group present in the log: loss, the loss terms, t, gradient norm, SDF sharpness, learning rates;
    steps that skipped a NaN/inf update are marked on the loss panel.
    """
    panels = [(title, _keys(records, pats), log) for title, pats, log in PANELS]
    panels = [p for p in panels if p[1]]
    if not records or not panels:
        return None
    import matplotlib
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    # Figure() without pyplot: no global state, no GUI backend, safe inside a training process.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dreamnfsd", "font.size": 9}):
        fig = Figure(figsize=(3.6 * cols, 2.5 * rows))
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.92, wspace=0.28, hspace=0.45)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (title, keys, log) in zip(axes, panels):
            positive = True
            for key in keys:
                steps, values = _series(records, key)
                ax.plot(steps, values, lw=1.0, label=key)
                finite = values[np.isfinite(values)]
                positive &= bool(len(finite)) and bool((finite > 0).all())
            if title == "loss":
                skipped = [r["step"] for r in records if (r.get("skipped") or 0) > 0]
                for i, s in enumerate(skipped):
                    ax.axvline(s, color="#cf222e", lw=0.5, alpha=0.5, label=None if i else "skipped (NaN/inf)")
            if log and positive:
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(ax.get_legend_handles_labels()[0]) > 1:
                ax.legend(fontsize=7, frameon=False)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def video_frame(path: Path, index: int = 0) -> np.ndarray | None:
    """Frame ``index`` of a video as (H, W, 3) uint8, or None when it cannot be read."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            return np.asarray(reader.get_data(index))
        finally:
            reader.close()
    except Exception:  # a torn or missing video only costs the thumbnail
        return None


def thumbnail(image: np.ndarray, size: int = 128) -> bytes:
    """A square PNG of at most ``size`` pixels a side (nearest-neighbour: renders are small and sharp-edged)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return png_bytes(np.asarray(im))


def first_tile(grid: np.ndarray, rows: int, width: int | None) -> np.ndarray:
    """The top-left view of a validation grid (``rows`` rows of views side by side; square when ``width`` is
    unknown)."""
    h = grid.shape[0] // rows
    return grid[:h, : (width or h)]
