"""``report.html``: one self-contained page about a run, for people who do not open a GIS.

Everything is inside the file: CSS inline, images as base64 PNG data URIs, no script, no font or
style sheet from elsewhere, so it opens offline and can be mailed. It shows

- a map: the true-colour quicklook (``tasks.raster.quicklook``) with the analysed area and the
  landslide polygons outlined, coloured by confidence class;
- counts and areas by confidence class (``mean_prob``) and by slope class (``mean_slope_deg``), the
  classes of :mod:`tasks.vector.classes`, and a histogram of polygon sizes;
- the inputs (scenes, dates, ROI bbox, grid CRS) and the model card's summary: name, bands, labels,
  its metrics with the split and the labels they were measured against, and the caveats it states.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from tasks.core.files import atomic_write_text
from tasks.raster.quicklook import Quicklook
from tasks.vector.classes import (
    CONFIDENCE_CLASSES,
    NO_VALUE_CLASS,
    SLOPE_CLASSES_DEG,
    ValueClass,
    confidence_class,
    slope_class,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
CONFIDENCE_COLOURS = {"high": "#ff2d2d", "medium": "#ff9f1a", "low": "#ffe94d"}
FOOTPRINT_COLOUR = "#00e5ff"
MAP_WIDTH_IN = 9.0
LEGEND_HEIGHT_IN = 0.5  # below the map
FIG_DPI = 110


# ---------------------------------------------------------------------------------------------
# tables (pure)


def class_table(values: np.ndarray, areas_m2: np.ndarray, classes: Sequence[ValueClass],
                names: np.ndarray) -> list[dict[str, Any]]:
    """Rows ``{name, rule, count, area_m2}`` in the classes' order; a ``no value`` row when some
    polygon has none (e.g. no slope where the DEM had no data)."""
    rows = []
    for c in classes:
        sel = names == c.name
        rows.append({"name": c.name, "rule": _rule(c), "count": int(sel.sum()),
                     "area_m2": float(areas_m2[sel].sum())})
    sel = names == NO_VALUE_CLASS
    if sel.any():
        rows.append({"name": NO_VALUE_CLASS, "rule": "value missing", "count": int(sel.sum()),
                     "area_m2": float(areas_m2[sel].sum())})
    return rows


def _rule(c: ValueClass) -> str:
    if c.upper is None:
        return f"≥ {c.lower:g}"
    if not np.isfinite(c.lower):
        return f"< {c.upper:g}"
    return f"{c.lower:g} – < {c.upper:g}"


def summarize(landslides: gpd.GeoDataFrame) -> dict[str, Any]:
    """Counts and areas of a ``landslides`` layer, in total and by confidence and slope class."""
    areas = landslides["area_m2"].to_numpy(dtype=float) if len(landslides) else np.zeros(0)
    prob = landslides["mean_prob"].to_numpy(dtype=float) if len(landslides) else np.zeros(0)
    slope = landslides["mean_slope_deg"].to_numpy(dtype=float) if len(landslides) else np.zeros(0)
    return {"polygons": int(len(landslides)), "area_m2": float(areas.sum()),
            "confidence": class_table(prob, areas, CONFIDENCE_CLASSES, confidence_class(prob)),
            "slope": class_table(slope, areas, SLOPE_CLASSES_DEG, slope_class(slope))}


# ---------------------------------------------------------------------------------------------
# figures


def _png_data_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rings(geoms) -> list[np.ndarray]:
    """Exterior and interior rings of (Multi)Polygons as (N, 2) coordinate arrays."""
    out = []
    for g in geoms:
        for poly in getattr(g, "geoms", [g]):
            if poly.is_empty:
                continue
            out.append(np.asarray(poly.exterior.coords))
            out.extend(np.asarray(r.coords) for r in poly.interiors)
    return out


def map_figure(quicklook: Quicklook, landslides: gpd.GeoDataFrame, footprint: gpd.GeoDataFrame) -> str:
    """The quicklook with the footprint and the polygons outlined by confidence class (data URI)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    left, bottom, right, top = quicklook.bounds
    map_h_in = MAP_WIDTH_IN * (top - bottom) / (right - left)
    fig_h_in = map_h_in + LEGEND_HEIGHT_IN
    fig = Figure(figsize=(MAP_WIDTH_IN, fig_h_in))
    ax = fig.add_axes((0.0, LEGEND_HEIGHT_IN / fig_h_in, 1.0, map_h_in / fig_h_in))
    ax.set_facecolor("#d9d9d9")
    ax.imshow(quicklook.rgba, extent=(left, right, bottom, top), interpolation="bilinear")
    ax.add_collection(LineCollection(_rings(footprint.geometry), colors=FOOTPRINT_COLOUR,
                                     linewidths=1.2, linestyles="--"))
    handles = [Line2D([], [], color=FOOTPRINT_COLOUR, linestyle="--", label="analysed area")]
    names = confidence_class(landslides["mean_prob"].to_numpy(dtype=float)) if len(landslides) else None
    for c in reversed(CONFIDENCE_CLASSES):  # high confidence drawn last, on top
        sel = names == c.name if names is not None else np.zeros(0, bool)
        if sel.any():
            ax.add_collection(LineCollection(_rings(landslides.geometry[sel]),
                                             colors=CONFIDENCE_COLOURS[c.name], linewidths=0.8))
    for c in CONFIDENCE_CLASSES:
        n = int((names == c.name).sum()) if names is not None else 0
        handles.append(Line2D([], [], color=CONFIDENCE_COLOURS[c.name], linewidth=2,
                              label=f"{c.name} confidence (mean_prob {_rule(c)}): {n}"))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xticks([])
    ax.set_yticks([])
    _scale_bar(ax, left, right, bottom, top)
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False,
               borderaxespad=0.2)
    return _png_data_uri(fig)


def _scale_bar(ax, left: float, right: float, bottom: float, top: float) -> None:
    """A scale bar of a round length (about a fifth of the width), bottom left, in a metric CRS."""
    width_m = right - left
    target = width_m / 5
    length_m = max(v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                               100000, 200000) if v <= max(target, 10))
    x0, y0 = left + width_m * 0.03, bottom + (top - bottom) * 0.04
    ax.plot([x0, x0 + length_m], [y0, y0], color="white", linewidth=5, solid_capstyle="butt")
    ax.plot([x0, x0 + length_m], [y0, y0], color="black", linewidth=2.5, solid_capstyle="butt")
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    ax.text(x0 + length_m / 2, y0 + (top - bottom) * 0.015, label, ha="center", va="bottom",
            fontsize=8, color="black", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none",
                                             "pad": 1})


def size_histogram(areas_m2: np.ndarray) -> str:
    """Histogram of polygon areas on logarithmic bins (data URI)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(MAP_WIDTH_IN, 3.0))
    ax = fig.add_subplot(1, 1, 1)
    areas = areas_m2[np.isfinite(areas_m2) & (areas_m2 > 0)]
    if areas.size:
        # edges a little beyond the extremes: 10 ** log10(max) may round below max and drop it
        lo, hi = np.log10(areas.min()) - 1e-6, np.log10(areas.max()) + 1e-6
        bins = np.logspace(lo, hi if hi > lo + 1e-3 else lo + 1, 30)
        # log counts: the few large polygons (often most of the area) stay visible
        ax.hist(areas, bins=bins, color="#c0392b", edgecolor="white", linewidth=0.5, log=True)
        ax.set_xscale("log")
        ax.set_xlim(bins[0] / 1.1, bins[-1] * 1.1)
        ax.set_ylim(bottom=0.7)
    else:
        ax.text(0.5, 0.5, "no landslide polygons", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("polygon area (m²)")
    ax.set_ylabel("polygons (log scale)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png_data_uri(fig)


# ---------------------------------------------------------------------------------------------
# model card


def _metric_source(split: str, card: Mapping[str, Any]) -> str:
    """What a metrics entry of a card was measured against, in words; never 'accuracy'."""
    labels = (card.get("trained_on") or {}).get("labels") or ""
    dataset = (card.get("trained_on") or {}).get("dataset") or "the card's dataset"
    if "weak" in split:
        return (f"agreement with WEAK labels ({split}; not ground truth) on {dataset}")
    if "reference_predictions" in split:
        return f"agreement with a published model's predictions ({split}; not ground truth)"
    if "rule" in split:
        return f"agreement with the bare-soil rule ({split}; not ground truth)"
    part = {"train": "training split", "val": "validation split", "test": "test split"}.get(split, split)
    short = labels.split(":")[0] if labels else "the card's labels"
    return f"{part} of {dataset}, against {short}"


def card_summary(detector: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the manifest's detector record the report shows (model, ensemble or rule)."""
    card = detector.get("card") or {}
    kind = detector.get("kind", card.get("kind", "?"))
    if kind == "index":
        return {"name": detector.get("ref"), "kind": "weights-free bare-soil rule " + str(detector.get("rule")),
                "bands": detector.get("bands", []), "labels": "none (a fixed rule, not trained)",
                "metrics": [], "caveats_heading": "Caveats (the rule has no model card)",
                "caveats": ["A spectral-terrain rule: it flags bare soil on slopes, landslide or not "
                            "(fresh fields, quarries, river bars)."]}
    bands = card.get("bands") or sorted({b for m in detector.get("members", [])
                                         for b in (m.get("card") or {}).get("bands", [])})
    metrics = []
    for split, values in (card.get("metrics") or {}).items():
        if isinstance(values, Mapping):
            metrics.append({"split": split, "source": _metric_source(split, card),
                            **{k: values.get(k) for k in ("precision", "recall", "f1", "iou", "auc")}})
    arch = " ".join(str(card[k]) for k in ("arch", "encoder") if card.get(k))
    if kind == "ensemble":
        arch = f"ensemble ({card.get('rule')}) of {', '.join(card.get('members', []))}"
    caveats = [card["description"]] if card.get("description") else []
    trained = card.get("trained_on") or {}
    return {"name": card.get("name") or detector.get("ref"), "ref": detector.get("ref"), "kind": arch or kind,
            "bands": list(bands), "labels": trained.get("labels") or "see the member cards",
            "dataset": trained.get("dataset"), "split": trained.get("split"),
            "threshold": card.get("threshold"), "metrics": metrics, "caveats": caveats}


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
background:#f4f5f7;color:#1d2330;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.15em;margin:28px 0 8px;border-bottom:2px solid #d0d4dc;
padding-bottom:4px}.sub{color:#5b6475;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}.card{background:#fff;border-radius:8px;
padding:12px 16px;box-shadow:0 1px 3px rgba(0,0,0,.12);min-width:150px}.card b{display:block;
font-size:1.5em}.card span{color:#5b6475;font-size:.85em}
img{max-width:100%;height:auto;display:block;border-radius:6px;box-shadow:0 1px 4px rgba(0,0,0,.2)}
table{border-collapse:collapse;background:#fff;margin:8px 0;font-size:.92em;min-width:60%}
th,td{border:1px solid #d0d4dc;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#e8ebf0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;
vertical-align:middle;border:1px solid #888}
.caveat{background:#fff7e0;border-left:4px solid #f0b400;padding:8px 12px;margin:8px 0;font-size:.92em}
.note{color:#5b6475;font-size:.88em}code{background:#e8ebf0;padding:0 3px;border-radius:3px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _km2(m2: float) -> str:
    return f"{m2 / 1e6:,.3f}"


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else _e(v)


def _class_rows(rows: list[dict[str, Any]], total_m2: float, kind: str) -> str:
    out = []
    for r in rows:
        swatch = (f'<span class="swatch" style="background:{CONFIDENCE_COLOURS[r["name"]]}"></span>'
                  if kind == "confidence" and r["name"] in CONFIDENCE_COLOURS else "")
        share = 100 * r["area_m2"] / total_m2 if total_m2 else 0.0
        out.append(f'<tr data-{kind}-class="{_e(r["name"])}" data-count="{r["count"]}" '
                   f'data-area-m2="{r["area_m2"]:.1f}"><td>{swatch}{_e(r["name"])}</td><td>{_e(r["rule"])}</td>'
                   f'<td class="n">{r["count"]}</td><td class="n">{_km2(r["area_m2"])}</td>'
                   f'<td class="n">{share:.1f} %</td></tr>')
    return "\n".join(out)


def _inputs_rows(manifest: Mapping[str, Any]) -> str:
    inputs, grid = manifest["inputs"], manifest["grid"]
    roi = shapely.geometry.shape(manifest["roi_lonlat"]).bounds
    scenes = inputs.get("scenes") or [{"scene_id": s} for s in inputs.get("scene_ids") or []]
    scene_lines = "<br>".join(
        f"{_e(s.get('scene_id'))} (acquired {_e(s.get('acquired') or 'not recorded: a composite')}"
        f"{', cloud ' + _e(s.get('cloud_cover_pct')) + ' %' if s.get('cloud_cover_pct') is not None else ''})"
        for s in scenes)
    window = inputs.get("date_window") or [None, None]
    rows = [("source", f"{inputs.get('source')} ({inputs.get('kind')})"), ("region", inputs.get("region")),
            ("scenes", None), ("acquired", inputs.get("acquired") or "no scene date"),
            ("composite range", " .. ".join(str(v) for v in inputs.get("acquired_range") or []) or None),
            ("date window asked for", f"{window[0] or 'open'} .. {window[1] or 'open'}"),
            ("ROI bbox (EPSG:4326)", ", ".join(f"{v:.5f}" for v in roi)),
            ("grid", f"{grid['crs']}, {grid['res_m']:g} m, {grid['width']} x {grid['height']} px"),
            ("bands available", ", ".join(inputs.get("bands_available") or []))]
    event = inputs.get("event")
    if event:
        rows.append(("event", f"event date {event.get('event_date')}; pre-event scene "
                              f"{(event.get('pre_scene') or {}).get('scene_id')}"))
    out = []
    for k, v in rows:
        if k == "scenes":
            out.append(f"<tr><th>scenes</th><td>{scene_lines}</td></tr>")
        elif v is not None:
            out.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    return "\n".join(out)


def _model_html(card: Mapping[str, Any]) -> str:
    rows = [("name", card.get("name")), ("reference", card.get("ref")), ("model", card.get("kind")),
            ("bands", ", ".join(card.get("bands") or [])), ("threshold", card.get("threshold")),
            ("trained on", card.get("dataset")), ("labels", card.get("labels")), ("split", card.get("split"))]
    table = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v is not None)
    parts = [f"<table>{table}</table>"]
    if card.get("metrics"):
        head = ("<tr><th>metrics entry</th><th>measured against</th><th>precision</th><th>recall</th>"
                "<th>F1</th><th>IoU</th><th>AUC</th></tr>")
        body = "\n".join(
            f"<tr><td>{_e(m['split'])}</td><td>{_e(m['source'])}</td>"
            + "".join(f'<td class="n">{_num(m.get(k))}</td>' for k in ("precision", "recall", "f1", "iou", "auc"))
            + "</tr>" for m in card["metrics"])
        parts.append(f"<h3>Metrics stated by the card</h3><table>{head}{body}</table>"
                     "<p class=\"note\">Pixel-wise scores from the card, on the data it names; they are "
                     "not a measure of this run's correctness on other places or scenes. Agreement "
                     "with weak labels or another model's predictions is not accuracy.</p>")
    if card.get("caveats"):
        parts.append(f"<h3>{_e(card.get('caveats_heading', 'Caveats the card states'))}</h3>"
                     + "".join(f'<div class="caveat">{_e(c)}</div>' for c in card["caveats"]))
    return "\n".join(parts)


def render_report(manifest: Mapping[str, Any], landslides: gpd.GeoDataFrame, footprint: gpd.GeoDataFrame,
                  quicklook: Quicklook) -> str:
    """The report page as a string (see the module's docstring)."""
    summary = summarize(landslides)
    counts = manifest["counts"]
    card = card_summary(manifest["detector"])
    total = summary["area_m2"]
    map_uri = map_figure(quicklook, landslides, footprint)
    hist_uri = size_histogram(landslides["area_m2"].to_numpy(dtype=float) if len(landslides) else np.zeros(0))
    background = ("true colour B04/B03/B02, 2-98 % stretch" if quicklook.has_rgb else
                  "grey: the inputs have no true-colour bands")
    head = ("<tr><th>class</th><th>rule</th><th>polygons</th><th>area (km²)</th>"
            "<th>share of area</th></tr>")
    versions = manifest.get("versions", {})
    region = manifest["inputs"].get("region")
    status = "" if counts["footprint_status"] == "analysed" else f" ({_e(counts['footprint_status'])})"
    names = sorted({*(manifest.get("outputs") or {}), "manifest.json"})
    files = ", ".join(f'<a href="./{_e(n)}">{_e(n)}</a>' for n in names)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Landslide scan {_e(manifest['run_id'])}</title>
<style>{CSS}</style></head>
<body><main>
<h1>Landslide scan{_e(' of ' + region if region else '')}</h1>
<p class="sub">run <code>{_e(manifest['run_id'])}</code> · finished {_e(manifest.get('finished_at'))} ·
detector <code>{_e(manifest['detector'].get('ref'))}</code></p>
<div class="cards">
<div class="card" id="total-polygons" data-count="{summary['polygons']}"><b>{summary['polygons']:,}</b><span>landslide polygons</span></div>
<div class="card" id="total-area" data-area-m2="{total:.1f}"><b>{_km2(total)}</b><span>km² of landslides</span></div>
<div class="card"><b>{_km2(counts['footprint_area_m2'])}</b><span>km² analysed{status}</span></div>
<div class="card"><b>{100 * counts['valid_fraction']:.1f} %</b><span>of the grid analysed</span></div>
</div>
<h2>Map</h2>
<img id="map" alt="landslide polygons over the quicklook" src="{map_uri}">
<p class="note">Background: {_e(background)}. Outside the analysed area no polygon means "not looked at", not
"no landslide". Polygons are outlined by confidence class.</p>
<h2>By confidence (mean probability of the polygon)</h2>
<table id="confidence">{head}{_class_rows(summary['confidence'], total, 'confidence')}</table>
<p class="note">Classes of <code>mean_prob</code>; they rank the detector's certainty and are not calibrated
error rates.</p>
<h2>By slope (mean slope of the polygon)</h2>
<table id="slope">{head}{_class_rows(summary['slope'], total, 'slope')}</table>
<h2>Polygon sizes</h2>
<img id="histogram" alt="histogram of polygon areas" src="{hist_uri}">
<h2>Inputs</h2>
<table id="inputs">{_inputs_rows(manifest)}</table>
<h2>Model</h2>
{_model_html(card)}
<h2>Files of this run</h2>
<p>{files}</p>
<p class="note">landslide-pipeline {_e(versions.get('landslide-pipeline', ''))} · Python {_e(versions.get('python', ''))}
· GDAL {_e(versions.get('gdal', ''))} · torch {_e(versions.get('torch', ''))}. All figures are inside this file.</p>
</main></body></html>
"""


def write_report(path: str | Path, gpkg_path: str | Path, manifest: Mapping[str, Any],
                 quicklook: Quicklook) -> Path:
    """Render the report of a run and write it (renamed into place when complete)."""
    landslides = gpd.read_file(gpkg_path, layer="landslides", engine="pyogrio")
    footprint = gpd.read_file(gpkg_path, layer="footprint", engine="pyogrio")
    text = render_report(manifest, landslides, footprint, quicklook)
    atomic_write_text(path, text)
    log.info("wrote %s (%d kB)", path, len(text) // 1000)
    return Path(path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
