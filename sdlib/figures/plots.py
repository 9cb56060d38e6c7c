"""Plotly figures drawn from the typed records of ``sdlib.studies``: drawing only, no computation. A series' role
(pretrained dashed, self-distilled solid) comes from the record's ``role`` field."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sdlib.types import LAST_STATES, Role

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
DASH = {str(Role.PRETRAINED): "dash", str(Role.SELF_DISTILLED): "solid", None: "solid"}


def show_token(token: str) -> str:
    """A decoded token made visible in a cell: spaces as ␣, newlines as ⏎."""
    return token.replace(" ", "␣").replace("\n", "⏎") or "∅"


PRETRAINED_GREY = "#8c8c8c"


def error_bars(value, lo, hi, **style: Any) -> dict[str, Any] | None:
    """Plotly's asymmetric ``error_y`` for values with their interval bounds (sequences of one length), or None
    where a bound is missing (NaN or None): a figure draws intervals only where every one was kept."""
    value, lo, hi = (np.asarray(x, dtype=float) for x in (value, lo, hi))
    if not lo.size or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None
    return {"type": "data", "symmetric": False, "array": (hi - value).tolist(), "arrayminus": (value - lo).tolist(),
            **style}


def model_colors(series: Sequence[tuple[str, str | None, str]]) -> dict[str, str]:
    """One colour per model, the same in every figure: ``series`` are (base model, role, label) triples, the
    result is keyed by label. Each self-distilled model has a hue of its own (in the order given); with one base
    model the pretrained model is grey, with several each pretrained model is a lighter tint of its first
    self-distilled model's hue (or of a hue of its own when it has none)."""
    series = list(dict.fromkeys(series))
    several = len({base for base, _, _ in series}) > 1
    pretrained = str(Role.PRETRAINED)
    trained = [label for _, role, label in series if role != pretrained]
    out = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(trained)}
    base_hue = {}
    for base, role, label in series:
        if role != pretrained:
            base_hue.setdefault(base, out[label])
    spare = (PALETTE[i % len(PALETTE)] for i in itertools.count(len(trained)))  # bases with no trained model
    for base, role, label in series:
        if role == pretrained:
            out[label] = _tint(base_hue.get(base) or next(spare), 0.55) if several else PRETRAINED_GREY
    return out


def _tint(color: str, amount: float) -> str:
    """``color`` (#rrggbb) mixed with white by ``amount``."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def movement_figure(records: Sequence[Any], title: str = "Hidden-state movement per layer") -> go.Figure:
    """D_l against layer, one panel per last-state convention, S in each legend entry; below, where a base model
    has both a pretrained and a self-distilled record, the change D_l(after) - D_l(before) per layer, which the
    shared y axis of D (set by D_0 and D_L) would hide. Records: ``sdlib.evaluation.movement.MeasureRecord``."""
    pairs = _before_after(records)
    rows = 2 if pairs else 1
    fig = make_subplots(rows=rows, cols=len(LAST_STATES), shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.62, 0.38] if pairs else None,
                        subplot_titles=[f"D_l, last state: {c}" for c in LAST_STATES]
                        + [f"change after self-distillation, {c}" for c in LAST_STATES][:len(LAST_STATES) * (rows - 1)])
    colors = model_colors([(r.model, r.role, r.label) for r in records])
    for col, convention in enumerate(LAST_STATES, start=1):
        for r in records:
            D = r.D[convention]
            fig.add_trace(go.Scatter(x=list(range(len(D))), y=D, mode="lines+markers", marker={"size": 5},
                                     name=f"{r.label}: S = {r.S[convention]:.3f}",
                                     legendgroup=convention, legendgrouptitle_text=convention,
                                     line={"color": colors[r.label], "dash": DASH[r.role]}), row=1, col=col)
        for label, (before, after) in pairs.items():
            change = [a - b for a, b in zip(after.D[convention], before.D[convention])]
            fig.add_trace(go.Bar(x=list(range(len(change))), y=change, showlegend=False, name=f"{label}: change",
                                 marker_color=colors[label]), row=2, col=col)
        fig.update_xaxes(title_text="layer l", row=rows, col=col)
        if pairs:
            fig.add_hline(y=0, line={"color": "#444", "width": 1}, row=2, col=col)
    fig.update_yaxes(title_text="D_l = 1 - (1 + cos(h_{l-1}, h_l)) / 2", row=1, col=1)
    if pairs:
        fig.update_yaxes(title_text="ΔD_l (after - before)", row=2, col=1)
    fig.update_layout(title=_with_setting(title, records), template="plotly_white", width=1200,
                      height=760 if pairs else 500, legend={"groupclick": "toggleitem"})
    return fig


def _with_setting(title: str, measurements: Sequence[Any]) -> str:
    """The title with where S was measured (``Measurement.info["setting"]``), when the records say."""
    found = [(getattr(m, "info", None) or {}).get("setting") for m in measurements]
    settings = list(dict.fromkeys(s for s in found if s))
    return f"{title}<br><sup>S and D measured on {'; '.join(settings)}</sup>" if settings else title


def _before_after(records: Sequence[Any]) -> dict[str, tuple[Any, Any]]:
    """Self-distilled label -> (its base model's pretrained record, its record), where the base model's pretrained
    record is there."""
    pre = {r.model: r for r in records if r.role == str(Role.PRETRAINED)}
    return {r.label: (pre[r.model], r) for r in records if r.role == str(Role.SELF_DISTILLED) and r.model in pre}


def pca_figure_3d(pca, max_tokens: int = 40, title: str | None = None) -> go.Figure:
    """Trajectories of token directions from input to last layer (``sdlib.experiments.sentence.PcaTrajectories``), one
    3-D scene per model on shared axes: one line per token, markers coloured by layer, ◆ the input (h_-1) and
    ■ the last layer (h_L). Positions left out of the PCA fit are not drawn (the subtitle says which)."""
    df = pca.frame()
    df = df[df["fitted"]]
    labels = list(dict.fromkeys(df["label"]))
    fig = make_subplots(rows=1, cols=len(labels), specs=[[{"type": "scene"}] * len(labels)], subplot_titles=labels)
    ranges = {c: [df[c].min(), df[c].max()] for c in ("pc1", "pc2", "pc3")}
    n_layers = df["layer"].max()
    for col, label in enumerate(labels, start=1):
        part = df[df["label"] == label]
        for t in sorted(part["token_index"].unique())[:max_tokens]:
            path = part[part["token_index"] == t].sort_values("layer")
            fig.add_trace(go.Scatter3d(
                x=path["pc1"], y=path["pc2"], z=path["pc3"], mode="lines+markers", showlegend=False,
                name=str(path["token"].iloc[0]), line={"color": "rgba(120,120,120,0.45)", "width": 2},
                marker={"size": 2.5, "color": path["layer"], "colorscale": "Viridis", "cmin": -1, "cmax": n_layers,
                        "showscale": col == len(labels), "colorbar": {"title": "layer"}},
                hovertext=[f"{path['token'].iloc[0]!r} layer {l}" for l in path["layer"]], hoverinfo="text"),
                row=1, col=col)
        for layer, symbol, name in ((-1, "diamond", "input h_-1"), (n_layers, "square", "last layer h_L")):
            ends = part[part["layer"] == layer]
            fig.add_trace(go.Scatter3d(x=ends["pc1"], y=ends["pc2"], z=ends["pc3"], mode="markers", name=name,
                                       showlegend=col == 1, legendgroup=name,
                                       marker={"size": 3.5, "symbol": symbol, "color": "black" if layer < 0 else "#d62728"}),
                          row=1, col=col)
    axes = {f"{a}axis": {"range": ranges[pc], "title": f"{pc.upper()} ({pca.explained[i]:.0%})"}
            for i, (a, pc) in enumerate(zip("xyz", ("pc1", "pc2", "pc3")))}
    fig.update_scenes(**axes)
    left_out = ", ".join(str(p) for p in pca.excluded_positions) or "none"
    fig.update_layout(title=title or ("PCA of the hidden-state directions h_l / ||h_l||, input to last layer<br><sup>"
                                      f"explained variance {', '.join(f'{v:.0%}' for v in pca.explained)}; position(s) "
                                      f"{left_out} left out of the fit and the plot</sup>"),
                      template="plotly_white", width=1300, height=650, legend={"x": 0, "y": 1})
    return fig


def pca_figure(pca, max_tokens: int = 40, title: str | None = None) -> go.Figure:
    """Trajectories of token directions in PC1/PC2 (``sdlib.experiments.sentence.PcaTrajectories``), one panel per model
    on shared axes: a solid path per token from the input h_-1 through the intermediate layers to h_{L-1}, and
    the last step h_{L-1} -> h_L as an arrow, the paper's jump. ◆ the input, ■ the last layer."""
    df = pca.frame()
    df = df[df["fitted"]]
    labels = list(dict.fromkeys(df["label"]))
    fig = make_subplots(rows=1, cols=len(labels), shared_xaxes=True, shared_yaxes=True, subplot_titles=labels,
                        horizontal_spacing=0.05)
    n_layers = df["layer"].max()
    for col, label in enumerate(labels, start=1):
        part = df[df["label"] == label]
        for t in sorted(part["token_index"].unique())[:max_tokens]:
            path = part[part["token_index"] == t].sort_values("layer")
            before = path[path["layer"] < n_layers]
            fig.add_trace(go.Scatter(x=before["pc1"], y=before["pc2"], mode="lines", showlegend=False,
                                     line={"color": "rgba(31,119,180,0.55)", "width": 1.5},
                                     hovertext=f"{path['token'].iloc[0]!r}", hoverinfo="text"), row=1, col=col)
            last, prev = path.iloc[-1], before.iloc[-1]
            axis = "" if col == 1 else str(col)
            fig.add_annotation(x=last["pc1"], y=last["pc2"], ax=prev["pc1"], ay=prev["pc2"], xref=f"x{axis}",
                               yref=f"y{axis}", axref=f"x{axis}", ayref=f"y{axis}", showarrow=True, arrowhead=2,
                               arrowsize=1, arrowwidth=1.3, arrowcolor="rgba(214,39,40,0.8)", text="")
        for layer, symbol, name, color in ((-1, "diamond", "input h_-1", "black"),
                                           (n_layers, "square", "last layer h_L", "#d62728")):
            ends = part[part["layer"] == layer]
            fig.add_trace(go.Scatter(x=ends["pc1"], y=ends["pc2"], mode="markers", name=name, showlegend=col == 1,
                                     legendgroup=name, marker={"size": 7, "symbol": symbol, "color": color}),
                          row=1, col=col)
        fig.update_xaxes(title_text=f"PC1 ({pca.explained[0]:.0%})", row=1, col=col)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="h_-1 ... h_L-1 (one line per token)",
                             line={"color": "rgba(31,119,180,0.8)"}))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="last step h_L-1 → h_L (arrow)",
                             line={"color": "#d62728"}))
    fig.update_yaxes(title_text=f"PC2 ({pca.explained[1]:.0%})", row=1, col=1)
    for axis, pc in ((fig.update_xaxes, "pc1"), (fig.update_yaxes, "pc2")):  # one scale for every panel
        low, high = float(df[pc].min()), float(df[pc].max())
        pad = 0.04 * (high - low or 1.0)
        axis(range=[low - pad, high + pad])
    left_out = ", ".join(str(p) for p in pca.excluded_positions) or "none"
    fig.update_layout(title=title or ("PCA of the hidden-state directions h_l / ||h_l||: each token's path and its "
                                      f"last step<br><sup>position(s) {left_out} left out of the fit and the plot</sup>"),
                      template="plotly_white", width=560 * len(labels) + 120, height=600,
                      legend={"orientation": "h", "y": -0.15, "x": 0})
    return fig


def layer_metric_figure(table, task: str, metric: str, log_y: bool = False, title: str | None = None,
                        y_title: str | None = None, zoom: bool = False) -> go.Figure:
    """One line per model (pretrained dashed) of ``metric`` against layer, from the tidy evaluation table (with
    ``role``, ``label`` and ``base_model`` columns); accuracies carry their 95% interval (``lo``/``hi``) as error
    bars. ``zoom``: a second panel with the late intermediate layers (the last third, the final layer left out) on
    their own scale, where the final layer's value would flatten them."""
    part = table[(table["task"] == task) & (table["metric"] == metric)]
    n_layers = int(part["layer"].max()) + 1 if len(part) else 0
    late = list(range(max(1, (2 * n_layers) // 3), n_layers - 1)) if zoom else []
    late = late if len(late) >= 2 else []  # a shallow model has nothing to enlarge
    fig = make_subplots(rows=1, cols=2 if late else 1, column_widths=[0.6, 0.4] if late else None,
                        horizontal_spacing=0.1, subplot_titles=["every layer", f"layers {late[0]}-{late[-1]} "
                                                                "(final layer left out)"] if late else None)
    colors = model_colors(list(zip(part["base_model"], part["role"], part["label"])))
    for label in dict.fromkeys(part["label"]):
        rows = part[part["label"] == label].sort_values("layer")
        line = {"color": colors[label], "dash": DASH[rows["role"].iloc[0]]}
        for col, shown in ((1, rows), (2, rows[rows["layer"].isin(late)])):
            if col == 2 and not late:
                continue
            bars = error_bars(shown["value"], shown["lo"], shown["hi"], thickness=1) if "lo" in shown else None
            fig.add_trace(go.Scatter(x=shown["layer"], y=shown["value"], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1, error_y=bars, line=line), row=1, col=col)
    n = int(part["n"].iloc[0]) if len(part) else 0
    max_length = part["max_length"].iloc[0] if len(part) else None
    for col in range(1, 3 if late else 2):
        fig.update_xaxes(title_text="layer l", row=1, col=col)
        fig.update_yaxes(type="log" if log_y else "linear", row=1, col=col)
    fig.update_yaxes(title_text=y_title or metric, row=1, col=1)
    fig.update_layout(title=title or f"{task}: {metric} per layer (logit lens; {n} documents, max_length {max_length})",
                      template="plotly_white", width=1300 if late else 900, height=520,
                      legend={"orientation": "h", "y": -0.18, "x": 0})
    return fig


def lens_rows(num_layers: int, max_rows: int = 12) -> list[int]:
    """The layers a lens heatmap shows: all of them up to ``max_rows``, else the last half of ``max_rows`` layers
    (where the lens starts to read) and evenly spaced earlier ones, always with layer 0."""
    if num_layers <= max_rows:
        return list(range(num_layers))
    tail = max_rows // 2
    early = np.linspace(0, num_layers - tail - 1, max_rows - tail).round().astype(int).tolist()
    return sorted(set(early) | set(range(num_layers - tail, num_layers)))


def lens_figure(grids: Sequence[Any], title: str = "Logit lens: top-1 token and probability per layer",
                max_rows: int = 12) -> go.Figure:
    """Per model (``sdlib.studies.lens_grid.LensGrid``), one under the other at full width: a heatmap (layers x
    positions; text = top-1 token, colour = its probability) above the movement curves D_l of the positions
    predicting the last tokens. Deep models show ``max_rows`` layers (``lens_rows``; the record keeps them all; ⋮
    marks a row after skipped layers), so the tokens read at README width."""
    n = len(grids)
    titles = [t for g in grids for t in (g.label, f"{g.label}: D_l at the positions predicting the last tokens")]
    fig = make_subplots(rows=2 * n, cols=1, row_heights=[0.68, 0.32] * n, vertical_spacing=0.06 / n + 0.02,
                        subplot_titles=titles)
    for m, g in enumerate(grids):
        heat_row, curve_row = 2 * m + 1, 2 * m + 2
        shown = lens_rows(len(g.top_tokens), max_rows)
        prob = np.asarray(g.top_prob)[shown]
        cols = [f"{i}: {show_token(inp)}→{show_token(tgt)}" for i, (inp, tgt) in enumerate(zip(g.inputs, g.targets))]
        text = [[f"{show_token(tok)}<br>{p:.2f}" for tok, p in zip(g.top_tokens[l], prob_row)]
                for l, prob_row in zip(shown, prob)]
        names = [f"⋮ layer {l}" if i and l - shown[i - 1] > 1 else f"layer {l}" for i, l in enumerate(shown)]
        fig.add_trace(go.Heatmap(z=prob, x=cols, y=names, text=text, texttemplate="%{text}",
                                 textfont={"size": 13}, colorscale="Blues", zmin=0, zmax=1, xgap=1, ygap=1,
                                 showscale=m == 0, colorbar={"title": "p(top-1)", "len": 0.5 / n, "y": 1,
                                                             "yanchor": "top"}), row=heat_row, col=1)
        fig.update_xaxes(tickangle=-20, tickfont={"size": 12}, row=heat_row, col=1)
        for j, last_state in enumerate(LAST_STATES):
            for k, curve in enumerate(g.movement_last[last_state]):
                target = show_token(g.targets[len(g.targets) - g.last + k])
                fig.add_trace(go.Scatter(x=list(range(len(curve))), y=curve, mode="lines", showlegend=m == 0,
                                         name=f"predicting {target} ({last_state})", legendgroup=f"{k}-{last_state}",
                                         line={"color": PALETTE[k % len(PALETTE)], "dash": "solid" if j == 0 else "dot"}),
                              row=curve_row, col=1)
        fig.update_xaxes(title_text="layer l", row=curve_row, col=1)
        fig.update_yaxes(title_text="D_l", row=curve_row, col=1)
    fig.update_layout(title=title, template="plotly_white", width=1100, height=820 * n + 120,
                      legend={"orientation": "h", "y": -0.04 / n, "x": 0}, margin={"l": 90, "r": 30, "t": 90, "b": 60})
    return fig


def table_figure(df, title: str = "Summary") -> go.Figure:
    """A plotly table of a DataFrame of strings (metrics in rows, one column per model), sized so nothing is cut
    off in the PNG: each column as wide as its longest line, an entry longer than its column's header (the setting
    S was measured on) wrapped onto lines as wide as the header, every line one row high."""
    import textwrap

    headers = [str(c).replace(" (", "<br>(") for c in df.columns]  # a model's label on two lines: name, then role
    cells = []
    for i, (header, c) in enumerate(zip(headers, df.columns)):
        limit = max(24, *(len(h) for h in header.split("<br>")))
        values = ["" if v is None else str(v) for v in df[c]]
        # the metric names (first column) stay on one line: their column is as wide as the longest
        cells.append(values if i == 0 else ["<br>".join(textwrap.wrap(v, limit, break_long_words=False)) or v
                                            for v in values])
    chars = [max(len(line) for entry in [header, *col] for line in entry.split("<br>"))
             for header, col in zip(headers, cells)]
    widths = [7 * n + 20 for n in chars]  # ~7 px per character at a 12 px font, plus padding
    lines = sum(max(entry.count("<br>") + 1 for entry in row) for row in zip(*cells))
    row = 26
    fig = go.Figure(go.Table(columnwidth=widths,
                             header={"values": [f"<b>{h}</b>" for h in headers], "align": "left", "height": 2 * row,
                                     "fill_color": "#e8eef7"},
                             cells={"values": cells, "align": ["left"] + ["right"] * (len(cells) - 1), "height": row,
                                    "fill_color": [["#ffffff", "#f6f8fb"] * (len(df) // 2 + 1)]}))
    fig.update_layout(title=title, width=sum(widths) + 60, height=row * (lines + 2) + 120,
                      margin={"l": 30, "r": 30, "t": 70, "b": 20})
    return fig


PRUNING_METHODS = {  # method -> (legend text, line dash, marker)
    "early_exit": ("early exit (logit lens)", "solid", "circle"),
    "movement": ("remove lowest-D layers (ShortGPT)", "dash", "square"),
    "last": ("remove the last layers before L", "dot", "diamond"),
}


def pruning_setting(studies: Sequence[Any]) -> str:
    """What the cuts were scored on, from the records' settings: LAMBADA passages, WikiText pages, max length."""
    settings = {(s.settings.get("lambada_openai"), s.settings.get("wikitext"), s.settings.get("max_length"))
                for s in studies}
    bars = " (95% intervals)" if all(r.lambada_lo is not None for s in studies for r in s.rows) else ""
    return "; ".join(f"LAMBADA first {n} passages{bars}, WikiText {p} page{'s' * (p != 1)}, max length {m}"
                     for n, p, m in sorted(settings, key=str))


def pruning_figure(studies: Sequence[Any], title: str = "Early exit and layer deletion") -> go.Figure:
    """LAMBADA accuracy (with its 95% interval over passages) and WikiText word perplexity against layers removed,
    and accuracy against the measured decoding speed-up (``sdlib.studies.early_exit.PruningStudy`` records). One
    colour per model, as in every figure (``model_colors``); the line and marker say the method."""
    colors = model_colors([(s.model or "", s.role, s.label) for s in studies])
    fig = make_subplots(rows=1, cols=3, subplot_titles=["LAMBADA accuracy [95%]", "WikiText word perplexity",
                                                        "LAMBADA accuracy vs decoding speed-up"])
    for study in studies:
        for method, (name, dash, symbol) in PRUNING_METHODS.items():
            rows = study.of(method)
            style = {"line": {"color": colors[study.label], "dash": dash}, "marker": {"symbol": symbol, "size": 7}}
            label = f"{study.label}: {name}"
            x = [r.layers_removed for r in rows]
            acc = [r.lambada() for r in rows]
            fig.add_trace(go.Scatter(x=x, y=[a.value for a in acc], mode="lines+markers", name=label,
                                     legendgroup=label, error_y=error_bars(*zip(*acc), thickness=1, width=3),
                                     **style), row=1, col=1)
            fig.add_trace(go.Scatter(x=x, y=[r.wikitext_word_ppl for r in rows], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=False, **style), row=1, col=2)
            timed = [r for r in rows if r.tokens_per_s]
            fig.add_trace(go.Scatter(x=[r.tokens_per_s / study.full_tokens_per_s for r in timed],
                                     y=[r.lambada_acc for r in timed], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=False, **style), row=1, col=3)
    for col, x_title in ((1, "decoder layers removed"), (2, "decoder layers removed"), (3, "speed-up (x)")):
        fig.update_xaxes(title_text=x_title, row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    setting = pruning_setting(studies)
    fig.update_layout(title=f"{title}<br><sup>{setting}</sup>" if setting else title, template="plotly_white",
                      width=1500, height=600, legend={"orientation": "h", "y": -0.2, "x": 0})
    return fig


def ablation_figure(table, title: str = "One-factor grid", target_ratio: float = 0.95) -> go.Figure:
    """Per grid cell: the change of S from the pretrained model in both conventions, paired over the same windows,
    with its 95% interval (the axis fits the changes, so the intervals show), and final-layer LAMBADA accuracy
    relative to the pretrained model with its paired interval (the 95% bar dotted). ``table``: the rows of
    ``sdlib.experiments.grid.collect``, the pretrained model first."""
    base, cells = table.iloc[0], table.iloc[1:]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        f"S minus the pretrained model's (normed {base['S_normed']:.3f}, pre_norm {base['S_pre_norm']:.3f}) [95%]",
        f"final-layer LAMBADA accuracy / pretrained ({base['lambada_final']:.3f}) [95%]"])
    for i, conv in enumerate(LAST_STATES):
        change, lo, hi = (cells[f"S_{conv}_change{s}"] for s in ("", "_lo", "_hi"))
        fig.add_trace(go.Scatter(x=cells["cell"], y=change, mode="markers", name=f"change of S ({conv})",
                                 marker={"color": PALETTE[i], "size": 10, "symbol": ("circle", "diamond")[i]},
                                 error_y=error_bars(change, lo, hi, thickness=2, width=6)), row=1, col=1)
    fig.add_hline(y=0, line={"color": "black", "width": 1}, row=1, col=1)
    ratio = cells["lambada_final_vs_pretrained"]
    bars = (error_bars(ratio, cells["lambada_final_vs_pretrained_lo"], cells["lambada_final_vs_pretrained_hi"],
                       thickness=2) if "lambada_final_vs_pretrained_lo" in cells else None)
    fig.add_trace(go.Bar(x=cells["cell"], y=ratio, name="LAMBADA final / pretrained", marker_color=PALETTE[2],
                         error_y=bars, text=[f"{v:.2f}" for v in ratio], textposition="inside",
                         insidetextanchor="middle"), row=1, col=2)
    fig.add_hline(y=target_ratio, line={"color": "black", "dash": "dot"}, row=1, col=2,
                  annotation_text=f"{target_ratio:.0%} of pretrained", annotation_position="top right")
    fig.update_yaxes(title_text="ΔS (paired)", row=1, col=1)
    fig.update_yaxes(range=[0, max(1.15, float(ratio.max()) + 0.1)], row=1, col=2)
    fig.update_xaxes(tickangle=-40)
    fig.update_layout(title=title, template="plotly_white", width=1400, height=640, font={"size": 14},
                      legend={"orientation": "h", "y": -0.45, "x": 0}, margin={"b": 200})
    return fig


TRAINING_PANELS = (  # (title, value of one logged measurement, y axis type)
    ("S (normed)", lambda r: r["S"]["normed"], "linear"),
    ("S (pre_norm)", lambda r: r["S"]["pre_norm"], "linear"),
    ("D_L (normed)", lambda r: r["D"]["normed"][-1], "linear"),
    ("D_L-1", lambda r: r["D"]["normed"][-2], "linear"),
    ("zeta2's last term, normed: ||h_L - h_L-1||² / ||h_L-1||²",
     lambda r: (r.get("last_step") or {}).get("zeta2_last", {}).get("normed"), "linear"),
    ("median ||h_L|| (normed) and ||h_L-1|| (dotted)", lambda r: (r.get("last_step") or {}).get("norm_h_last"), "linear"),
    ("massive channel's share of ||x_L||²", lambda r: (r.get("last_step") or {}).get("channel_share_x_last"), "linear"),
    ("output entropy (nats)", lambda r: (r.get("last_step") or {}).get("entropy_last"), "linear"),
)


def grid_training_figure(over_training: dict[str, list[dict[str, Any]]], title: str = "Over training") -> go.Figure:
    """Each cell's training-log measurements against the step: S in both conventions, D_L and D_L-1, zeta2's
    last-layer term, the norms of h_L and h_L-1, the massive channel's share of x_L and the output's entropy
    (how each recipe lowers its loss). ``over_training``: cell -> the ``EvalRecord`` dicts of its log."""
    rows, cols = 2, 4
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for t, _, _ in TRAINING_PANELS],
                        horizontal_spacing=0.06, vertical_spacing=0.16)
    for i, (cell, records) in enumerate(over_training.items()):
        color = PALETTE[i % len(PALETTE)]
        steps = [r["step"] for r in records]
        for j, (name, value, axis) in enumerate(TRAINING_PANELS):
            row, col = j // cols + 1, j % cols + 1
            fig.add_trace(go.Scatter(x=steps, y=[value(r) for r in records], mode="lines+markers", name=cell,
                                     legendgroup=cell, showlegend=j == 0, line={"color": color},
                                     marker={"size": 4}), row=row, col=col)
            if name.startswith("median ||h_L||"):
                fig.add_trace(go.Scatter(x=steps, y=[(r.get("last_step") or {}).get("norm_h_prev") for r in records],
                                         mode="lines", name=f"{cell}: ||h_L-1||", legendgroup=cell, showlegend=False,
                                         line={"color": color, "dash": "dot"}), row=row, col=col)
            fig.update_yaxes(type=axis, row=row, col=col)
            fig.update_xaxes(title_text="optimizer step" if row == rows else None, row=row, col=col)
    fig.update_layout(title=title, template="plotly_white", width=1700, height=760,
                      legend={"orientation": "h", "y": -0.12, "x": 0})
    return fig


ATLAS_GROUPS = ("embeddings", "blocks", "last_block", "final_norm", "lm_head")
GRADIENT_TERMS = {"zeta1": "gradient of zeta1 (plain bars)", "zeta2_normed": "of α·zeta2, normed h_L (/)",
                  "zeta2_pre_norm": "of α·zeta2, pre_norm h_L (·)"}
PPL_CAP = 1e20  # the perplexity panels' top: an early layer's 1e56 would flatten every other curve


def atlas_figure(records: Sequence[Any], title: str = "Convergence atlas") -> go.Figure:
    """The atlas of several models (``sdlib.studies.atlas.AtlasRecord``), against relative depth l / L:
    D_l (normed solid, pre_norm dotted); the last step per token split into the last block's and the final
    norm's rotation; the largest channel's share of ||h_l||^2; LAMBADA accuracy and WikiText word perplexity per
    layer; and, at initialisation, the gradient norm of zeta1 and of alpha * zeta2 (both conventions) per parameter group."""
    passages = _counts(r.evaluation.lambada_n for r in records)
    pages = _counts(r.evaluation.wikitext_n for r in records)
    fig = make_subplots(rows=2, cols=3, horizontal_spacing=0.07, vertical_spacing=0.14, subplot_titles=[
        "movement D_l (normed solid, pre_norm dotted)", "last step, median over tokens (position 0 excluded)",
        "largest channel's (solid) and 4 largest (dotted) share of ||h_l||²",
        f"LAMBADA accuracy per layer [95%], {passages} passages",
        f"WikiText word perplexity per layer, {pages} page(s)",
        "at initialisation: gradient norm per parameter group"])
    for i, r in enumerate(records):
        _atlas_model(fig, r, PALETTE[i % len(PALETTE)], str(i))
    ppl = [v for r in records for v in r.evaluation.wikitext_word_ppl]
    if ppl and max(ppl) > PPL_CAP:
        fig.update_yaxes(range=[0, np.log10(PPL_CAP)], row=2, col=2)
        fig.add_annotation(text=f"off scale: {sum(v > PPL_CAP for v in ppl)} point(s) above 1e{np.log10(PPL_CAP):.0f}",
                           xref="x5 domain", yref="y5 domain", x=0.98, y=0.98, showarrow=False, xanchor="right")
    for part, pattern in zip(GRADIENT_TERMS, ("", "/", ".")):  # the bar key: one legend entry per loss term
        fig.add_trace(go.Bar(x=[None], y=[None], name=GRADIENT_TERMS[part], legendgroup="terms",
                             marker={"color": "#bbbbbb", "pattern": {"shape": pattern}}), row=2, col=3)
    fig.add_annotation(text="no bar = exactly 0 (zeta1 on the last block: its lens is the teacher)",
                       xref="x6 domain", yref="y6 domain", x=0.5, y=-0.2, showarrow=False, font={"size": 13})
    for (row, col), x_title, y_title in (
            ((1, 1), "relative depth l / L", "D_l"), ((1, 2), None, "D per token"),
            ((1, 3), "relative depth l / L (h_-1 at -1/L)", "share"), ((2, 1), "relative depth l / L", "accuracy"),
            ((2, 2), "relative depth l / L", "word perplexity"), ((2, 3), None, "gradient norm (log)")):
        fig.update_xaxes(title_text=x_title, row=row, col=col)
        fig.update_yaxes(title_text=y_title, row=row, col=col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=3)
    fig.update_yaxes(type="log", row=2, col=2)
    fig.update_yaxes(type="log", row=2, col=3)
    fig.update_layout(title=_with_setting(title, [r.measurement for r in records]), template="plotly_white",
                      width=1500, height=1000, barmode="group",
                      font={"size": 16}, legend={"orientation": "h", "y": -0.12, "x": 0})
    fig.update_annotations(font_size=16)
    return fig


def _counts(values: Iterable[int]) -> str:
    """The count of items the records were evaluated on, once (``500``), or each model's where they differ."""
    distinct = list(dict.fromkeys(values))
    return f"{distinct[0]:,}" if len(distinct) == 1 else " / ".join(f"{v:,}" for v in distinct)


def _atlas_model(fig: go.Figure, r: Any, color: str, group: str) -> None:
    """One model's traces in the six atlas panels."""
    L = r.num_layers - 1
    depth = [l / L for l in range(L + 1)]
    common = {"legendgroup": r.model, "showlegend": False, "name": r.model}
    for last_state, dash in zip(LAST_STATES, ("solid", "dot")):
        S = r.measurement.S[last_state]
        fig.add_trace(go.Scatter(x=depth, y=r.measurement.D[last_state], mode="lines+markers", legendgroup=r.model,
                                 name=f"{r.model}: S {last_state} = {S:.3f}", marker={"size": 4},
                                 line={"color": color, "dash": dash}), row=1, col=1)
    parts = [("last block", r.last_step["block"].median_no_sink), ("final norm", r.last_step["norm"].median_no_sink),
             ("normed D_L", r.last_step["normed"].median_no_sink)]
    fig.add_trace(go.Bar(x=[p[0] for p in parts], y=[p[1] for p in parts], marker_color=color,
                         text=[f"{p[1]:.3f}" for p in parts], textposition="outside", **common), row=1, col=2)
    for share, dash in ((r.top_channel.share_median_no_sink, "solid"), (r.top_channel.top4_share_median_no_sink, "dot")):
        fig.add_trace(go.Scatter(x=[(i - 1) / L for i in range(len(share))], y=share, mode="lines",
                                 line={"color": color, "dash": dash}, **common), row=1, col=3)
    e = r.evaluation
    x = [l / L for l in e.layers]
    bars = error_bars(e.lambada_acc, e.lambada_lo, e.lambada_hi, thickness=1, width=2)
    for col, y, error in ((1, e.lambada_acc, bars), (2, e.wikitext_word_ppl, None)):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", marker={"size": 4}, line={"color": color},
                                 error_y=error, **common), row=2, col=col)
    g = r.init.grad_norms
    groups = [k for k in ATLAS_GROUPS if k in g["zeta1"]]
    for part, pattern in zip(GRADIENT_TERMS, ("", "/", ".")):
        norms = [g[part][k] if g[part][k] > 0 else None for k in groups]  # 0 has no place on a log axis
        fig.add_trace(go.Bar(x=groups, y=norms, marker={"color": color, "pattern": {"shape": pattern}},
                             legendgroup=r.model, showlegend=False, name=f"{r.model}: {part}",
                             offsetgroup=f"{group}-{part}"), row=2, col=3)


def gpu_study_figure(study: Any, title: str | None = None) -> go.Figure:
    """The GPU study (``sdlib.experiments.gpu.records.GpuStudy``): for each distilled model (the recipe, the second
    model), the movement curve before (dashed) and after (solid) in both conventions, S over training, and LAMBADA
    accuracy (with its 95% interval) and WikiText word perplexity per layer before and after."""
    runs = [study.stages[name] for name in ("recipe", "cosine") if study.finished(name)]
    fig = make_subplots(rows=len(runs) or 1, cols=4, horizontal_spacing=0.06, vertical_spacing=0.16,
                        subplot_titles=[t for s in runs for t in (
                            f"{s.config['model']}: D_l (normed ●, pre_norm ◆)", "S over training",
                            "LAMBADA accuracy per layer [95%]", "WikiText word perplexity per layer")])
    for row, s in enumerate(runs, start=1):
        for role, rec, dash in (("pretrained", s.before, "dash"), ("self-distilled", s.after, "solid")):
            if rec is not None:
                _gpu_scores(fig, row, role, rec, dash)
        for last_state, color in zip(LAST_STATES, PALETTE):
            points = s.S_over_training
            fig.add_trace(go.Scatter(x=[p["step"] * s.config["batch_size"] * s.config["seq_len"] for p in points],
                                     y=[p[last_state] for p in points], mode="lines+markers", showlegend=False,
                                     line={"color": color}, name=f"S {last_state}"), row=row, col=2)
        for col, x_title in ((1, "layer l"), (2, "training tokens (held-out WikiText-2 valid)"), (3, "layer l"),
                             (4, "layer l")):
            fig.update_xaxes(title_text=x_title, row=row, col=col)
        fig.update_yaxes(type="log", row=row, col=4)
    tokens = ", ".join(f"{s.config['model']}: {s.tokens:,} tokens ({s.fraction_of_paper_tokens:.1%} of the "
                       f"paper's 10M), zeta1 {s.zeta1}" for s in runs)
    fig.update_layout(title=title or f"GPU study on {study.environment.get('device', '?')}<br><sup>{tokens}</sup>",
                      template="plotly_white", width=1700, height=480 * max(1, len(runs)) + 80,
                      legend={"orientation": "h", "y": -0.12, "x": 0})
    return fig


def _gpu_scores(fig: go.Figure, row: int, role: str, rec: Any, dash: str) -> None:
    """One model's D curves, LAMBADA and WikiText per layer in a row of the GPU study figure."""
    for last_state, symbol, color in zip(LAST_STATES, ("circle", "diamond"), PALETTE):
        D = rec.D[last_state]
        fig.add_trace(go.Scatter(x=list(range(len(D))), y=D, mode="lines+markers", marker={"symbol": symbol},
                                 line={"dash": dash, "color": color}, showlegend=row == 1,
                                 name=f"{role}, {last_state}: S = {rec.S[last_state]:.3f}"), row=row, col=1)
    e = rec.evaluation
    layers, acc = e.layers, e.lambada_acc
    fig.add_trace(go.Scatter(x=layers, y=acc, mode="lines+markers", showlegend=False,
                             line={"dash": dash, "color": PALETTE[2]}, name=f"{role}: LAMBADA",
                             error_y=error_bars(acc, e.lambada_lo, e.lambada_hi)), row=row, col=3)
    fig.add_trace(go.Scatter(x=layers, y=e.wikitext_word_ppl, mode="lines+markers", showlegend=False,
                             line={"dash": dash, "color": PALETTE[3]}, name=f"{role}: WikiText"), row=row, col=4)


FOLD_READINGS = (("normed", "solid", "normed h_L (original)"), ("pre_norm", "dot", "pre-norm h_L = x_L"),
                 ("folded", "dash", "normed h_L after the fold"))


def for_model(mapping: dict[str, Any], model: str) -> Any:
    """``mapping``'s entry for a record's model: its own key, else the one key naming a folder of the same name (a
    run folder saved from another clone has another absolute path: ``/a/build/runs/x`` is ``/b/build/runs/x``)."""
    if model in mapping:
        return mapping[model]
    same = [v for k, v in mapping.items() if PurePath(k).name == PurePath(model).name]
    return same[0] if len(same) == 1 else None


def fold_split_figure(records: Sequence[Any], title: str = "The last step: the final gain's part and the block's own",
                      labels: dict[str, str] | None = None, colors: dict[str, str] | None = None) -> go.Figure:
    """Per model (``sdlib.studies.fold_split.FoldSplitRecord``): D_l against relative depth in the three readings
    (normed solid, pre-norm dotted, folded dashed; one colour per model), and the normed last step D_L as a stacked
    bar, the last block's own part (the folded D_L) under the final gain's part. ``labels`` names a record's
    model (a run folder, say), ``colors`` gives it its colour (``model_colors``), both keyed by the record's model
    (``for_model``). README width (880 px)."""
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.16, row_heights=[0.58, 0.42], subplot_titles=[
        "D_l: normed (solid), pre-norm (dotted), folded model's normed (dashed)",
        "normed D_L split: the last block's own turn (solid) + the final gain's coordinates (light)"])
    for i, r in enumerate(records):
        color = for_model(colors or {}, r.model) or PALETTE[i % len(PALETTE)]
        name = for_model(labels or {}, r.model) or r.model
        for reading, dash, what in FOLD_READINGS:
            D = r.D[reading]
            L = len(D) - 1
            s, lo, hi = r.S[reading]
            fig.add_trace(go.Scatter(x=[l / L for l in range(L + 1)], y=D, mode="lines", line={"color": color,
                                     "dash": dash, "width": 2}, name=f"{what}: S = {s:.3f} [{lo:.3f}, {hi:.3f}]",
                                     legendgroup=name, legendgrouptitle_text=name), row=1, col=1)
        fig.add_trace(go.Bar(x=[name], y=[r.block_part], marker_color=color, showlegend=False,
                             name=f"{name}: block", text=[f"block {r.block_part:.3f}"], textposition="inside"),
                      row=2, col=1)
        fig.add_trace(go.Bar(x=[name], y=[r.gain_part], marker_color=_tint(color, 0.6), showlegend=False,
                             name=f"{name}: final gain", text=[f"gain {r.gain_part:.3f}"], textposition="inside"),
                      row=2, col=1)
    fig.update_xaxes(title_text="relative depth l / L", row=1, col=1)
    fig.update_yaxes(title_text="D_l", row=1, col=1)
    fig.update_yaxes(title_text="normed D_L", row=2, col=1)
    settings = "; ".join(dict.fromkeys(r.setting for r in records))
    fig.update_layout(title=f"{title}<br><sup>S and D measured on {settings}</sup>", template="plotly_white", width=880,
                      height=1000, barmode="stack", legend={"orientation": "h", "y": -0.12, "x": 0, "font": {"size": 11}},
                      margin={"l": 60, "r": 20, "t": 110})
    return fig
