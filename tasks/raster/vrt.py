"""Separate single-band files as one multi-band raster: a GDAL VRT that stacks them, band N being
file N, with each band's description set to its Sentinel-2 name. Nothing is resampled on disk: the
VRT places each file on a common grid (the union of the files' extents at the finest pixel size) and
GDAL reads through it. Used for uploads of band files, which then scan like one multi-band image.
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

from tasks.core.bands import SPECTRAL_BAND_NAMES, normalize_band_name
from tasks.core.errors import InputError

# a band token standing alone in a file name (B04, B4, b11); B8A is left out on purpose: it is not
# a band of the contract, and "B8" must not be read out of it
_BAND_IN_NAME = re.compile(r"(?<![A-Za-z0-9])B(0?[1-9]|1[0-2])(?![A-Za-z0-9])", re.IGNORECASE)


def band_names_from_filenames(names: list[str]) -> list[str | None]:
    """The Sentinel-2 band each file name mentions (``T54TXN_..._B04_10m.jp2`` -> ``B04``), None
    where a name mentions none, several, or only B8A (not a band of the contract) (pure)."""
    out: list[str | None] = []
    for name in names:
        found = {normalize_band_name("B" + m.group(1)) for m in _BAND_IN_NAME.finditer(Path(name).stem)}
        found &= set(SPECTRAL_BAND_NAMES)
        out.append(found.pop() if len(found) == 1 else None)
    return out


def stack_band_files(paths: list[Path], band_names: list[str], out_vrt: Path) -> Path:
    """Write ``out_vrt`` stacking ``paths`` (one band each) as bands named ``band_names``.

    Raises:
        InputError: counts differ, a name is not a band of the contract or repeats, a file has more
            than one band, or the files do not share one CRS.
    """
    import rasterio

    if len(paths) != len(band_names):
        raise InputError(f"{len(paths)} band files but {len(band_names)} band names")
    names = [normalize_band_name(n) for n in band_names]
    unknown = [n for n, c in zip(band_names, names) if c not in SPECTRAL_BAND_NAMES]
    if unknown:
        raise InputError(f"{unknown[0]!r} is not a Sentinel-2 band; bands are {', '.join(SPECTRAL_BAND_NAMES)}")
    if len(set(names)) != len(names):
        raise InputError(f"a band is named twice: {', '.join(band_names)}")
    infos = []
    for path in paths:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise InputError(f"{path.name} has {src.count} bands; give one file per band, or the "
                                 "multi-band file as one image")
            infos.append((src.crs, src.transform, src.width, src.height, src.dtypes[0], src.nodata))
    crs = infos[0][0]
    if any(i[0] != crs for i in infos):
        raise InputError("the band files do not share one coordinate reference system; reproject them "
                         "to one CRS first (gdalwarp -t_srs)")
    if any(i[1].b != 0 or i[1].d != 0 for i in infos):
        raise InputError("a band file is rotated; only north-up files can be stacked")
    res_x = min(abs(i[1].a) for i in infos)
    res_y = min(abs(i[1].e) for i in infos)
    west = min(i[1].c for i in infos)
    north = max(i[1].f for i in infos)
    east = max(i[1].c + i[1].a * i[2] for i in infos)
    south = min(i[1].f + i[1].e * i[3] for i in infos)
    width, height = round((east - west) / res_x), round((north - south) / res_y)
    dtypes = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}
    bands_xml = []
    for k, (path, name, (_, tr, w, h, dtype, nodata)) in enumerate(zip(paths, names, infos), start=1):
        x_off, y_off = (tr.c - west) / res_x, (north - tr.f) / res_y
        x_size, y_size = w * abs(tr.a) / res_x, h * abs(tr.e) / res_y
        nd = f"<NoDataValue>{nodata:g}</NoDataValue>" if nodata is not None else ""
        nd_src = f"<NODATA>{nodata:g}</NODATA>" if nodata is not None else ""
        bands_xml.append(
            f'  <VRTRasterBand dataType="{dtypes.get(dtype, "Float32")}" band="{k}">\n'
            f"    <Description>{escape(name)}</Description>{nd}\n"
            f'    <ComplexSource resampling="nearest">\n'
            f'      <SourceFilename relativeToVRT="0">{escape(str(Path(path).resolve()))}</SourceFilename>\n'
            f"      <SourceBand>1</SourceBand>\n"
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
            f'      <DstRect xOff="{x_off:.6f}" yOff="{y_off:.6f}" xSize="{x_size:.6f}" ySize="{y_size:.6f}"/>\n'
            f"      {nd_src}\n"
            f"    </ComplexSource>\n"
            f"  </VRTRasterBand>\n")
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
           f"  <SRS>{escape(crs.to_wkt())}</SRS>\n"
           f"  <GeoTransform>{west!r}, {res_x!r}, 0.0, {north!r}, 0.0, {-res_y!r}</GeoTransform>\n"
           + "".join(bands_xml) + "</VRTDataset>\n")
    out_vrt = Path(out_vrt)
    out_vrt.write_text(xml)
    return out_vrt
