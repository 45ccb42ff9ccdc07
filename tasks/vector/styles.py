"""Default map styles of the vector layers, as text: QGIS QML and OGC SLD 1.1 (pure, no I/O).

``tasks/vector/geopackage.py`` stores them in each GeoPackage's ``layer_styles`` table, where QGIS
picks them up as the layers' default styles; ``tasks/run/qgis_project.py`` embeds the same renderer
XML in a run's ``run.qgs``. The QML uses the symbol-layer ``<prop k= v=>`` form, which every QGIS
3.x reads (QGIS 3.22 LTR included).

Colours are ``(red, green, blue, alpha)`` with 0..255 channels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tasks.vector.fields import (
    FOOTPRINT_FIELDS,
    INVENTORY_FIELDS,
    LANDSLIDE_FIELDS,
    LAYER_DESCRIPTIONS,
    SCAN_FIELDS,
    FieldDoc,
)

QGIS_VERSION = "3.22.0-Białowieża"  # the oldest QGIS these styles are made for (the LTR)
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
Rgba = tuple[int, int, int, int]


@dataclass(frozen=True)
class FillClass:
    """A class of a graduated or categorised fill: the value range (or category) and its colours."""

    label: str
    fill: Rgba
    outline: Rgba
    lower: float | None = None  # graduated: lower <= value (< upper, <= upper for the last class)
    upper: float | None = None
    value: str | None = None  # categorised: value == this
    brush: str = "solid"  # QGIS SimpleFill style: solid, b_diagonal (hatched), ...


# landslides by mean_prob, yellow -> orange -> red; fills semi-transparent so the probability
# raster below stays readable. The first class catches objects whose mean falls below the usual
# 0.5 threshold (a polygon's mean can be lower than its threshold pixels' values suggest).
PROB_CLASSES: tuple[FillClass, ...] = (
    FillClass("< 0.50", (255, 255, 178, 110), (189, 189, 0, 255), 0.0, 0.5),
    FillClass("0.50 – 0.70", (254, 204, 92, 130), (204, 140, 0, 255), 0.5, 0.7),
    FillClass("0.70 – 0.85", (253, 141, 60, 140), (204, 76, 2, 255), 0.7, 0.85),
    FillClass("0.85 – 1.00", (227, 26, 28, 150), (153, 0, 13, 255), 0.85, 1.0),
)
PROB_FIELD = "mean_prob"
FOOTPRINT_OUTLINE: Rgba = (40, 40, 40, 255)
FOOTPRINT_DASH_MM = (3.0, 2.0)  # dash, gap
# regional inventory landslides by status: new ones stand out, known ones recede
STATUS_CLASSES: tuple[FillClass, ...] = (
    FillClass("new", (227, 26, 28, 150), (153, 0, 13, 255), value="new"),
    FillClass("known", (31, 120, 180, 110), (8, 69, 148, 255), value="known"),
)
STATUS_FIELD = "status"
# reviews (tasks/inventory/review.py): a rejected landslide is drawn grey and hatched, whatever its
# status; confirmed and unreviewed ones keep their status colour
REVIEW_FIELD = "review_status"
REJECTED_CLASS = FillClass("rejected by a reviewer", (130, 130, 130, 200), (90, 90, 90, 255),
                           value="rejected", brush="b_diagonal")
INVENTORY_CLASSES: tuple[FillClass, ...] = (*STATUS_CLASSES, REJECTED_CLASS)
# the categorised renderer's value: a QGIS expression (every merge writes review_status)
INVENTORY_STYLE_EXPRESSION = (f"CASE WHEN \"{REVIEW_FIELD}\" = 'rejected' THEN 'rejected' "
                              f"ELSE \"{STATUS_FIELD}\" END")


def rgba_text(c: Rgba) -> str:
    """QGIS's colour text ``"r,g,b,a"``."""
    return ",".join(str(int(v)) for v in c)


def hex_colour(c: Rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c[:3])


def _props(parent: ET.Element, props: Mapping[str, str]) -> None:
    for k, v in props.items():
        ET.SubElement(parent, "prop", k=k, v=v)


def _fill_symbol(name: str, fill: Rgba | None, outline: Rgba, outline_width_mm: float,
                 dash_mm: Sequence[float] | None = None, brush: str = "solid") -> ET.Element:
    """A QGIS fill symbol with one SimpleFill layer (``fill`` None: no brush)."""
    symbol = ET.Element("symbol", type="fill", name=name, alpha="1", clip_to_extent="1",
                        force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0",
                                            "pass": "0"})
    props = {
        "color": rgba_text(fill or (0, 0, 0, 0)),
        "style": brush if fill else "no",
        "outline_color": rgba_text(outline),
        "outline_style": "dash" if dash_mm else "solid",
        "outline_width": f"{outline_width_mm:g}",
        "outline_width_unit": "MM",
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_unit": "MM",
    }
    if dash_mm:  # a custom dash pattern on the outline
        props.update({"use_custom_dash": "1", "customdash": ";".join(f"{v:g}" for v in dash_mm),
                      "customdash_unit": "MM"})
    _props(layer, props)
    return symbol


def _aliases(fields: Mapping[str, FieldDoc]) -> ET.Element:
    aliases = ET.Element("aliases")
    for name, doc in fields.items():
        ET.SubElement(aliases, "alias", field=name, name=doc.alias)
    return aliases


def _graduated(field: str, classes: Sequence[FillClass]) -> ET.Element:
    renderer = ET.Element("renderer-v2", type="graduatedSymbol", attr=field,
                          graduatedMethod="GraduatedColor", symbollevels="0", forceraster="0",
                          enableorderby="0", referencescale="-1")
    ranges = ET.SubElement(renderer, "ranges")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(classes):
        ET.SubElement(ranges, "range", lower=f"{c.lower:.6f}", upper=f"{c.upper:.6f}", symbol=str(i),
                      label=c.label, render="true")
        symbols.append(_fill_symbol(str(i), c.fill, c.outline, 0.4))
    ET.SubElement(renderer, "mode", name="manual")
    return renderer


def _categorized(field: str, classes: Sequence[FillClass]) -> ET.Element:
    renderer = ET.Element("renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0",
                          forceraster="0", enableorderby="0", referencescale="-1")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(classes):
        ET.SubElement(categories, "category", value=str(c.value), symbol=str(i), label=c.label,
                      render="true")
        symbols.append(_fill_symbol(str(i), c.fill, c.outline, 0.4, brush=c.brush))
    return renderer


def _single(symbol: ET.Element) -> ET.Element:
    renderer = ET.Element("renderer-v2", type="singleSymbol", symbollevels="0", forceraster="0",
                          enableorderby="0", referencescale="-1")
    symbols = ET.SubElement(renderer, "symbols")
    symbol.set("name", "0")
    symbols.append(symbol)
    return renderer


def landslides_renderer() -> ET.Element:
    """Graduated by ``mean_prob`` (:data:`PROB_CLASSES`)."""
    return _graduated(PROB_FIELD, PROB_CLASSES)


def outline_renderer() -> ET.Element:
    """A hollow dashed outline (the footprint, the inventory's scans)."""
    return _single(_fill_symbol("0", None, FOOTPRINT_OUTLINE, 0.6, FOOTPRINT_DASH_MM))


def inventory_renderer() -> ET.Element:
    """Categorised by :data:`INVENTORY_STYLE_EXPRESSION` (:data:`INVENTORY_CLASSES`: new, known,
    rejected by a reviewer)."""
    return _categorized(INVENTORY_STYLE_EXPRESSION, INVENTORY_CLASSES)


def vector_layer_elements(renderer: ET.Element, fields: Mapping[str, FieldDoc],
                          display_field: str | None = None) -> list[ET.Element]:
    """The children of a QML ``<qgis>`` (or a project's ``<maplayer>``) for a polygon layer."""
    blend = ET.Element("blendMode")
    blend.text = "0"
    feature_blend = ET.Element("featureBlendMode")
    feature_blend.text = "0"
    opacity = ET.Element("layerOpacity")
    opacity.text = "1"
    out = [renderer, _aliases(fields), blend, feature_blend, opacity]
    if display_field:
        preview = ET.Element("previewExpression")
        preview.text = f'"{display_field}"'
        out.append(preview)
    geometry_type = ET.Element("layerGeometryType")
    geometry_type.text = "2"  # polygon
    out.append(geometry_type)
    return out


def qml_document(elements: Sequence[ET.Element]) -> str:
    """A QML file: the DOCTYPE and ``<qgis>`` around ``elements``."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories",
                      hasScaleBasedVisibilityFlag="0", minScale="100000000", maxScale="0")
    root.extend(elements)
    ET.indent(root)
    return f"{QML_DOCTYPE}\n{ET.tostring(root, encoding='unicode')}\n"


def vector_qml(renderer: ET.Element, fields: Mapping[str, FieldDoc],
               display_field: str | None = None) -> str:
    """The QML style of a polygon layer: ``renderer`` plus field aliases from ``fields``."""
    return qml_document(vector_layer_elements(renderer, fields, display_field))


# --- SLD 1.1 (Symbology Encoding), for clients other than QGIS -------------------------------------

_SLD = "http://www.opengis.net/sld"
_SE = "http://www.opengis.net/se"
_OGC = "http://www.opengis.net/ogc"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("sld", _SLD)
ET.register_namespace("se", _SE)
ET.register_namespace("ogc", _OGC)
ET.register_namespace("xsi", _XSI)


def _se(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, f"{{{_SE}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _param(parent: ET.Element, name: str, value: str) -> None:
    _se(parent, "SvgParameter", value, name=name)


def _sld_polygon(rule: ET.Element, fill: Rgba | None, outline: Rgba, width_px: float,
                 dash_px: Sequence[float] | None = None) -> None:
    sym = _se(rule, "PolygonSymbolizer")
    if fill:
        f = _se(sym, "Fill")
        _param(f, "fill", hex_colour(fill))
        _param(f, "fill-opacity", f"{fill[3] / 255:.2f}")
    s = _se(sym, "Stroke")
    _param(s, "stroke", hex_colour(outline))
    _param(s, "stroke-width", f"{width_px:g}")
    _param(s, "stroke-linejoin", "bevel")
    if dash_px:
        _param(s, "stroke-dasharray", " ".join(f"{v:g}" for v in dash_px))


def _ogc_compare(parent: ET.Element, op: str, field: str, value: str) -> None:
    cmp_el = ET.SubElement(parent, f"{{{_OGC}}}{op}")
    ET.SubElement(cmp_el, f"{{{_OGC}}}PropertyName").text = field
    ET.SubElement(cmp_el, f"{{{_OGC}}}Literal").text = value


def _sld_document(layer: str, rules: Sequence[tuple[str, ET.Element | None, FillClass | None]],
                  outline_only: bool = False) -> str:
    root = ET.Element(f"{{{_SLD}}}StyledLayerDescriptor", {
        "version": "1.1.0",
        f"{{{_XSI}}}schemaLocation": "http://www.opengis.net/sld "
                                     "http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd"})
    named = ET.SubElement(root, f"{{{_SLD}}}NamedLayer")
    _se(named, "Name", layer)
    style = ET.SubElement(named, f"{{{_SLD}}}UserStyle")
    _se(style, "Name", layer)
    fts = _se(style, "FeatureTypeStyle")
    for title, filter_el, cls in rules:
        rule = _se(fts, "Rule")
        _se(rule, "Name", title)
        desc = _se(rule, "Description")
        _se(desc, "Title", title)
        if filter_el is not None:
            rule.append(filter_el)
        if outline_only or cls is None:
            _sld_polygon(rule, None, FOOTPRINT_OUTLINE, 2, [v * 3.78 for v in FOOTPRINT_DASH_MM])
        else:
            _sld_polygon(rule, cls.fill, cls.outline, 1.5)
    ET.indent(root)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{ET.tostring(root, encoding="unicode")}\n'


def graduated_sld(layer: str, field: str, classes: Sequence[FillClass]) -> str:
    rules = []
    for i, c in enumerate(classes):
        f = ET.Element(f"{{{_OGC}}}Filter")
        both = ET.SubElement(f, f"{{{_OGC}}}And")
        _ogc_compare(both, "PropertyIsGreaterThanOrEqualTo", field, f"{c.lower:g}")
        last = i == len(classes) - 1
        _ogc_compare(both, "PropertyIsLessThanOrEqualTo" if last else "PropertyIsLessThan", field,
                     f"{c.upper:g}")
        rules.append((c.label, f, c))
    return _sld_document(layer, rules)


def categorized_sld(layer: str, field: str, classes: Sequence[FillClass]) -> str:
    rules = []
    for c in classes:
        f = ET.Element(f"{{{_OGC}}}Filter")
        _ogc_compare(f, "PropertyIsEqualTo", field, str(c.value))
        rules.append((c.label, f, c))
    return _sld_document(layer, rules)


def inventory_sld(layer: str) -> str:
    """:func:`inventory_renderer` in SLD: rejected landslides grey (SLD has no simple hatching),
    the others by status."""
    rules = []
    for c in STATUS_CLASSES:
        f = ET.Element(f"{{{_OGC}}}Filter")
        both = ET.SubElement(f, f"{{{_OGC}}}And")
        _ogc_compare(both, "PropertyIsEqualTo", STATUS_FIELD, str(c.value))
        _ogc_compare(both, "PropertyIsNotEqualTo", REVIEW_FIELD, "rejected")
        rules.append((c.label, f, c))
    f = ET.Element(f"{{{_OGC}}}Filter")
    _ogc_compare(f, "PropertyIsEqualTo", REVIEW_FIELD, "rejected")
    rules.append((REJECTED_CLASS.label, f, REJECTED_CLASS))
    return _sld_document(layer, rules)


def outline_sld(layer: str) -> str:
    return _sld_document(layer, [(layer, None, None)], outline_only=True)


@dataclass(frozen=True)
class LayerDocs:
    """What :func:`document_layers` writes for one layer.

    Attributes:
        description: ``gpkg_contents.description``.
        fields: field name -> alias/description/unit; fields of the layer missing here are logged.
        style_name: ``layer_styles.styleName``.
        qml: the QGIS style (``styleQML``).
        sld: the same style as SLD 1.1 (``styleSLD``).
    """

    description: str
    fields: Mapping[str, FieldDoc]
    style_name: str
    qml: str
    sld: str


def run_layer_docs() -> dict[str, LayerDocs]:
    """Descriptions, field docs and default styles of a scan's ``landslides`` and ``footprint``."""
    return {
        "landslides": LayerDocs(LAYER_DESCRIPTIONS["landslides"], LANDSLIDE_FIELDS,
                                "landslides by mean probability",
                                vector_qml(landslides_renderer(), LANDSLIDE_FIELDS, "landslide_id"),
                                graduated_sld("landslides", PROB_FIELD, PROB_CLASSES)),
        "footprint": LayerDocs(LAYER_DESCRIPTIONS["footprint"], FOOTPRINT_FIELDS,
                               "analysed area outline",
                               vector_qml(outline_renderer(), FOOTPRINT_FIELDS, "status"),
                               outline_sld("footprint")),
    }


def inventory_layer_docs() -> dict[str, LayerDocs]:
    """The same for a regional inventory's ``landslides`` (by status, rejected ones hatched) and
    ``scans`` layers."""
    return {
        "landslides": LayerDocs(LAYER_DESCRIPTIONS["inventory_landslides"], INVENTORY_FIELDS,
                                "inventory by status and review",
                                vector_qml(inventory_renderer(), INVENTORY_FIELDS, "inventory_id"),
                                inventory_sld("landslides")),
        "scans": LayerDocs(LAYER_DESCRIPTIONS["scans"], SCAN_FIELDS, "scan footprints outline",
                           vector_qml(outline_renderer(), SCAN_FIELDS, "run_id"),
                           outline_sld("scans")),
    }
