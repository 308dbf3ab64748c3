"""Plotly figures for the pages (no streamlit here)."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sis.classes import ClassSet


def _rgb(c) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def class_share_bar(share, classes: ClassSet) -> go.Figure:
    order = sorted(range(classes.num_classes), key=lambda i: -share[i])
    fig = go.Figure(go.Bar(x=[100 * share[i] for i in order], y=[classes.names[i] for i in order], orientation="h",
                           marker_color=[_rgb(classes.colors[i]) for i in order],
                           hovertemplate="%{y}: %{x:.1f}%<extra></extra>"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), title="Pixel share per class",
                      xaxis_title="% of pixels", yaxis=dict(autorange="reversed"))
    return fig


def iou_heatmap(rows: list, classes: ClassSet) -> go.Figure:
    z = [[(r.per_class_iou.get(n) or 0) * 100 for n in classes.names] for r in rows]
    fig = go.Figure(go.Heatmap(z=z, x=list(classes.names), y=[r.model for r in rows], colorscale="Viridis",
                               zmin=0, zmax=100, text=[[f"{v:.0f}" for v in row] for row in z],
                               texttemplate="%{text}", colorbar=dict(title="IoU %")))
    fig.update_layout(height=120 + 40 * len(rows), margin=dict(l=10, r=10, t=30, b=10),
                      title="Validation IoU per class", yaxis=dict(autorange="reversed"))  # table order
    return fig


def stage_curve(history: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """The epochs and values of ``key`` in a card's ``history`` (epochs without it left out), with a gap (None)
    where a later training stage begins: a fine-tune's loss, under another recipe, does not continue the first's."""
    xs: list = []
    ys: list = []
    last = None
    for e in history:
        if key not in e:
            continue
        stage = e.get("stage")
        if xs and stage != last:
            xs.append(None)
            ys.append(None)
        xs.append(e["epoch"])
        ys.append(scale * e[key])
        last = stage
    return xs, ys


def stage_starts(history: list[dict]) -> list[tuple[int, int]]:
    """(epoch, stage) where each training stage after the first begins."""
    return [(e["epoch"], e.get("stage")) for prev, e in zip(history, history[1:]) if e.get("stage") != prev.get("stage")]


def training_curves(rows: list) -> go.Figure:
    """The paper's per-epoch curves: loss, pixel accuracy and val mIoU for each model; a model trained in stages
    (a first run, then a fine-tune under another recipe) has a gap and a dotted line where each later stage begins."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Training loss", "Pixel accuracy", "Validation mIoU"))
    for i, r in enumerate(rows):
        h = r.history
        color = f"hsl({(i * 67) % 360},70%,45%)"
        curves = ((1, "loss", 1.0, {}, True), (2, "pixel_acc", 100.0, {}, False),
                  (2, "val_pixel_acc", 100.0, dict(dash="dot"), False), (3, "val_miou", 100.0, {}, False))
        for col, key, scale, line, legend in curves:
            x, y = stage_curve(h, key, scale)
            if x:
                fig.add_scatter(x=x, y=y, name=r.model, legendgroup=r.model, showlegend=legend, row=1, col=col,
                                line=dict(color=color, **line), mode="lines+markers" if col == 3 else "lines")
        for epoch, stage in stage_starts(h):
            for col in (1, 2, 3):
                fig.add_vline(x=epoch - 0.5, line=dict(color=color, dash="dot", width=1), row=1, col=col)
            fig.add_annotation(x=epoch - 0.5, y=1, yref="y domain", text=f"stage {stage}", showarrow=False,
                               xanchor="right", font=dict(size=11, color=color), row=1, col=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def live_curves(snap, validates: bool = True) -> go.Figure:
    """Loss, batch pixel accuracy and (for a run that validates) validation mIoU against the step, from a
    job's ``studio.jobs.Snapshot``."""
    titles = ("Loss", "Pixel accuracy (batch)") + (("Validation mIoU",) if validates else ())
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    fig.add_scatter(x=snap.steps, y=snap.loss, row=1, col=1, name="loss", showlegend=False)
    fig.add_scatter(x=snap.steps, y=[100 * a for a in snap.pixel_acc], row=1, col=2, name="acc",
                    showlegend=False)
    if validates:
        fig.add_scatter(x=[s for s, _ in snap.val], y=[100 * m for _, m in snap.val], row=1, col=3,
                        mode="lines+markers", name="val mIoU", showlegend=False)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def bench_bars(rows: list[dict]) -> go.Figure:
    labels = [f"{r['model']} ({r['mode']}, b{r['batch']})" for r in rows]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("ms / step (median, p90 whisker)", "images / s",
                                                        "peak memory (MB)"))
    fig.add_bar(x=labels, y=[r["median_ms"] for r in rows], row=1, col=1, showlegend=False,
                error_y=dict(type="data", symmetric=False, array=[r["p90_ms"] - r["median_ms"] for r in rows]))
    fig.add_bar(x=labels, y=[r["images_per_s"] for r in rows], row=1, col=2, showlegend=False)
    fig.add_bar(x=labels, y=[r.get("cuda_max_allocated_mb") or r["peak_rss_mb"] for r in rows], row=1, col=3,
                showlegend=False)
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def engine_bars(cmp) -> go.Figure:
    """A ``report.EngineComparison``: median ms per engine, labelled with the speed-up over eager fp32."""
    fig = go.Figure(go.Bar(x=[t.name for t in cmp.engines], y=[t.median_ms for t in cmp.engines],
                           text=[f"{t.speedup:.2f}x" for t in cmp.engines], textposition="outside",
                           marker_color=["#888" if t.name == cmp.reference else "#1f77b4" for t in cmp.engines]))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"{cmp.model} at {cmp.size[0]}x{cmp.size[1]}: ms per image (lower is better)",
                      yaxis_title="median ms")
    return fig


def class_share_over_time(seconds, share, classes: ClassSet) -> go.Figure:
    """Stacked area: each class's % of the pixels per processed frame (``share`` (frames, C)) against time."""
    fig = go.Figure()
    for i, name in enumerate(classes.names[:classes.num_classes]):
        ys = [100 * float(s[i]) for s in share]
        if max(ys, default=0) <= 0:
            continue  # a class never seen would only crowd the legend
        fig.add_trace(go.Scatter(x=list(seconds), y=ys, name=name, stackgroup="share", mode="lines",
                                 line=dict(width=0.5, color=_rgb(classes.colors[i])),
                                 hovertemplate=f"{name}: %{{y:.1f}}% at %{{x:.2f}} s<extra></extra>"))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), title="Pixel share per class over time",
                      xaxis_title="seconds into the clip", yaxis=dict(title="% of pixels", range=[0, 100]),
                      legend=dict(orientation="h", y=-0.25))
    return fig
