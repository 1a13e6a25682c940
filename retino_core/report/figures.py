"""Plotly figures: loss and accuracy curves, confusion matrices, counts, probabilities,
Grad-CAM overlays, parallel coordinates, and the referable-DR ROC and reliability charts.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..config import GRADE_NAMES, NUM_CLASSES
from ..judging import metrics
from ..judging.operating import REFERENCE_POINTS
from .display import percent


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0), height=height, template="plotly_white",
                      margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))
    return fig


def referable_roc_figure(curves: dict[str, dict], point: dict | None = None) -> go.Figure:
    """ROC of referable DR (sensitivity vs 1 - specificity) per curve, the chosen point and
    the published reference points."""
    fig = go.Figure()
    for name, roc in curves.items():
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=name,
                                 customdata=roc["thresholds"],
                                 hovertemplate="1-spec %{x:.3f}<br>sens %{y:.3f}<br>threshold %{customdata:.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"))
    for ref in REFERENCE_POINTS:
        fig.add_trace(go.Scatter(x=[1 - ref.specificity], y=[ref.sensitivity], mode="markers", name=ref.label,
                                 marker=dict(symbol="diamond", size=11),
                                 hovertemplate=f"{ref.label}<br>sens {ref.sensitivity:.1%} spec {ref.specificity:.1%}"
                                               f"<br>{ref.source}<extra></extra>"))
    if point and point.get("sensitivity") is not None and point.get("specificity") is not None:
        fig.add_trace(go.Scatter(x=[1 - point["specificity"]], y=[point["sensitivity"]], mode="markers",
                                 name=f"threshold {point['threshold']:.2f}",
                                 marker=dict(symbol="x", size=14, color="black")))
    fig.update_xaxes(title="1 - specificity", range=[-0.01, 1.01])
    fig.update_yaxes(title="sensitivity", range=[-0.01, 1.01])
    return _layout(fig, "Referable DR (grade ≥ 2): ROC")


def reliability_figure(labels: np.ndarray, probs_by_name: dict[str, np.ndarray], bins: int = 10) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per calibration."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"))
    for name, probs in probs_by_name.items():
        rel = metrics.reliability(labels, probs, bins)
        keep = [i for i, c in enumerate(rel["count"]) if c]
        fig.add_trace(go.Scatter(
            x=[rel["confidence"][i] for i in keep], y=[rel["accuracy"][i] for i in keep],
            mode="lines+markers", name=f"{name} (ECE {metrics.expected_calibration_error(labels, probs):.3f})",
            customdata=[rel["count"][i] for i in keep],
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images"))
    fig.update_xaxes(title="mean confidence of the top grade", range=[0, 1])
    fig.update_yaxes(title="accuracy", range=[0, 1])
    return _layout(fig, "Calibration: reliability diagram")


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


SPLIT_DASH = {"train": "solid", "val": "dot", "test": "dash"}


BASELINE_COLOUR = "#7f7f7f"


CONFUSION_SCALE = "Blues"


def _style(fig: go.Figure, title: str = "", height: int = 360) -> go.Figure:
    # The legend sits at the bottom of the whole figure (the container), below the x axis's title,
    # and the figure grows by its rows instead of squeezing the plot.
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left"), height=height + LEGEND_ROW_PX * _legend_lines(fig),
        template="plotly_white", margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, xanchor="left", x=0),
    )
    return fig


LEGEND_ROW_PX, LEGEND_PER_ROW = 20, 4


def _legend_lines(fig: go.Figure) -> int:
    """About how many lines the horizontal legend takes: its groups, a few to a row, each as tall
    as its entries."""
    groups: dict = {}
    for i, t in enumerate(fig.data):
        if getattr(t, "showlegend", False) is not False and t.name and fig.layout.showlegend is not False:
            key = getattr(t, "legendgroup", None) or f"#{i}"
            groups[key] = groups.get(key, 0) + 1
    if not groups:
        return 0
    tallest = max(groups.values())
    return -(-len(groups) // LEGEND_PER_ROW) * tallest + (1 if tallest > 1 else 0)


def display_image(img, side: int = 112):
    """A copy at least ``side`` pixels wide (28-pixel RetinaMNIST images are unreadable as they are)."""
    from PIL import Image

    if img.width >= side:
        return img
    return img.resize((side, round(img.height * side / img.width)), Image.Resampling.BICUBIC)


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


# A Grad-CAM whose 5th to 95th percentile inside the field of view spans less than this share of
# its scale (or that is zero everywhere) is flat: no colour scale is drawn for it.
CAM_MIN_CONTRAST = 0.25


FLAT_CAM = "no region stands out for this grade"


def cam_stands_out(heat: np.ndarray, mask: np.ndarray | None = None) -> bool:
    """Whether a Grad-CAM map (any scale) shows a region at all: False when it is zero
    everywhere inside ``mask`` or its 5th-95th percentile range is under CAM_MIN_CONTRAST of its peak."""
    inside = np.asarray(heat, dtype=np.float64)[mask if mask is not None else slice(None)]
    peak = float(inside.max()) if inside.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return False
    lo, hi = np.percentile(inside, [5, 95])
    return (hi - lo) / peak >= CAM_MIN_CONTRAST


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


# Axis titles a reader understands, for the settings that usually differ between runs.
SETTING_TITLES = {"arch": "architecture", "pretrained": "ImageNet start", "lr": "learning rate",
                  "batch_size": "batch size", "image_size": "image size (px)", "weight_decay": "weight decay",
                  "label_smoothing": "label smoothing", "max_steps_per_epoch": "max steps / epoch",
                  "warmup_epochs": "warm-up epochs", "ema": "weight EMA", "tta": "flip TTA", "val_fraction": "val share",
                  "select_metric": "selected on", "num_workers": "loader workers", "channels_last": "channels last",
                  "gpu_data": "GPU data path", "test_qwk": "test QWK", "test_acc": "test accuracy",
                  "test_auc": "test AUC", "test_referable_auc": "referable-DR AUC"}
TICK_CHARS = 16


def setting_title(key: str) -> str:
    return SETTING_TITLES.get(key, key.replace("_", " "))


def _tick(value) -> str:
    text = "none" if value is None else str(value).rstrip("/").rsplit("/", 1)[-1]  # a data path: its last part
    return text if len(text) <= TICK_CHARS else text[:TICK_CHARS - 1] + "…"


def parallel_coordinates(frame, metric: str) -> go.Figure:
    """Runs as lines across their settings, coloured by ``metric`` (plotly Parcoords), which is
    also the last axis. Text columns get one tick per value; columns that never vary are left out.
    Titles are tilted and the margins hold them and the tick labels."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    dims = []
    for col in frame.columns:
        if col == "run" or frame[col].nunique(dropna=False) < 2 and col != metric:
            continue
        values = frame[col]
        title = setting_title(col)
        if not is_numeric_dtype(values) or is_bool_dtype(values) or values.isna().any():
            cats = sorted({_tick(v) for v in values})
            dims.append(dict(label=title, values=[cats.index(_tick(v)) for v in values],
                             tickvals=list(range(len(cats))), ticktext=cats))
        else:
            dims.append(dict(label=title, values=values.astype(float).tolist()))
    fig = go.Figure(go.Parcoords(
        line=dict(color=frame[metric].astype(float), colorscale="Viridis", showscale=True,
                  colorbar=dict(title=dict(text=setting_title(metric), side="right"))),
        dimensions=dims, labelangle=-20, labelside="top", labelfont=dict(size=13), tickfont=dict(size=11)))
    _style(fig, "", 420)
    fig.update_layout(margin=dict(l=70, r=90, t=90, b=30))
    return fig
