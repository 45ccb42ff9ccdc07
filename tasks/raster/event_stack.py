"""Event mode: one bi-temporal stack from the post-event and the pre-event stacks.

Both stacks come from :func:`tasks.raster.align.build_stack` on the same grid: ``post/stack.tif``
(14 channels) and ``pre/stack.tif`` (the pre-event scene's spectral bands, no terrain). This module
writes, block by block (bounded memory):

- ``event_stack.vrt``: the 26 channels of ``tasks.core.bands.EVENT_BAND_NAMES`` (the post stack's 14,
  then the pre stack's 12 spectral bands as ``PRE_B01..PRE_B12``), a GDAL VRT over both files, so
  nothing is copied;
- ``valid.tif``: valid in both stacks;
- ``change.tif``: the per-pixel change evidence, post minus pre, of :func:`change_index_for`'s index.

:func:`build_bitemporal` runs the whole stage (both stacks, then these files) for a scan or a
training dataset.
"""

from __future__ import annotations

import dataclasses
import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from tasks.core import defaults
from tasks.core.bands import (
    BAND_NAMES,
    EVENT_BAND_NAMES,
    SPECTRAL_BAND_NAMES,
    band_index,
    get_band,
    pre_event_request,
)
from tasks.core.files import work_raster_profile
from tasks.core.grid import AnalysisGrid
from tasks.core.tiling import iter_blocks
from tasks.raster.align import StackResult, build_stack
from tasks.sources.event import EventInputs

EVENT_STACK_NAME = "event_stack.vrt"


@dataclass(frozen=True)
class ChangeIndex:
    """A normalized difference ``(a - b) / (a + b)``; the change is post minus pre."""

    name: str
    a: str
    b: str

    @property
    def description(self) -> str:
        return f"{self.name} ({self.a}-{self.b})/({self.a}+{self.b}), post-event minus pre-event"

    def of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The index from the two bands' values (NaN where undefined)."""
        a, b = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (a - b) / (a + b)
        out[~np.isfinite(out)] = np.nan
        return out


NDVI = ChangeIndex("NDVI", "B08", "B04")
REDNESS = ChangeIndex("redness", "B04", "B02")


def change_index_for(post_bands: tuple[str, ...] | list[str],
                     pre_bands: tuple[str, ...] | list[str]) -> ChangeIndex | None:
    """NDVI when both scenes have B08 and B04, else the redness index when both have B04 and B02
    (bare soil reddens where vegetation is stripped), else None."""
    for index in (NDVI, REDNESS):
        if {index.a, index.b} <= set(post_bands) and {index.a, index.b} <= set(pre_bands):
            return index
    return None


def _vrt_xml(post_stack: Path, pre_stack: Path, vrt_path: Path) -> str:
    with rasterio.open(post_stack) as src:
        width, height, crs, transform = src.width, src.height, src.crs, src.transform
        block_x, block_y = src.block_shapes[0][::-1]
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    bands = []
    sources = [(post_stack, i + 1) for i in range(len(BAND_NAMES))]
    sources += [(pre_stack, BAND_NAMES.index(b) + 1) for b in SPECTRAL_BAND_NAMES]
    for k, ((path, src_band), name) in enumerate(zip(sources, EVENT_BAND_NAMES), start=1):
        rel = os.path.relpath(path, vrt_path.parent)
        bands.append(
            f'  <VRTRasterBand dataType="Float32" band="{k}">\n'
            f"    <Description>{name}</Description>\n"
            f"    <NoDataValue>nan</NoDataValue>\n"
            f"    <SimpleSource>\n"
            f'      <SourceFilename relativeToVRT="1">{html.escape(rel)}</SourceFilename>\n'
            f"      <SourceBand>{src_band}</SourceBand>\n"
            f'      <SourceProperties RasterXSize="{width}" RasterYSize="{height}" '
            f'DataType="Float32" BlockXSize="{block_x}" BlockYSize="{block_y}"/>\n'
            f'      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>\n'
            f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>\n'
            f"    </SimpleSource>\n"
            f"  </VRTRasterBand>\n")
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
            f"  <SRS>{html.escape(crs.to_wkt())}</SRS>\n"
            f"  <GeoTransform>{gt}</GeoTransform>\n" + "".join(bands) + "</VRTDataset>\n")


def build_event_stack(post_stack: str | Path, post_valid: str | Path, pre_stack: str | Path,
                      pre_valid: str | Path, work_dir: str | Path, change: ChangeIndex | None,
                      block_px: int = defaults.BLOCK_PX) -> dict:
    """Write ``event_stack.vrt``, ``valid.tif`` (valid in both) and ``change.tif`` into ``work_dir``.

    Returns ``stack_path``, ``valid_path``, ``change_path`` (None without a change index),
    ``change_index`` (its description) and ``valid_fraction``.
    """
    work_dir = Path(work_dir)
    vrt = work_dir / EVENT_STACK_NAME
    vrt.write_text(_vrt_xml(Path(post_stack), Path(pre_stack), vrt))
    valid_path, change_path = work_dir / "valid.tif", work_dir / "change.tif"
    valid_px = 0
    with rasterio.open(post_valid) as pv, rasterio.open(pre_valid) as qv, \
            rasterio.open(post_stack) as post, rasterio.open(pre_stack) as pre:
        valid_profile = {**pv.profile}
        total = pv.width * pv.height
        with rasterio.open(valid_path, "w", **valid_profile) as vout:
            for win in iter_blocks(pv.height, pv.width, block_px):
                both = (pv.read(1, window=win) > 0) & (qv.read(1, window=win) > 0)
                vout.write(both.astype(valid_profile["dtype"])[None], window=win)
                valid_px += int(both.sum())
        if change is not None:
            idx = [band_index(change.a) + 1, band_index(change.b) + 1]
            profile = work_raster_profile(pv.profile, dtype="float32", count=1, nodata=np.nan)
            with rasterio.open(valid_path) as both_src, \
                    rasterio.open(change_path, "w", **profile) as cout:
                for win in iter_blocks(pv.height, pv.width, block_px):
                    a1, b1 = post.read(idx, window=win)
                    a0, b0 = pre.read(idx, window=win)
                    delta = change.of(a1, b1) - change.of(a0, b0)
                    delta[both_src.read(1, window=win) == 0] = np.nan
                    cout.write(delta.astype(np.float32)[None], window=win)
                cout.update_tags(1, change_index=change.description)
                cout.set_band_description(1, change.description)
    return {"stack_path": str(vrt), "valid_path": str(valid_path),
            "change_path": str(change_path) if change else None,
            "change_index": change.description if change else None,
            "valid_fraction": valid_px / total if total else 0.0}


def build_bitemporal(event: EventInputs, grid: AnalysisGrid, work_dir: str | Path,
                     bands: tuple[str, ...], roi_grid_crs=None, block_px: int = defaults.BLOCK_PX,
                     progress: bool = False) -> tuple[StackResult, dict]:
    """Align the post-event scene into ``work_dir`` (``stack.tif``, ``valid.tif``: the single-date
    stack), the pre-event scene into ``work_dir/pre``, and write the bi-temporal files into
    ``work_dir/event`` (:func:`build_event_stack`).

    ``bands``: the channels the detector (or training) needs, ``PRE_`` ones included; a pixel is
    valid where all of them are finite. Returns the post stack's result and a dict with the event
    files (``stack_path``, ``valid_path``, ``change_path``, ``change_index``, ``valid_fraction``)
    and ``pre``: the pre stack's result.
    """
    work_dir = Path(work_dir)
    post_bands = tuple(b for b in bands if not get_band(b).pre_event)
    post = build_stack(event.post, grid, work_dir, required_bands=post_bands,
                       roi_grid_crs=roi_grid_crs, progress=progress)
    pre = build_stack(event.pre, grid, work_dir / "pre", required_bands=pre_event_request(bands),
                      roi_grid_crs=roi_grid_crs, progress=progress)
    change = change_index_for(tuple(event.post.band_paths), tuple(event.pre.band_paths))
    (work_dir / "event").mkdir(exist_ok=True)
    both = build_event_stack(post.stack_path, post.valid_path, pre.stack_path, pre.valid_path,
                             work_dir / "event", change, block_px=block_px)
    return post, {**both, "pre": dataclasses.asdict(pre)}
