"""A run folder that opens well in QGIS (3.22 LTR and later) with no manual styling.

- ``probability.qml``, ``uncertainty.qml``, ``mask.qml``: QGIS applies ``NAME.qml`` beside
  ``NAME.tif`` as the raster's default style. QGIS applies the band's scale (1/254) when it reads
  the COGs, so the ramps are over physical values: probability and uncertainty 0..1 (encoded
  ``round(v * 254)``, 255 = not analysed, transparent). The mask is a paletted class raster.
- ``run.qgs``: a QGIS project of the whole run with relative paths, layers top to bottom: footprint
  outline, landslides, mask (hidden), probability, uncertainty (hidden). The vector layers' styles
  are the ones stored in ``landslides.gpkg`` (:mod:`tasks.vector.styles`).

Text generation is pure (``*_qml``, :func:`project_qgs`); :func:`write_raster_styles` and
:func:`write_project` write the files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.files import atomic_write
from tasks.run.outputs import MASK_CLASSES
from tasks.vector.fields import FOOTPRINT_FIELDS, LANDSLIDE_FIELDS
from tasks.vector.styles import (
    QGIS_VERSION,
    Rgba,
    hex_colour,
    landslides_renderer,
    outline_renderer,
    qml_document,
    vector_layer_elements,
)


@dataclass(frozen=True)
class RampStop:
    """A colour-ramp stop at a physical value (``alpha`` 0 = transparent)."""

    value: float
    colour: Rgba
    label: str


# transparent where nothing is likely, then yellow -> orange -> red; never opaque, so the polygons
# drawn over it stay readable
PROBABILITY_RAMP: tuple[RampStop, ...] = (
    RampStop(0.0, (255, 255, 178, 0), "0.0"),
    RampStop(0.2, (255, 255, 178, 0), "0.2"),
    RampStop(0.4, (254, 217, 118, 60), "0.4"),
    RampStop(0.6, (253, 141, 60, 100), "0.6"),
    RampStop(0.8, (240, 59, 32, 140), "0.8"),
    RampStop(1.0, (189, 0, 38, 170), "1.0"),
)
# certain (0) light, uncertain (1 bit: p = 0.5) dark purple
UNCERTAINTY_RAMP: tuple[RampStop, ...] = (
    RampStop(0.0, (252, 251, 253, 0), "0.0 certain"),
    RampStop(0.5, (158, 154, 200, 170), "0.5"),
    RampStop(1.0, (63, 0, 125, 230), "1.0 uncertain"),
)


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _pipe(renderer: ET.Element) -> ET.Element:
    pipe = ET.Element("pipe")
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", colorizeOn="0", colorizeRed="255",
                  colorizeGreen="128", colorizeBlue="128", colorizeStrength="100", grayscaleMode="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    _text(pipe, "resamplingStage", "resamplingFilter")
    return pipe


def _min_max_origin(parent: ET.Element) -> None:
    # limits None: the style's own min/max, so QGIS computes no statistics for it
    origin = ET.SubElement(parent, "minMaxOrigin")
    for tag, value in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                       ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"),
                       ("stdDevFactor", "2")):
        _text(origin, tag, value)


def ramp_pipe(stops: Sequence[RampStop]) -> ET.Element:
    """A single-band pseudocolour ``<pipe>`` interpolating ``stops`` (physical values)."""
    lo, hi = stops[0].value, stops[-1].value
    renderer = ET.Element("rasterrenderer", type="singlebandpseudocolor", band="1", opacity="1",
                          alphaBand="-1", classificationMin=f"{lo:g}", classificationMax=f"{hi:g}",
                          nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    _min_max_origin(renderer)
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                           colorRampType="INTERPOLATED", classificationMode="1", clip="0",
                           minimumValue=f"{lo:g}", maximumValue=f"{hi:g}", labelPrecision="2")
    for s in stops:
        ET.SubElement(shader, "item", value=f"{s.value:g}", color=hex_colour(s.colour),
                      alpha=str(s.colour[3]), label=s.label)
    return _pipe(renderer)


def paletted_pipe(classes=MASK_CLASSES) -> ET.Element:
    """A paletted ``<pipe>``: value -> (class name, RGBA)."""
    renderer = ET.Element("rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                          nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    _min_max_origin(renderer)
    palette = ET.SubElement(renderer, "colorPalette")
    for value, (name, rgba) in classes.items():
        ET.SubElement(palette, "paletteEntry", value=str(value), color=hex_colour(rgba),
                      alpha=str(rgba[3]), label=name)
    return _pipe(renderer)


def _blend() -> ET.Element:
    el = ET.Element("blendMode")
    el.text = "0"
    return el


def probability_qml() -> str:
    return qml_document([ramp_pipe(PROBABILITY_RAMP), _blend()])


def uncertainty_qml() -> str:
    return qml_document([ramp_pipe(UNCERTAINTY_RAMP), _blend()])


def mask_qml() -> str:
    return qml_document([paletted_pipe(), _blend()])


RASTER_STYLES = {"probability.qml": probability_qml, "uncertainty.qml": uncertainty_qml,
                 "mask.qml": mask_qml}


# --- the project -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProjectLayer:
    """One layer of ``run.qgs``: ``source`` relative to the project (``./file[|layername=x]``)."""

    layer_id: str
    name: str
    kind: str  # "vector" or "raster"
    source: str
    provider: str  # "ogr" or "gdal"
    visible: bool
    style: list[ET.Element] = field(default_factory=list, compare=False)


def run_layers() -> list[ProjectLayer]:
    """The run's layers, top of the map first.

    Layer ids are longer than 10 characters: QGIS 3.22 replaces shorter ids with new random ones
    when it reads a project, and the layer tree then points at no layer.
    """
    return [
        ProjectLayer("footprint_outline", "footprint (analysed area)", "vector",
                     "./landslides.gpkg|layername=footprint", "ogr", True,
                     vector_layer_elements(outline_renderer(), FOOTPRINT_FIELDS, "status")),
        ProjectLayer("landslides_polygons", "landslides", "vector",
                     "./landslides.gpkg|layername=landslides", "ogr", True,
                     vector_layer_elements(landslides_renderer(), LANDSLIDE_FIELDS, "landslide_id")),
        ProjectLayer("mask_raster", "mask", "raster", "./mask.tif", "gdal", False,
                     [paletted_pipe(), _blend()]),
        ProjectLayer("probability_raster", "probability", "raster", "./probability.tif", "gdal", True,
                     [ramp_pipe(PROBABILITY_RAMP), _blend()]),
        ProjectLayer("uncertainty_raster", "uncertainty", "raster", "./uncertainty.tif", "gdal", False,
                     [ramp_pipe(UNCERTAINTY_RAMP), _blend()]),
    ]


@dataclass(frozen=True)
class ProjectCrs:
    authid: str  # e.g. "EPSG:32654"
    wkt: str  # what QGIS reads the CRS from
    description: str


def _spatialrefsys(parent: ET.Element, crs: ProjectCrs) -> None:
    srs = ET.SubElement(parent, "spatialrefsys")
    _text(srs, "wkt", crs.wkt)
    _text(srs, "authid", crs.authid)
    _text(srs, "description", crs.description)
    _text(srs, "geographicflag", "false")


def _extent(parent: ET.Element, tag: str, bounds: Sequence[float]) -> None:
    ext = ET.SubElement(parent, tag)
    for name, value in zip(("xmin", "ymin", "xmax", "ymax"), bounds):
        _text(ext, name, repr(float(value)))


def project_qgs(title: str, crs: ProjectCrs, bounds: Sequence[float],
                layers: Sequence[ProjectLayer]) -> str:
    """A QGIS 3.22 project (``.qgs`` XML) of ``layers`` (top first) with relative paths.

    Args:
        title: the project title.
        crs: the project's and every layer's CRS.
        bounds: (xmin, ymin, xmax, ymax) of the initial view, in ``crs``.
        layers: from :func:`run_layers`.
    """
    root = ET.Element("qgis", projectname=title, version=QGIS_VERSION)
    ET.SubElement(root, "homePath", path="")
    _text(root, "title", title)
    ET.SubElement(root, "autotransaction", active="0")
    ET.SubElement(root, "evaluateDefaultValues", active="0")
    ET.SubElement(root, "trust", active="0")
    _spatialrefsys(ET.SubElement(root, "projectCrs"), crs)
    tree = ET.SubElement(root, "layer-tree-group")
    ET.SubElement(tree, "customproperties")
    for lyr in layers:
        node = ET.SubElement(tree, "layer-tree-layer", id=lyr.layer_id, name=lyr.name,
                             source=lyr.source, providerKey=lyr.provider, expanded="1",
                             legend_exp="", checked="Qt::Checked" if lyr.visible else "Qt::Unchecked")
        ET.SubElement(node, "customproperties")
    ET.SubElement(tree, "custom-order", enabled="0")
    canvas = ET.SubElement(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    _text(canvas, "units", "meters")
    _extent(canvas, "extent", bounds)
    _text(canvas, "rotation", "0")
    _spatialrefsys(ET.SubElement(canvas, "destinationsrs"), crs)
    _text(canvas, "rendermaptile", "0")
    project_layers = ET.SubElement(root, "projectlayers")
    for lyr in layers:
        attrs = {"type": lyr.kind, "hasScaleBasedVisibilityFlag": "0", "minScale": "100000000",
                 "maxScale": "0", "autoRefreshEnabled": "0", "refreshOnNotifyEnabled": "0"}
        if lyr.kind == "vector":
            attrs.update(geometry="Polygon", wkbType="MultiPolygon" if "footprint" in lyr.source
                         else "Polygon", readOnly="0", simplifyDrawingHints="0")
        ml = ET.SubElement(project_layers, "maplayer", attrs)
        _extent(ml, "extent", bounds)
        _text(ml, "id", lyr.layer_id)
        _text(ml, "datasource", lyr.source)
        _text(ml, "layername", lyr.name)
        _spatialrefsys(ET.SubElement(ml, "srs"), crs)
        provider = _text(ml, "provider", lyr.provider)
        if lyr.kind == "vector":
            provider.set("encoding", "UTF-8")
        ml.extend(lyr.style)
    props = ET.SubElement(root, "properties")
    paths = ET.SubElement(props, "Paths")
    _text(paths, "Absolute", "false", type="bool")  # datasources relative to the project file
    srs = ET.SubElement(props, "SpatialRefSys")
    _text(srs, "ProjectionsEnabled", "1", type="int")  # else QGIS 3.22 ignores <projectCrs>
    ET.indent(root)
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{ET.tostring(root, encoding='unicode')}\n"


# --- files -------------------------------------------------------------------------------------

def write_raster_styles(folder: str | Path) -> list[Path]:
    """Write ``probability.qml``, ``uncertainty.qml`` and ``mask.qml`` into ``folder``."""
    out = []
    for name, make in RASTER_STYLES.items():
        path = Path(folder) / name
        with atomic_write(path) as tmp:
            tmp.write_text(make(), encoding="utf-8")
        out.append(path)
    return out


def write_project(folder: str | Path, title: str, reference_raster: str = "probability.tif") -> Path:
    """Write ``run.qgs`` into ``folder``; CRS and initial view from ``reference_raster`` there."""
    import rasterio
    from pyproj import CRS

    folder = Path(folder)
    with rasterio.open(folder / reference_raster) as src:
        crs = CRS.from_user_input(src.crs.to_wkt())
        bounds = tuple(src.bounds)
    authid = ":".join(crs.to_authority()) if crs.to_authority() else ""
    project_crs = ProjectCrs(authid, crs.to_wkt(), crs.name)
    path = folder / "run.qgs"
    with atomic_write(path) as tmp:
        tmp.write_text(project_qgs(title, project_crs, bounds, run_layers()), encoding="utf-8")
    return path
