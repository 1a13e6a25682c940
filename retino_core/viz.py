"""Plotly figures and display numbers shared by the dashboard pages and the report.

No streamlit here: the pages put these figures on screen, ``report`` writes them to HTML.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .config import GRADE_NAMES, NUM_CLASSES
from .runs import RunInfo

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SPLIT_DASH = {"train": "solid", "val": "dot", "test": "dash"}
BASELINE_COLOUR = "#7f7f7f"
CONFUSION_SCALE = "Blues"
# The rate behind an ETA comes from recent step rows; an older gap (a pause before a resume,
# say) would make it look slower than it is.
ETA_WINDOW_ROWS = 30
ETA_MAX_GAP_S = 120.0


def _style(fig: go.Figure, title: str = "", height: int = 360) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left"), height=height, template="plotly_white",
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
    )
    return fig


# ---------------------------------------------------------------- numbers


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and not np.isfinite(x))


def percent(x: float | None, digits: int = 1) -> str:
    """``43.5%``; ``–`` for a missing value."""
    return "–" if _missing(x) else f"{100 * x:.{digits}f}%"


def number(x: float | None, digits: int = 3) -> str:
    return "–" if _missing(x) else f"{x:.{digits}f}"


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def data_label(spec: str) -> str:
    """A short name for a data spec: ``RetinaMNIST`` or the folder / file name."""
    text = str(spec or "").strip().rstrip("/")
    if text.lower() in ("", "retinamnist"):
        return "RetinaMNIST (bundled)"
    return text.rsplit("/", 1)[-1]


def short_label(run: RunInfo) -> str:
    """``resnet18-pre 18:45:12`` from a run id ``20261127-184512-resnet18-pre``; the id otherwise."""
    parts = run.run_id.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and len(parts[1]) == 6 and parts[1].isdigit():
        t = parts[1]
        return f"{parts[2]} {t[:2]}:{t[2:4]}:{t[4:]}"
    return run.run_id


def display_image(img, side: int = 112):
    """A copy at least ``side`` pixels wide (28-pixel RetinaMNIST images are unreadable as they are)."""
    from PIL import Image

    if img.width >= side:
        return img
    return img.resize((side, round(img.height * side / img.width)), Image.Resampling.BICUBIC)


@dataclass
class Progress:
    """Where a run is, from its freshest rows: the trainer writes a step row every ~2 s."""

    state: str
    fraction: float
    epoch: int
    epochs: int
    step: int
    steps: int
    images_per_s: float | None
    eta_s: float | None
    train_loss: float | None

    @property
    def text(self) -> str:
        if self.state == "queued":
            return "waiting in the queue"
        if not self.steps:
            return f"{self.state}: starting (loading data and model)" if self.state == "running" else self.state
        parts = [f"epoch {self.epoch}/{self.epochs}", f"step {self.step}/{self.steps}"]
        if self.images_per_s:
            parts.append(f"{self.images_per_s:,.0f} images/s")
        if self.state == "running" and self.eta_s is not None:
            parts.append(f"ETA {duration(self.eta_s)}")
        return " · ".join(parts)


def _row_fraction(row: dict, epochs: int) -> float:
    steps = max(int(row.get("steps") or 1), 1)
    return (int(row.get("epoch") or 1) - 1 + int(row.get("step") or 0) / steps) / max(epochs, 1)


def run_progress(run: RunInfo, steps: list[dict], now: float | None = None) -> Progress:
    """Progress, speed and ETA of ``run`` from its step rows (oldest first)."""
    now = time.time() if now is None else now
    epochs = int(run.config.get("epochs") or (run.status.get("progress") or {}).get("epochs") or 1)
    if not steps:
        done = 1.0 if run.state == "done" else 0.0
        return Progress(run.state, done, 0, epochs, 0, 0, None, None, None)
    last = steps[-1]
    fraction = 1.0 if run.state == "done" else min(_row_fraction(last, epochs), 1.0)
    window = steps[-ETA_WINDOW_ROWS:]
    for i in range(len(window) - 1, 0, -1):
        if window[i]["time"] - window[i - 1]["time"] > ETA_MAX_GAP_S:
            window = window[i:]
            break
    eta = None
    if run.state == "running" and len(window) >= 2:
        gained = _row_fraction(window[-1], epochs) - _row_fraction(window[0], epochs)
        spent = window[-1]["time"] - window[0]["time"]
        if gained > 0 and spent > 0:
            eta = max((1 - fraction) * spent / gained - (now - last["time"]), 0.0)
    return Progress(run.state, fraction, int(last.get("epoch") or 0), epochs, int(last.get("step") or 0),
                    int(last.get("steps") or 0), last.get("images_per_s"), eta, last.get("train_loss"))


def slot_text(run: RunInfo) -> str:
    """Where a run trains (its worker slot: GPU, or share of the CPU), or waits; "" when unknown."""
    slot = run.status.get("slot") if isinstance(run.status.get("slot"), dict) else None
    if run.state == "queued":
        return "waiting for a free slot"
    if slot is None or run.state != "running":
        return f"trained on {slot['label']}" if slot and run.state == "done" else ""
    threads = run.status.get("torch_threads")
    extra = f" ({threads} thread{'s' if threads != 1 else ''})" if threads and "thread" not in slot["label"] else ""
    return f"on {slot['label']}{extra}"


# ---------------------------------------------------------------- curves


SPLIT_SYMBOL = {"train": "circle", "val": "diamond", "test": "square"}  # told apart without colour


# A run of hours writes thousands of step rows; a chart shows at most this many per run (the
# browser draws and the server sends less; the last row is always kept).
MAX_STEP_POINTS = 600


def thin(rows: list, most: int) -> list:
    """Every k-th row so that at most ``most`` remain, the last one included."""
    if len(rows) <= most:
        return rows
    step = -(-len(rows) // most)
    kept = rows[::step]
    return kept if kept[-1] is rows[-1] else kept + [rows[-1]]


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    out, last = [], 0.0
    for i, v in enumerate(values):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** (i + 1)) if weight < 1 else v)
    return out


def loss_figure(steps: dict[str, list[dict]], epochs: dict[str, list[dict]] | None = None,
                title: str = "Loss", smoothing: float = 0.0, log_scale: bool = False) -> go.Figure:
    """Training loss per step (x in epochs, so runs of any length overlay) and eval loss per epoch.

    ``smoothing`` (0-0.99) draws the training loss smoothed over a faint raw line.
    """
    fig = go.Figure()
    for i, (label, rows) in enumerate(steps.items()):
        colour = PALETTE[i % len(PALETTE)]
        rows = thin(rows, MAX_STEP_POINTS)
        x = [int(r["epoch"]) - 1 + int(r["step"]) / max(int(r["steps"]), 1) for r in rows]
        y = [r.get("train_loss") for r in rows]
        if smoothing > 0:
            fig.add_scatter(x=x, y=y, mode="lines", name=f"{label} · train (raw)", legendgroup=label,
                            showlegend=False, opacity=0.25, line=dict(color=colour, width=1),
                            hovertemplate="epoch %{x:.2f}<br>raw train loss %{y:.4f}<extra></extra>")
            y = smooth([v for v in y if v is not None], smoothing) if None not in y else y
        fig.add_scatter(x=x, y=y, mode="lines+markers", marker=dict(size=4, symbol=SPLIT_SYMBOL["train"]),
                        name=f"{label} · train", legendgroup=label,
                        line=dict(color=colour, dash=SPLIT_DASH["train"]),
                        hovertemplate="epoch %{x:.2f}<br>train loss %{y:.4f}<extra>%{fullData.name}</extra>")
        for split in ("val", "test"):
            pts = [(r["epoch"], r[f"{split}_loss"]) for r in (epochs or {}).get(label, [])
                   if r.get(f"{split}_loss") is not None]
            if pts:
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                name=f"{label} · {split}", legendgroup=label,
                                marker=dict(size=9, symbol=SPLIT_SYMBOL[split]),
                                line=dict(color=colour, dash=SPLIT_DASH[split]),
                                hovertemplate=f"epoch %{{x}}<br>{split} loss %{{y:.4f}}<extra>%{{fullData.name}}</extra>")
    fig.update_xaxes(title="epoch", rangemode="tozero")
    if log_scale:
        fig.update_yaxes(title="cross-entropy (log scale)", type="log")
    else:
        fig.update_yaxes(title="cross-entropy", rangemode="tozero")
    return _style(fig, title)


def accuracy_figure(epochs: dict[str, list[dict]], baselines: dict[str, float | None] | None = None,
                    splits: tuple[str, ...] = ("train", "val", "test"), title: str = "Accuracy per epoch",
                    colours: dict[str, str] | None = None, height: int = 360) -> go.Figure:
    """Accuracy per epoch for each labelled run and split, with the majority-class baseline line(s).

    The baseline is the accuracy of always answering the commonest training grade: a model on
    that line has learnt nothing but the class balance. Its label sits in the legend, where it
    cannot cover a curve.
    """
    fig = go.Figure()
    for i, (label, rows) in enumerate(epochs.items()):
        colour = (colours or {}).get(label, PALETTE[i % len(PALETTE)])
        for split in splits:
            pts = [(r["epoch"], r[f"{split}_acc"]) for r in rows if r.get(f"{split}_acc") is not None]
            if pts:
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                name=f"{label} · {split}", legendgroup=label,
                                marker=dict(size=9 if split != "train" else 7, symbol=SPLIT_SYMBOL[split]),
                                line=dict(color=colour, dash=SPLIT_DASH[split]),
                                hovertemplate=f"epoch %{{x}}<br>{split} accuracy %{{y:.1%}}<extra>%{{fullData.name}}</extra>")
    for value in sorted({round(v, 4) for v in (baselines or {}).values() if v is not None}):
        fig.add_hline(y=value, line=dict(color=BASELINE_COLOUR, dash="dot", width=2))
        fig.add_scatter(x=[None], y=[None], mode="lines", name=f"majority-class baseline {percent(value)}",
                        line=dict(color=BASELINE_COLOUR, dash="dot", width=2), hoverinfo="skip")
    fig.update_xaxes(title="epoch", dtick=1 if max((len(r) for r in epochs.values()), default=0) <= 12 else None)
    fig.update_yaxes(title="accuracy", tickformat=".0%", range=[0, 1.02])
    return _style(fig, title, height)


# ---------------------------------------------------------------- confusion matrices


def row_shares(matrix) -> np.ndarray:
    """Each row divided by its total: the share of each true grade given each prediction."""
    m = np.asarray(matrix, dtype=float)
    totals = m.sum(1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def _hover(matrix) -> list[list[str]]:
    m, share = np.asarray(matrix, dtype=int), row_shares(matrix)
    return [[f"true {GRADE_NAMES[t]} → predicted {GRADE_NAMES[p]}<br>{m[t, p]} image(s)<br>"
             f"{share[t, p]:.1%} of true {GRADE_NAMES[t]}" for p in range(NUM_CLASSES)]
            for t in range(NUM_CLASSES)]


def confusion_figure(matrix, normalize: bool = False, title: str = "",
                     selected: tuple[int, int] | None = None, size: int = 440) -> go.Figure:
    """A confusion matrix drawn as clickable squares (Streamlit reports point selections of a
    scatter, not of a heatmap); hover shows the count and the row share."""
    m = np.asarray(matrix, dtype=int)
    values = row_shares(m) if normalize else m.astype(float)
    top = max(float(values.max()), 1e-9) if not normalize else 1.0
    true, pred = np.divmod(np.arange(NUM_CLASSES * NUM_CLASSES), NUM_CLASSES)
    flat = values[true, pred]
    hover = _hover(m)
    labels = [f"{v:.0%}" if normalize else f"{int(v)}" for v in flat]
    outline = ["#d62728" if selected == (t, p) else "white" for t, p in zip(true, pred)]
    cell = (size - 130) / NUM_CLASSES
    fig = go.Figure(go.Scatter(
        x=pred, y=true, mode="markers+text", text=labels,
        textfont=dict(color=["white" if v > 0.55 * top else "#222" for v in flat], size=13),
        customdata=np.stack([true, pred], 1),
        hovertext=[hover[t][p] for t, p in zip(true, pred)], hoverinfo="text",
        marker=dict(symbol="square", size=cell * 0.94, color=flat, colorscale=CONFUSION_SCALE,
                    cmin=0, cmax=top, line=dict(color=outline, width=[4 if c != "white" else 1 for c in outline]),
                    colorbar=dict(title="share of row" if normalize else "images", thickness=12,
                                  tickformat=".0%" if normalize else None)),
    ))
    ticks = dict(tickmode="array", tickvals=list(range(NUM_CLASSES)), ticktext=list(GRADE_NAMES),
                 range=[-0.5, NUM_CLASSES - 0.5], showgrid=False, zeroline=False, fixedrange=True)
    fig.update_xaxes(title="predicted grade", side="bottom", **ticks)
    fig.update_yaxes(title="true grade", autorange=None, **{**ticks, "range": [NUM_CLASSES - 0.5, -0.5]})
    fig.update_layout(width=size + 150, height=size, clickmode="event+select", dragmode=False,
                      title=dict(text=title, x=0, xanchor="left"), template="plotly_white",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10), showlegend=False)
    return fig


def confusion_grid(matrices: dict[str, list[list[int]] | None], normalize: bool = True,
                   title: str = "") -> go.Figure:
    """Several confusion matrices side by side on ONE colour scale, so shades compare.

    A ``None`` matrix keeps its place, marked "not trained", so the layout never shifts.
    """
    n = max(len(matrices), 1)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(matrices), horizontal_spacing=0.04)
    values = {k: (row_shares(m) if normalize else np.asarray(m, dtype=float)) if m is not None else None
              for k, m in matrices.items()}
    top = 1.0 if normalize else max([float(v.max()) for v in values.values() if v is not None] + [1.0])
    for i, (label, v) in enumerate(values.items(), start=1):
        if v is None:
            v = np.full((NUM_CLASSES, NUM_CLASSES), np.nan)
            fig.add_annotation(text="not trained", showarrow=False, font=dict(color=BASELINE_COLOUR),
                               xref=f"x{i if i > 1 else ''}", yref=f"y{i if i > 1 else ''}", x=2, y=2)
        text = [["" if np.isnan(x) else f"{x:.0%}" if normalize else f"{int(x)}" for x in row] for row in v]
        hover = _hover(matrices[label]) if matrices[label] is not None else None
        fig.add_heatmap(z=v, x=list(range(NUM_CLASSES)), y=list(range(NUM_CLASSES)), coloraxis="coloraxis",
                        text=text, texttemplate="%{text}", hovertext=hover,
                        hoverinfo="text" if hover else "skip", row=1, col=i)
        fig.update_xaxes(title="predicted", row=1, col=i, tickangle=-45, tickmode="array",
                         tickvals=list(range(NUM_CLASSES)), ticktext=list(GRADE_NAMES), range=[-0.5, 4.5])
        fig.update_yaxes(row=1, col=i, tickmode="array", tickvals=list(range(NUM_CLASSES)),
                         ticktext=list(GRADE_NAMES), showticklabels=i == 1, range=[4.5, -0.5],
                         title="true grade" if i == 1 else None)
    fig.update_layout(coloraxis=dict(colorscale=CONFUSION_SCALE, cmin=0, cmax=top,
                                     colorbar=dict(title="share of row" if normalize else "images",
                                                   tickformat=".0%" if normalize else None, thickness=12)))
    _style(fig, title, height=400)
    fig.update_layout(margin=dict(t=80))  # room for the title above the subplot titles
    return fig


# ---------------------------------------------------------------- data and predictions


def counts_figure(counts: dict[str, list[int]], title: str = "Images per grade") -> go.Figure:
    fig = go.Figure()
    for i, (split, c) in enumerate(counts.items()):
        total = max(sum(c), 1)
        fig.add_bar(x=list(GRADE_NAMES), y=c, name=f"{split} ({sum(c):,})", marker_color=PALETTE[i % len(PALETTE)],
                    customdata=[x / total for x in c],
                    hovertemplate="%{x}: %{y} images (%{customdata:.1%})<extra>" + split + "</extra>")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="images")
    return _style(fig, title, height=300)


def probability_figure(probs: dict[str, list[float]], spread: tuple[list[float], list[float]] | None = None,
                       title: str = "", height: int = 260, colours: list[str] | None = None) -> go.Figure:
    """The five grade probabilities of one image as horizontal bars, one colour per model.

    ``spread`` (lowest, highest) across models draws as error bars on the first series.
    """
    fig = go.Figure()
    for i, (label, p) in enumerate(probs.items()):
        error = None
        if spread is not None and i == 0:
            lo, hi = spread
            error = dict(type="data", symmetric=False, color="#444", thickness=1.5,
                         array=[h - v for h, v in zip(hi, p)], arrayminus=[v - l for l, v in zip(lo, p)])
        fig.add_bar(y=list(GRADE_NAMES), x=p, orientation="h", name=label, error_x=error,
                    marker_color=(colours or PALETTE)[i % len(colours or PALETTE)],
                    hovertemplate="%{y}: %{x:.1%}<extra>" + label + "</extra>")
    fig.update_layout(barmode="group", showlegend=len(probs) > 1)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title="probability")
    fig.update_yaxes(autorange="reversed")
    return _style(fig, title, height)


CAM_SCALE = "Turbo"
CAM_MAX_CELLS = 64  # the heat map is drawn on at most this grid (a Grad-CAM has 7-16 cells a side)


def cam_figure(image, heat: np.ndarray, mask: np.ndarray | None = None, opacity: float = 0.5,
               title: str = "") -> go.Figure:
    """A photo with its Grad-CAM drawn over it on a colour scale with a colour bar.

    ``heat`` is (H, W) in [0, 1] at the photo's size; outside ``mask`` (the field of view)
    the photo shows uncoloured. Hover reads the value under the pointer.
    """
    from PIL import Image

    shown = image.convert("RGB")
    w, h = shown.size
    mask = np.ones((h, w), bool) if mask is None else mask
    heat_img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    gw, gh = min(CAM_MAX_CELLS, w), min(CAM_MAX_CELLS, h)
    grid = np.asarray(heat_img.resize((gw, gh), Image.BILINEAR), dtype=np.float64)
    inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((gw, gh), Image.BILINEAR)) > 127
    z = np.where(inside, grid, np.nan)
    import base64
    import io

    buf = io.BytesIO()
    shown.save(buf, "PNG")  # a data URI is a fraction of the size of a JSON pixel array
    fig = go.Figure(go.Image(source="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                             hoverinfo="skip"))
    fig.add_heatmap(z=z, x0=(w / gw - 1) / 2, dx=w / gw, y0=(h / gh - 1) / 2, dy=h / gh, zmin=0, zmax=1,
                    colorscale=CAM_SCALE, opacity=opacity, hoverongaps=False,
                    colorbar=dict(title=dict(text="Grad-CAM", side="right"), thickness=10, len=0.9,
                                  tickvals=[0, 0.5, 1], ticktext=["low", "", "high"]),
                    hovertemplate="Grad-CAM %{z:.2f}<extra></extra>")
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(height=max(h, 200) + (40 if title else 10), title=dict(text=title, x=0, font=dict(size=13)),
                      margin=dict(l=0, r=0, t=30 if title else 0, b=0), template="plotly_white")
    return fig


VERDICT_COLOURS = {"usable": "green", "weak": "orange", "no better than guessing": "red"}


def verdict_badge(trust: dict | None) -> str:
    """The verdict as Streamlit markdown, coloured: :green[usable], :orange[weak], :red[...]."""
    if not trust:
        return ":gray[not judged]"
    return f":{VERDICT_COLOURS.get(trust['verdict'], 'gray')}[**{trust['verdict']}**]"


def parallel_coordinates(frame, metric: str) -> go.Figure:
    """Runs as lines across their hyperparameters, coloured by ``metric`` (plotly Parcoords).

    Text columns get one tick per value; columns that never vary are left out.
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    dims = []
    for col in frame.columns:
        if col == "run" or frame[col].nunique(dropna=False) < 2 and col != metric:
            continue
        values = frame[col]
        if not is_numeric_dtype(values) or is_bool_dtype(values):
            cats = sorted(values.astype(str).unique())
            dims.append(dict(label=col, values=[cats.index(str(v)) for v in values],
                             tickvals=list(range(len(cats))), ticktext=cats))
        else:
            dims.append(dict(label=col, values=values.astype(float).tolist()))
    fig = go.Figure(go.Parcoords(line=dict(color=frame[metric].astype(float), colorscale="Viridis", showscale=True,
                                           colorbar=dict(title=metric)), dimensions=dims))
    return _style(fig, "", 380)
