"""Open a run folder in QGIS as an analyst would, render it, and report what QGIS loaded.

Runs under the system Python with PyQGIS (Debian's ``python3-qgis``, QGIS 3.22 LTR), not the
project's virtual environment, and imports nothing of the project:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/flows/qgis_render.py RUN_DIR OUT_DIR [WIDTH_PX [MARGIN]]

Writes ``OUT_DIR/project.png`` (``RUN_DIR/run.qgs`` as it opens: its visible layers in its order)
and ``OUT_DIR/landslides.png`` (``landslides.gpkg``'s landslides layer alone, as dragged in: its
default style from the GeoPackage, white background), both over the extent of ``probability.tif``
(``WIDTH_PX`` wide, default: one image pixel per raster pixel), grown by ``MARGIN`` (a fraction of
its width, default 0) on each side. ``docs/qgis_sample_run.png`` is ``project.png`` of the sample
run with ``1000 0.02``. Prints one JSON object: the
layers QGIS loaded (validity, renderer, symbol properties, field aliases) and the image geometry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRenderContext,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def render(layers, crs, extent, size: QSize, path: Path) -> None:
    settings = QgsMapSettings()
    settings.setLayers(layers)  # top first
    settings.setDestinationCrs(crs)
    settings.setExtent(extent)
    settings.setOutputSize(size)
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    if not job.renderedImage().save(str(path), "PNG"):
        raise RuntimeError(f"could not save {path}")


def symbol_layers(renderer) -> list[dict]:
    out = []
    for symbol in renderer.symbols(QgsRenderContext()):
        for i in range(symbol.symbolLayerCount()):
            sl = symbol.symbolLayer(i)
            out.append({"class": sl.layerType(), **{k: str(v) for k, v in sl.properties().items()}})
    return out


def describe_vector(layer: QgsVectorLayer) -> dict:
    renderer = layer.renderer()
    info = {"valid": layer.isValid(), "renderer": renderer.type() if renderer else None,
            "symbol_layers": symbol_layers(renderer) if renderer else [],
            "aliases": {f.name(): layer.attributeAlias(i) for i, f in enumerate(layer.fields())},
            "features": layer.featureCount()}
    if renderer is not None and renderer.type() == "graduatedSymbol":
        info["attr"] = renderer.classAttribute()
        info["ranges"] = [{"lower": r.lowerValue(), "upper": r.upperValue(), "label": r.label(),
                           "color": r.symbol().color().name(QColor.HexArgb)} for r in renderer.ranges()]
    return info


def main(run: Path, out: Path, width_px: int | None, margin: float = 0.0) -> dict:
    """Everything QGIS loads here is released when this returns, before QGIS exits."""
    if True:
        report: dict = {"qgis": Qgis.QGIS_VERSION}
        prob = QgsRasterLayer(str(run / "probability.tif"), "probability", "gdal")
        extent, crs = prob.extent(), prob.crs()
        extent.grow(margin * extent.width())
        width = width_px or prob.width()
        size = QSize(width, round(width * extent.height() / extent.width()))
        report["extent"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
        report["size"] = [size.width(), size.height()]
        report["crs"] = crs.authid()

        # dragged in: the GeoPackage's layers with their default styles, the COGs with their .qml
        gpkg = run / "landslides.gpkg"
        dragged = {name: QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
                   for name in ("landslides", "footprint")}
        report["gpkg_layers"] = {name: describe_vector(lyr) for name, lyr in dragged.items()}
        report["rasters"] = {}
        for name in ("probability", "uncertainty", "mask"):
            lyr = QgsRasterLayer(str(run / f"{name}.tif"), name, "gdal")
            report["rasters"][name] = {"valid": lyr.isValid(), "renderer": lyr.renderer().type(),
                                       "data_type": int(lyr.dataProvider().dataType(1))}
        render([dragged["landslides"]], crs, extent, size, out / "landslides.png")

        project = QgsProject.instance()
        report["project_read"] = bool(project.read(str(run / "run.qgs")))
        root = project.layerTreeRoot()
        tree = []
        for node in root.findLayers():
            lyr = node.layer()
            entry = {"name": node.name(), "visible": node.isVisible(), "valid": bool(lyr and lyr.isValid()),
                     "source": lyr.source() if lyr else None,
                     "renderer": (lyr.renderer().type() if lyr and lyr.renderer() else None)}
            if isinstance(lyr, QgsVectorLayer):
                entry["symbol_layers"] = symbol_layers(lyr.renderer())
            tree.append(entry)
        report["project_layers"] = tree
        report["project_crs"] = project.crs().authid()
        visible = [node.layer() for node in root.findLayers() if node.isVisible() and node.layer()]
        render(visible, project.crs(), extent, size, out / "project.png")
        project.clear()
        return report


if __name__ == "__main__":
    run_dir, out_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    app = QgsApplication([], False)
    app.initQgis()
    result = main(run_dir, out_dir, int(sys.argv[3]) if len(sys.argv) > 3 else None,
                  float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    print(json.dumps(result), flush=True)
    app.exitQgis()
