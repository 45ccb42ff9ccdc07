"""The landslide web app (Streamlit). Start it with ``landslide app``.

Pages: New scan (a catalog region, a bbox, or uploaded files; the scan is the ``landslide scan``
command in a child process, see ``webapp/jobs.py``), Results (map, attribute table, summary,
downloads), Runs & inventories, Review. The map is deck.gl as Streamlit bundles it, with no
basemap unless ``--basemap-style`` names one: it works with no internet at all.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pydeck as pdk
import streamlit as st

from tasks.core.errors import InputError
from tasks.run.view import (
    bbox_text,
    fit_view,
    list_runs,
    pick_grid,
    polygons_geojson,
    read_polygons_lonlat,
    read_run_view,
    span_bbox,
    zip_run,
)
from webapp import uploads
from webapp.jobs import JobStore
from webapp.settings import MAP_HEIGHT_PX, MAP_WIDTH_GUESS_PX, PICKER_HEIGHT_PX, load_settings

FOOTPRINT_COLOUR = [40, 40, 40, 255]
# a MapLibre style with no source: a plain background and nothing fetched (no internet needed)
# (as a data: URL: Streamlit's map takes a style URL, and the browser reads this one from itself)
OFFLINE_MAP_STYLE = "data:application/json;base64," + base64.b64encode(json.dumps(
    {"version": 8, "sources": {}, "layers": [
        {"id": "background", "type": "background", "paint": {"background-color": "#eef0ec"}}]}).encode()).decode()
SELECTED_COLOUR = [0, 200, 255, 255]
S2_FIRST_DAY = dt.date(2015, 6, 23)  # Sentinel-2A's launch: the first day a date field accepts

st.set_page_config(page_title="Landslide pipeline", layout="wide")
SETTINGS = load_settings()


@st.cache_resource
def job_store() -> JobStore:
    """Once per app process: the scan jobs, and old sessions' uploads removed."""
    uploads.prune_sessions(SETTINGS.app_dir / "uploads")
    return JobStore(SETTINGS.app_dir / "jobs", python=SETTINGS.python)


@st.cache_data(show_spinner=False)
def detector_cards() -> list[dict]:
    from models.cards import summarize_checkpoints

    return [s.as_dict() for s in summarize_checkpoints()]


@st.cache_data(show_spinner=False, ttl=30)
def catalog_lists() -> tuple[dict[str, dict], dict[str, str]]:
    from tasks.sources.catalog import load_catalog

    catalog = load_catalog(SETTINGS.catalog)
    regions = {name: {"source": r.source, "description": r.description,
                      "bbox": list(r.bbox) if r.bbox else None} for name, r in catalog.regions.items()}
    sources = {name: s.kind for name, s in catalog.sources.items()}
    return regions, sources


@st.cache_data(show_spinner=False, max_entries=8)
def run_view(path: str, stamp: float):  # stamp: the manifest's mtime, so a rerun into the folder shows
    return read_run_view(path)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _card_label(card: dict) -> str:
    """One line per detector: network, bands, and the validation F1 only for real labels (a weak-label
    agreement is not accuracy)."""
    default = " (default)" if card.get("default") else ""
    val = next((m for m in card["metrics"] if m["name"] == "val" and m.get("f1") is not None), None)
    if card["labels"] == "real" and val is not None:
        metric = f"val F1 {val['f1']:.2f} on real labels"
    else:
        metric = f"{card['labels']} labels, no accuracy figure"
    return f"{card['name']}{default}: {card['network']}, {' '.join(card['bands'])}; {metric}"


# ---------------------------------------------------------------------------------------------
# the map


def polygon_layers(geojson: dict, selected_id: int | None = None, id_field: str = "landslide_id") -> list:
    """The pickable ``landslides`` layer (each feature's ``fill``/``line`` colours), and an outline
    of the feature whose ``id_field`` is ``selected_id``."""
    layers = [pdk.Layer("GeoJsonLayer", id="landslides", data=geojson, pickable=True, stroked=True,
                        filled=True, get_fill_color="properties.fill", get_line_color="properties.line",
                        line_width_min_pixels=1, auto_highlight=True, highlight_color=[0, 200, 255, 160])]
    if selected_id is not None:
        chosen = [f for f in geojson["features"] if f["properties"].get(id_field) == selected_id]
        layers.append(pdk.Layer("GeoJsonLayer", id="selected", data={"type": "FeatureCollection",
                                                                    "features": chosen},
                                stroked=True, filled=False, get_line_color=SELECTED_COLOUR,
                                line_width_min_pixels=3))
    return layers


def make_deck(layers: list, bounds_lonlat, height_px: int, tooltip) -> tuple[pdk.Deck, dict]:
    """A deck fitted to ``bounds_lonlat`` on the offline style (or ``--basemap-style``), and its
    view (the browser tests read it back from the caption)."""
    fit = fit_view(tuple(bounds_lonlat), MAP_WIDTH_GUESS_PX, height_px)
    deck = pdk.Deck(layers=layers, initial_view_state=pdk.ViewState(**fit), map_provider="carto",
                    map_style=SETTINGS.basemap_style or OFFLINE_MAP_STYLE, tooltip=tooltip)
    return deck, fit


def run_deck(view, *, quicklook: bool, probability: bool, polygons: bool, footprint: bool) -> tuple[pdk.Deck, dict]:
    """The results map of a run with the layers switched on."""
    layers = []
    if quicklook and view.quicklook_png:
        layers.append(pdk.Layer("BitmapLayer", id="quicklook", image=pdk.types.String(_data_uri(view.quicklook_png)),
                                bounds=view.corners_lonlat))
    if probability and view.probability_png:
        layers.append(pdk.Layer("BitmapLayer", id="probability", image=pdk.types.String(_data_uri(view.probability_png)),
                                bounds=view.corners_lonlat))
    if footprint:
        layers.append(pdk.Layer("GeoJsonLayer", id="footprint", data=view.footprint_geojson, stroked=True,
                                filled=False, get_line_color=FOOTPRINT_COLOUR, line_width_min_pixels=2))
    if polygons:
        layers += polygon_layers(view.polygons_geojson())
    return make_deck(layers, view.bounds_lonlat, MAP_HEIGHT_PX,
                     {"html": "<b>#{landslide_id}</b> p̄ {mean_prob}<br/>{area_m2} m²<br/>slope {mean_slope_deg}°"})


def map_bbox_picker(bounds: list[float], key: str, field: str) -> None:
    """A grid over ``bounds``; the user clicks two cells, and the bbox spanning them goes into the
    text field ``field`` (``--bbox`` text) once, when the second click arrives: typing in the field
    afterwards wins. Earlier runs' quicklooks are drawn for orientation."""
    grid = pick_grid(tuple(bounds))
    picks: list[list[float]] = st.session_state.setdefault(f"{key}_picks", [])
    layers = [pdk.Layer("GeoJsonLayer", id="cells", data=grid, pickable=True, stroked=True, filled=True,
                        get_fill_color=[255, 255, 255, 1], get_line_color=[120, 120, 120, 90],
                        line_width_min_pixels=1, auto_highlight=True, highlight_color=[0, 120, 255, 90])]
    for run in list_runs(SETTINGS.runs_dir)[:20]:
        try:
            view = run_view(str(run.path), (run.path / "manifest.json").stat().st_mtime)
        except (InputError, OSError, ValueError):
            continue
        if view.quicklook_png:
            layers.insert(0, pdk.Layer("BitmapLayer", id=f"ql_{run.path.name}",
                                       image=pdk.types.String(_data_uri(view.quicklook_png)),
                                       bounds=view.corners_lonlat))
    if len(picks) == 2:
        w, s_, e, n = span_bbox(*picks)
        layers.append(pdk.Layer("GeoJsonLayer", id="picked", data={"type": "Feature", "geometry": {
            "type": "Polygon", "coordinates": [[[w, s_], [e, s_], [e, n], [w, n], [w, s_]]]}},
            stroked=True, filled=True, get_fill_color=[0, 120, 255, 50], get_line_color=[0, 90, 220, 255],
            line_width_min_pixels=2))
    deck, _ = make_deck(layers, bounds, PICKER_HEIGHT_PX, tooltip=False)
    event = st.pydeck_chart(deck, height=PICKER_HEIGHT_PX, on_select="rerun", selection_mode="single-object", key=key)
    cell = _selected_feature(event, "cells")
    if cell is not None:
        bbox = (cell.get("properties") or cell)["bbox"]
        if not picks or picks[-1] != bbox:
            if len(picks) == 2:  # a third click starts a new pick
                picks.clear()
            picks.append(bbox)
            if len(picks) == 2:  # the field is created below this map, so it may be set here
                st.session_state[field] = bbox_text(span_bbox(*picks))
            st.rerun()
    if len(picks) == 2:
        state = f"Picked: {bbox_text(span_bbox(*picks))} (a third click starts over from its cell)."
    elif picks:
        state = f"First corner: {bbox_text(picks[0])}. Click the opposite corner's cell."
    else:
        state = "Click one corner cell, then the opposite one."
    st.caption("Earlier runs' quicklooks are drawn where they exist. " + state)


def _selected_feature(event, layer_id: str = "landslides") -> dict | None:
    try:
        objects = event.selection["objects"].get(layer_id) or []
    except (AttributeError, KeyError, TypeError):
        return None
    return objects[0] if objects else None


def show_attributes(props: dict) -> None:
    shown = {k: v for k, v in props.items() if k not in ("fill", "line")}
    st.dataframe(pd.DataFrame({"field": list(shown), "value": ["" if v is None else str(v) for v in shown.values()]}),
                 hide_index=True, width="stretch")


# ---------------------------------------------------------------------------------------------
# pages


def page_new_scan() -> None:
    st.title("New scan")
    regions, sources = catalog_lists()
    cards = detector_cards()
    kind = st.radio("Input", ["Catalog region", "Bounding box", "Upload files"], horizontal=True,
                    key="scan_kind")
    args: list[str] = []
    problem = None
    upload_dir = None
    if kind == "Catalog region":
        region = st.selectbox("Region", sorted(regions), key="scan_region",
                              format_func=lambda r: f"{r} — {regions[r]['description']}")
        args += ["--region", region]
        if regions[region]["bbox"]:
            with st.expander("Pick the crop on the map (click two corner cells)"):
                map_bbox_picker(regions[region]["bbox"], key=f"pick_{region}", field="scan_bbox_crop")
        crop = st.text_input("Crop to a bbox inside the region (optional): west,south,east,north "
                             "in degrees", key="scan_bbox_crop")
        if crop.strip():
            args += ["--bbox", crop.replace(" ", "")]
    elif kind == "Bounding box":
        source = st.selectbox("Source", sorted(sources), key="scan_source",
                              format_func=lambda s: f"{s} ({sources[s]})")
        bbox_text = st.text_input("Bounding box: west,south,east,north in degrees (EPSG:4326)",
                                  key="scan_bbox", placeholder="141.95,42.70,141.98,42.72")
        args += ["--source", source]
        if bbox_text.strip():
            args += ["--bbox", bbox_text.replace(" ", "")]
        else:
            problem = "type a bounding box"
        c1, c2 = st.columns(2)
        start = c1.date_input("First date", value=None, key="scan_start", min_value=S2_FIRST_DAY)
        end = c2.date_input("Last date", value=None, key="scan_end", min_value=S2_FIRST_DAY)
        if start:
            args += ["--start", start.isoformat()]
        if end:
            args += ["--end", end.isoformat()]
    else:
        args, problem, upload_dir = _upload_inputs()
        if args and args[0] == "predict-patch":
            return  # the patch was handled on the spot
    if kind != "Upload files" and SETTINGS.catalog:
        args += ["--catalog", SETTINGS.catalog]
    if kind != "Upload files":
        event = st.checkbox("Event mode: compare the best scenes before and after an event date",
                            key="scan_event_on")
        if event:
            event_date = st.date_input("Event date", value=dt.date(2018, 9, 6), key="scan_event_date",
                                       min_value=S2_FIRST_DAY)
            args += ["--event-date", event_date.isoformat()]
    choice = st.selectbox("Detector", ["(the card's default)"] + [c["name"] for c in cards],
                          key="scan_detector",
                          format_func=lambda n: n if n.startswith("(") else
                          _card_label(next(c for c in cards if c["name"] == n)))
    if not choice.startswith("("):
        args += ["--checkpoint", choice]
        card = next(c for c in cards if c["name"] == choice)
        with st.expander("Detector card"):
            st.write(f"**bands** {' '.join(card['bands'])}  \n**labels** {card['labels_text']}")
            rows = [{"metrics": m["name"], "F1": m.get("f1"), "IoU": m.get("iou"),
                     "measured against": m["basis"]} for m in card["metrics"]]
            if rows:
                st.dataframe(pd.DataFrame(rows), hide_index=True)
    if st.button("Run scan", type="primary", disabled=problem is not None, key="scan_run",
                 help=problem):
        store = job_store()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = SETTINGS.runs_dir / f"app-{stamp}-{len(store.jobs()):03d}"
        job_id = store.start(args, out)
        st.session_state["job_id"] = job_id
        if upload_dir is not None:
            st.session_state.setdefault("upload_dirs", []).append(str(upload_dir))
    if problem:
        st.caption(f"Not ready: {problem}.")
    if st.session_state.get("job_id"):
        job_panel(st.session_state["job_id"])


@st.fragment(run_every=1.0)
def job_panel(job_id: str) -> None:
    state = job_store().state(job_id)
    box = st.container(border=True, key="job_panel")
    box.markdown(f"**Scan {job_id}** → `{state.out}`")
    if state.status == "running":
        pct = state.progress[1] if state.progress else 0
        label = f"{state.stage}" + (f" ({state.progress[0]} {pct} %)" if state.progress else "")
        box.progress(pct / 100, text=label)
        if box.button("Stop this scan", key=f"stop_{job_id}"):
            job_store().cancel(job_id)
    elif state.status == "failed":
        box.error(f"error: {state.error}", icon=":material/error:")
    else:
        c = (state.result or {}).get("counts", {})
        if c and not c.get("valid_fraction"):
            box.warning(f"nothing was analysed ({c.get('footprint_status')}): 0 landslide polygons")
        else:
            box.success(f"done: {c.get('polygons', '?')} landslide polygons "
                        f"({c.get('landslide_area_m2', 0) / 1e6:.3f} km²)", icon=":material/check_circle:")
        st.session_state["run_path"] = (state.result or {}).get("out", state.out)
        box.page_link(PAGES["results"], label="Open the results", icon=":material/map:")
    with box.expander("Log"):
        st.code("\n".join(state.log_tail) or "(nothing yet)", language=None)


def _upload_inputs() -> tuple[list[str], str | None, Path | None]:
    """The upload form: (scan arguments, what is missing or None, the session's upload folder)."""
    max_bytes = SETTINGS.max_upload_mb * 1_000_000
    what = st.radio("Files", ["One multi-band GeoTIFF", "Separate band files",
                              "Landslide4Sense .h5 patch (no georeference)"], key="upload_kind")
    sid = st.session_state.setdefault("upload_session", uploads.session_folder(
        SETTINGS.app_dir / "uploads").name)
    folder = uploads.session_folder(SETTINGS.app_dir / "uploads", sid)
    try:
        if what.startswith("Landslide4Sense"):
            patch = st.file_uploader("L4S patch (.h5)", type=["h5"], key="upload_patch")
            if patch is None:
                return [], "upload a patch", folder
            path = uploads.save_upload(folder, patch.name, patch.getvalue(), max_bytes, uploads.PATCH_SUFFIXES)
            _patch_result(path, folder)
            return ["predict-patch"], None, folder
        if what == "One multi-band GeoTIFF":
            image = st.file_uploader("Image (GeoTIFF)", type=["tif", "tiff"], key="upload_image")
            if image is None:
                return [], "upload an image", folder
            image_path = uploads.save_upload(folder, image.name, image.getvalue(), max_bytes,
                                             uploads.RASTER_SUFFIXES)
            count, descriptions = uploads.check_raster(image_path)
            st.caption(f"{image_path.name}: {count} bands; descriptions: "
                       f"{', '.join(d or '—' for d in descriptions)}")
        else:
            files = st.file_uploader("Band files (one band each, same CRS)", type=["tif", "tiff", "jp2"],
                                     accept_multiple_files=True, key="upload_bands")
            if not files:
                return [], "upload the band files", folder
            paths = [uploads.save_upload(folder, f.name, f.getvalue(), max_bytes, uploads.RASTER_SUFFIXES)
                     for f in files]
            for p in paths:
                uploads.check_raster(p)
            from tasks.raster.vrt import band_names_from_filenames, stack_band_files

            guessed = band_names_from_filenames([p.name for p in paths])
            names_text = st.text_input("Band of each file, in the order listed (e.g. B02,B03,B04)",
                                       value=",".join(guessed) if all(guessed) else "", key="upload_band_names")
            names = [n.strip() for n in names_text.split(",") if n.strip()]
            if len(names) != len(paths):
                return [], f"name one band per file ({len(paths)} files, {len(names)} names)", folder
            image_path = stack_band_files(paths, names, folder / "bands.vrt")
            count, descriptions = len(paths), names
        bands_text = st.text_input("Band names in file order, if the file's band descriptions do not "
                                   "say (e.g. B02,B03,B04)", key="upload_image_bands")
        dem = st.file_uploader("DEM (GeoTIFF, metres; optional: slope and elevation come from it)",
                               type=["tif", "tiff"], key="upload_dem")
        acquired = st.date_input("Acquisition date (optional; else from the file's metadata)", value=None,
                                 key="upload_acquired", min_value=S2_FIRST_DAY)
        args = ["--image", str(image_path)]
        if bands_text.strip():
            args += ["--bands", bands_text.replace(" ", "")]
        if dem is not None:
            dem_path = uploads.save_upload(folder, dem.name, dem.getvalue(), max_bytes, uploads.RASTER_SUFFIXES)
            uploads.check_raster(dem_path)
            args += ["--dem", str(dem_path)]
        if acquired:
            args += ["--acquired", acquired.isoformat()]
        return args, None, folder
    except uploads.UploadError as exc:
        st.error(str(exc), icon=":material/error:")
        return [], "fix the upload", folder


def _patch_result(path: Path, folder: Path) -> None:
    """Run ``landslide predict-patch`` on an uploaded L4S patch and offer its PNG and .npy."""
    import subprocess

    out = folder / f"{path.stem}-prediction"
    st.caption("A Landslide4Sense patch carries no georeference: the result is a probability image and "
               "an array, not polygons. The shipped detectors were trained on the Iburi 2018 scene "
               "(see their cards), not on Landslide4Sense data; read the result with that in mind.")
    if st.button("Predict", type="primary", key="patch_run"):
        with st.spinner("predicting"):
            proc = subprocess.run([SETTINGS.python, "-m", "flows.cli", "predict-patch", str(path),
                                   "--out", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
            st.error(lines[-1] if lines else proc.stderr.strip().splitlines()[-1], icon=":material/error:")
            return
        st.session_state["patch_out"] = str(out)
    done = st.session_state.get("patch_out")
    if done and Path(done).is_dir() and Path(done).name == out.name:
        pngs = sorted(Path(done).glob("*.png"))
        cols = st.columns(max(1, len(pngs)))
        for col, png in zip(cols, pngs):
            col.image(str(png), caption=png.name, width=256)
        for f in sorted(Path(done).iterdir()):
            st.download_button(f"Download {f.name}", f.read_bytes(), file_name=f.name, key=f"dl_{f.name}")


def page_results() -> None:
    st.title("Results")
    runs = list_runs(SETTINGS.runs_dir)
    if not runs:
        st.info(f"No finished run in {SETTINGS.runs_dir} yet: start one on the New scan page.")
        return
    paths = [str(r.path) for r in runs]
    wanted = st.session_state.get("run_path")
    index = paths.index(str(Path(wanted).resolve())) if wanted and str(Path(wanted).resolve()) in paths else 0
    by_path = {str(r.path): r for r in runs}
    chosen = st.selectbox("Run", paths, index=index, key="results_run",
                          format_func=lambda p: f"{by_path[p].run_id} — {by_path[p].where} — "
                                                f"{by_path[p].polygons} polygons")
    st.session_state["run_path"] = chosen
    view = run_view(chosen, (Path(chosen) / "manifest.json").stat().st_mtime)
    counts = view.manifest.get("counts", {})
    if not counts.get("valid_fraction"):
        st.warning(f"Nothing was analysed ({counts.get('footprint_status')}): no polygon here means "
                   "\"not looked at\", not \"no landslide\".")
    left, right = st.columns([3, 2])
    with left:
        t = st.columns(4)
        show = dict(quicklook=t[0].checkbox("Quicklook", True, key="layer_quicklook"),
                    probability=t[1].checkbox("Probability", True, key="layer_probability"),
                    polygons=t[2].checkbox("Polygons", True, key="layer_polygons"),
                    footprint=t[3].checkbox("Footprint", True, key="layer_footprint"))
        deck, fit = run_deck(view, **show)
        event = st.pydeck_chart(deck, height=MAP_HEIGHT_PX, on_select="rerun",
                                selection_mode="single-object", key=f"map_{Path(chosen).name}")
        st.caption(f"Map view: {fit['latitude']:.6f} N, {fit['longitude']:.6f} E, zoom {fit['zoom']:.4f}; "
                   "click a polygon for its attributes.")
    with right:
        s = view.summary
        st.markdown(f"#### {s['polygons']} landslides, {s['area_m2'] / 1e6:.3f} km²  \n"
                    f"in {counts.get('footprint_area_m2', 0) / 1e6:.2f} km² analysed")
        st.markdown("**Area by slope class**")
        st.dataframe(pd.DataFrame(s["slope"]), hide_index=True, width="stretch")
        st.markdown("**By confidence (mean probability)**")
        st.dataframe(pd.DataFrame(s["confidence"]), hide_index=True, width="stretch")
        feature = _selected_feature(event)
        if feature is not None:
            props = feature.get("properties", feature)
            st.markdown(f"**Landslide #{props.get('landslide_id')}**")
            show_attributes(props)
    st.markdown("**Attribute table** (click a column to sort)")
    table = view.polygons.drop(columns=view.polygons.geometry.name)
    st.dataframe(table, hide_index=True, width="stretch", key="results_table")
    _downloads(Path(chosen))


def _downloads(run: Path) -> None:
    st.markdown("**Downloads**")
    cols = st.columns(6)
    files = [("GeoPackage", "landslides.gpkg", "application/geopackage+sqlite3"),
             ("Probability COG", "probability.tif", "image/tiff"),
             ("Uncertainty COG", "uncertainty.tif", "image/tiff"),
             ("Mask COG", "mask.tif", "image/tiff"),
             ("Manifest", "manifest.json", "application/json")]
    for col, (label, name, mime) in zip(cols, files):
        path = run / name
        if path.is_file():
            col.download_button(label, path.read_bytes(), file_name=name, mime=mime, key=f"dl_{name}")
    cols[5].download_button("Run (zip)", zip_run(run), file_name=f"{run.name}.zip", mime="application/zip",
                            key="dl_zip")


def page_runs() -> None:
    st.title("Runs and inventories")
    runs = list_runs(SETTINGS.runs_dir)
    st.subheader(f"Runs in {SETTINGS.runs_dir}")
    if runs:
        table = pd.DataFrame([{"run": r.run_id, "finished": r.created, "where": r.where,
                               "polygons": r.polygons, "area km²": round(r.landslide_area_m2 / 1e6, 3),
                               "status": r.status, "folder": str(r.path)} for r in runs])
        picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun",
                              selection_mode="single-row", key="runs_table")
        rows = picked.selection.rows if picked is not None else []
        if rows and st.button("Open the selected run", key="runs_open"):
            st.session_state["run_path"] = table.iloc[rows[0]]["folder"]
            st.switch_page(PAGES["results"])
    else:
        st.info("No finished run yet.")
    st.subheader(f"Regional inventories in {SETTINGS.state_dir}")
    inventories = sorted(SETTINGS.state_dir.glob("*/inventory.gpkg"))
    if not inventories:
        st.info("No regional inventory yet: `landslide regional-scan --region R --state-dir "
                f"{SETTINGS.state_dir}` writes one.")
        return
    from tasks.inventory.merge import read_inventory

    inv_path = st.selectbox("Inventory", [str(p) for p in inventories], key="inventory_pick",
                            format_func=lambda p: Path(p).parent.name)
    landslides, scans = read_inventory(inv_path)
    if landslides is None:
        st.warning(f"{inv_path} has no landslides layer yet.")
        return
    n_new = int((landslides["status"] == "new").sum())
    m = st.columns(3)
    m[0].metric("Landslides", len(landslides))
    m[1].metric("New in the latest scan", n_new)
    m[2].metric("Scans merged", 0 if scans is None else len(scans))
    cols = [c for c in ("inventory_id", "status", "first_seen", "last_seen", "detections", "area_m2",
                        "mean_prob", "review_status") if c in landslides.columns]
    st.dataframe(landslides[cols], hide_index=True, width="stretch", key="inventory_table")
    if scans is not None:
        st.markdown("**Scans layer**")
        st.dataframe(scans.drop(columns=scans.geometry.name), hide_index=True, width="stretch")


def _review_files() -> dict[str, str]:
    """Label -> GeoPackage path of every file a reviewer can work on: regional inventories first,
    then finished runs."""
    files = {f"inventory {p.parent.name}": str(p) for p in sorted(SETTINGS.state_dir.glob("*/inventory.gpkg"))}
    for run in list_runs(SETTINGS.runs_dir):
        files[f"run {run.run_id} ({run.where})"] = str(run.path / "landslides.gpkg")
    return files


def _polygon_label(polygon_id: int, state) -> str:
    """``#12 · 3,200 m² · p 0.74``: what does not change when the polygon is reviewed (the status is
    shown beside the list)."""
    if state is None:
        return f"#{polygon_id}"
    return f"#{polygon_id} · {state.area_m2:,.0f} m² · p {state.mean_prob:.2f}"


def page_review() -> None:
    from tasks.inventory.review import export_labels, list_polygons, record_review, review_history, review_key

    st.title("Review")
    files = _review_files()
    if not files:
        st.info("Nothing to review yet: run a scan or a regional scan first.")
        return
    labels = list(files)
    wanted = st.session_state.get("review_file")
    label = st.selectbox("Inventory or run", labels, key="review_pick",
                         index=labels.index(wanted) if wanted in labels else 0)
    st.session_state["review_file"] = label
    gpkg = files[label]
    key = review_key(gpkg)
    polygons, bounds = read_polygons_lonlat(gpkg)
    states = {p.polygon_id: p for p in list_polygons(gpkg)}
    if "review_status" not in polygons.columns:  # a file nobody reviewed yet: all unreviewed
        polygons["review_status"] = "unreviewed"
    if not len(polygons):
        st.info("This file has no landslide polygon to review.")
        return
    ids = sorted(int(i) for i in polygons[key])
    left, right = st.columns([3, 2])
    with left:
        geojson = polygons_geojson(polygons, colour_by="review")
        selected = st.session_state.get("review_id")
        deck, _ = make_deck(polygon_layers(geojson, selected if selected in ids else None, key), bounds,
                            MAP_HEIGHT_PX, {"html": f"<b>#{{{key}}}</b> {{review_status}}<br/>p̄ {{mean_prob}}"})
        event = st.pydeck_chart(deck, height=MAP_HEIGHT_PX, on_select="rerun",
                                selection_mode="single-object", key=f"review_map_{label}")
        clicked = _selected_feature(event)
        if clicked is not None:
            picked = int((clicked.get("properties") or clicked)[key])
            if picked != st.session_state.get("review_clicked"):
                st.session_state["review_clicked"] = picked
                st.session_state["review_id"] = picked
        st.caption("Green: confirmed; grey: rejected; yellow to red: unreviewed, by mean probability. "
                   "Click a polygon to select it.")
    with right:
        # a row picked in the table below (its selection is known at the start of this run)
        table_state = st.session_state.get(f"review_table_{label}")
        rows = list(getattr(getattr(table_state, "selection", None), "rows", None) or
                    ((table_state or {}).get("selection", {}).get("rows", []) if isinstance(table_state, dict) else []))
        if rows and rows[0] < len(ids) and rows != st.session_state.get("review_rows_seen"):
            st.session_state["review_rows_seen"] = rows
            st.session_state["review_id"] = sorted(states)[rows[0]] if states else ids[rows[0]]
        if st.session_state.get("review_id") not in ids:
            st.session_state["review_id"] = ids[0]
        polygon_id = st.selectbox(f"Landslide ({key})", ids, key="review_id",
                                  format_func=lambda i: _polygon_label(i, states.get(i)))
        state = states.get(polygon_id)
        if state is not None:
            st.markdown(f"**{state.review_status}**" + (f" by {state.reviewed_by}, {state.reviewed_at:%Y-%m-%d %H:%M} UTC"
                                                         if state.reviewed_by and state.reviewed_at else "")
                        + (f"  \nnote: {state.review_note}" if state.review_note else ""))
        reviewer = st.text_input("Reviewer", value=SETTINGS.reviewer, key="review_by")
        note = st.text_area("Note (optional; needed for Save note)", key=f"review_note_{polygon_id}")
        b = st.columns(3)
        decision = ("confirm" if b[0].button("Confirm", type="primary", key="review_confirm") else
                    "reject" if b[1].button("Reject", key="review_reject") else
                    "note" if b[2].button("Save note", key="review_save_note") else None)
        if decision:
            try:
                record_review(gpkg, [polygon_id], decision, reviewer.strip() or SETTINGS.reviewer,
                              note.strip() or None)
            except InputError as exc:
                st.error(f"error: {exc}", icon=":material/error:")
            else:
                st.session_state["review_saved"] = f"#{polygon_id}: {decision} saved by {reviewer}"
                st.rerun()
        if st.session_state.get("review_saved"):
            st.success(st.session_state.pop("review_saved"), icon=":material/check_circle:")
        counts = polygons["review_status"].value_counts().to_dict()
        st.markdown("  \n".join(f"**{k}**: {counts.get(k, 0)}" for k in ("confirmed", "rejected", "unreviewed")))
    st.markdown("**Polygons** (click a column to sort; pick a row to review it)")
    table = pd.DataFrame([states[i].as_dict() for i in sorted(states)])
    st.dataframe(table, hide_index=True, width="stretch", key=f"review_table_{label}", on_select="rerun",
                 selection_mode="single-row")
    history = review_history(gpkg)
    if history:
        st.markdown("**Review history** (append-only `reviews` layer)")
        st.dataframe(pd.DataFrame([h.as_dict() for h in history]), hide_index=True, width="stretch")
        if st.button("Export the reviewed polygons as labels", key="review_export"):
            out = SETTINGS.app_dir / "exports" / f"{Path(gpkg).parent.name}-labels.gpkg"
            out.parent.mkdir(parents=True, exist_ok=True)
            export_labels(gpkg, out, overwrite=True)
            st.session_state["review_export_path"] = str(out)
        done = st.session_state.get("review_export_path")
        if done and Path(done).is_file():
            st.download_button("Download labels.gpkg", Path(done).read_bytes(), file_name=Path(done).name,
                               key="review_export_dl")
            st.caption("Layers confirmed, rejected and reviewed_area: `landslide make-dataset --labels "
                       "FILE --class landslide=confirmed --mapped-area reviewed_area` (docs/review.md).")


PAGES = {
    "scan": st.Page(page_new_scan, title="New scan", url_path="scan", default=True),
    "results": st.Page(page_results, title="Results", url_path="results"),
    "runs": st.Page(page_runs, title="Runs & inventories", url_path="runs"),
    "review": st.Page(page_review, title="Review", url_path="review"),
}


def main() -> None:
    nav = st.navigation(list(PAGES.values()), position="top")
    try:
        nav.run()
    except InputError as exc:  # the same one line the CLI prints
        st.error(f"error: {exc}", icon=":material/error:")


main()
