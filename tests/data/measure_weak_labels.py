"""Measure the weak-label rule against the published Iburi predictions (docs/weak_labels.md).

Run from the repository root with the project's virtualenv:

    python tests/data/measure_weak_labels.py            # prints the numbers
    python tests/data/measure_weak_labels.py --png docs/img/weak_labels_overlap.png

Steps: align the reference grid to the S2 post grid (integer pixel offset, checked), cut the overlap
to the part the reference model processed, resample the 30 m slope/DSM bilinearly to the S2 grid,
choose the rule thresholds by grid search on the northern part only, then report rule, score and
redness against the reference on the north part and on the held-out southern strip, and the size of
the agreement set. Reads only ../shared/data/iburi_2018; light (a few seconds, < 200 MB).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.index_rule import (  # noqa: E402
    IGNORE,
    RuleParams,
    binary_scores,
    combine_weak_labels,
    redness_index,
    scar_rule,
    scar_score,
    threshold_at_fraction,
)

DATA = ROOT.parent / "shared" / "data" / "iburi_2018"
REF_DIR = DATA / "reference_predictions_west"
# Documented footprint of the reference model (README.txt): it processed rows/cols < 1849 of its
# original grid; below/right of that a 0 means "not processed", not "no landslide".
REF_PROCESSED_ROWS = 1849
REF_PROCESSED_COLS = 1849
# Held-out strip for model validation: pixel centres south of this latitude (southern ~1/3).
SPLIT_LAT = 42.7390

GRID = {
    "min_slope_deg": np.arange(4.0, 14.01, 1.0),
    "min_red_green_index": np.round(np.arange(-0.03, 0.0601, 0.01), 3),
    "min_brightness_refl": np.round(np.arange(0.080, 0.1101, 0.0025), 4),
}


def read_band(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform, src.crs


def pixel_offset(child: rasterio.Affine, parent: rasterio.Affine) -> tuple[int, int, float]:
    """(row, col) of the child grid's origin in the parent grid, and the largest fractional part."""
    if not (np.isclose(child.a, parent.a, rtol=1e-9) and np.isclose(child.e, parent.e, rtol=1e-9)):
        raise SystemExit(f"pixel sizes differ: {child.a, child.e} vs {parent.a, parent.e}")
    col = (child.c - parent.c) / parent.a
    row = (child.f - parent.f) / parent.e
    frac = max(abs(col - round(col)), abs(row - round(row)))
    return int(round(row)), int(round(col)), frac


def resample_to(path: Path, shape: tuple[int, int], transform: rasterio.Affine) -> np.ndarray:
    """Bilinear resampling of a single-band raster onto the S2 grid, NaN = nodata."""
    with rasterio.open(path) as src:
        data = src.read(1).astype(np.float32)
        if src.nodata is not None:
            data[data == src.nodata] = np.nan
        out = np.full(shape, np.nan, dtype=np.float32)
        reproject(data, out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs=src.crs, resampling=Resampling.bilinear,
                  src_nodata=np.nan, dst_nodata=np.nan)
    return out


def load() -> dict:
    bands = {}
    for name, num in (("blue", 2), ("green", 3), ("red", 4)):
        dn, s2_transform, crs = read_band(DATA / "s2_post" / f"S2_post_B{num}.tif")
        band = dn.astype(np.float32)
        band[dn == 0] = np.nan  # nodata 0
        bands[name] = band
    shape = bands["red"].shape
    ref_hc, ref_transform, _ = read_band(REF_DIR / "sentry_ex1_Predict_LS_HighConf_50.tif")
    conf, _, _ = read_band(REF_DIR / "sentry_ex1_Predict_LS_Conf.tif")
    cloud, _, _ = read_band(REF_DIR / "sentry_ex1_MaskImage.tif")

    row0, col0, frac = pixel_offset(s2_transform, ref_transform)
    # Overlap in S2 pixels: what the reference file covers AND what its model processed.
    n_rows = min(shape[0], REF_PROCESSED_ROWS - row0, ref_hc.shape[0] - row0)
    n_cols = min(shape[1], REF_PROCESSED_COLS - col0, ref_hc.shape[1] - col0)
    n_rows_file = min(shape[0], ref_hc.shape[0] - row0)  # incl. rows the model never processed
    last_row = int(np.nonzero(conf.any(axis=1))[0].max())
    win = (slice(0, n_rows), slice(0, n_cols))
    ref_win = (slice(row0, row0 + n_rows), slice(col0, col0 + n_cols))

    slope = resample_to(DATA / "dem" / "AW3D30_slope_deg.tif", shape, s2_transform)
    dsm = resample_to(DATA / "dem" / "AW3D30_DSM.tif", shape, s2_transform)
    lat_centre = s2_transform.f + (np.arange(n_rows) + 0.5) * s2_transform.e
    north = np.repeat((lat_centre >= SPLIT_LAT)[:, None], n_cols, axis=1)
    return {
        "red": bands["red"][win], "green": bands["green"][win], "blue": bands["blue"][win],
        "slope": slope[win], "dsm": dsm[win],
        "ref": ref_hc[ref_win] != 0, "conf": conf[ref_win], "cloud": cloud[ref_win] != 0,
        "north": north, "row0": row0, "col0": col0, "frac": frac, "last_row": last_row,
        "n_rows_file": n_rows_file, "s2_transform": s2_transform,
        "scene": {**bands, "slope": slope},
        "full": {k: v[:n_rows_file, :n_cols] for k, v in bands.items()},
        "ref_full": ref_hc[row0:row0 + n_rows_file, col0:col0 + n_cols] != 0,
        "ref_big": ref_hc[row0:row0 + n_rows, col0:col0 + n_cols],
        "rgb_full": np.dstack([bands[k][:n_rows_file, :n_cols] for k in ("red", "green", "blue")]),
    }


def aspect_deg(dem: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
    """Downslope direction, degrees clockwise from north, of a DEM on a north-up EPSG:4326 grid."""
    lat = transform.f + transform.e * dem.shape[0] / 2
    dy_m = abs(transform.e) * 111_320.0
    dx_m = transform.a * 111_320.0 * np.cos(np.radians(lat))
    d_row, d_col = np.gradient(dem.astype(np.float64), dy_m, dx_m)
    # rows run south: elevation rising with row means the slope faces north
    return (np.degrees(np.arctan2(-d_col, d_row)) + 360.0) % 360.0


def grid_search(d: dict, valid: np.ndarray) -> list[tuple[float, RuleParams]]:
    """IoU with the reference on ``valid`` pixels for every threshold triple of GRID."""
    r, g, b = d["red"], d["green"], d["blue"]
    red_green = (r - g) / (r + g)
    bright = (r + g + b) / 30000.0
    truth = d["ref"][valid]
    slope_ok = {t: (d["slope"] >= t)[valid] for t in GRID["min_slope_deg"]}
    rg_ok = {t: (red_green >= t)[valid] for t in GRID["min_red_green_index"]}
    br_ok = {t: (bright >= t)[valid] for t in GRID["min_brightness_refl"]}
    results = []
    for s, t, bt in itertools.product(*GRID.values()):
        pred = slope_ok[s] & rg_ok[t] & br_ok[bt]
        tp = np.count_nonzero(pred & truth)
        union = np.count_nonzero(pred | truth)
        results.append((tp / union, RuleParams(min_slope_deg=float(s),
                                               min_red_green_index=float(t),
                                               min_brightness_refl=float(bt))))
    results.sort(key=lambda x: -x[0])
    return results


def fmt(name: str, s: dict, frac: float | None = None) -> str:
    extra = f"  pred_frac={frac:.3f}" if frac is not None else ""
    return (f"  {name:<34} IoU={s['iou']:.3f} F1={s['f1']:.3f} "
            f"P={s['precision']:.3f} R={s['recall']:.3f}{extra}")


def extent(d: dict, rows: slice, cols: slice) -> str:
    t = d["s2_transform"]
    west, north = t * (cols.start, rows.start)
    east, south = t * (cols.stop, rows.stop)
    return f"lon {west:.5f}..{east:.5f}, lat {south:.5f}..{north:.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path,
                        help="write an overview PNG (RGB/reference/rule/labels)")
    args = parser.parse_args()

    d = load()
    n_rows, n_cols = d["ref"].shape
    print("== grid alignment")
    print(f"  S2 post pixel (0, 0) = reference pixel (row {d['row0']}, col {d['col0']}); "
          f"fractional part of the offset {d['frac']:.1e} px (exact: no resampling needed)")
    print(f"  reference: last row with any confidence = {d['last_row']} "
          f"(documented processed limit {REF_PROCESSED_ROWS - 1})")
    print(f"  overlap (processed): {n_rows} x {n_cols} S2 px, "
          f"{extent(d, slice(0, n_rows), slice(0, n_cols))}")
    n_north = int(d["north"][:, 0].sum())
    print(f"  north (selection): rows 0..{n_north - 1}, "
          f"{extent(d, slice(0, n_north), slice(0, n_cols))}")
    print(f"  south (held out):  rows {n_north}..{n_rows - 1}, "
          f"{extent(d, slice(n_north, n_rows), slice(0, n_cols))}  [centre lat < {SPLIT_LAT}]")
    print(f"  slope on the overlap (bilinear from 30 m): "
          f"median {np.nanmedian(d['slope']):.1f} deg, "
          f"p99 {np.nanpercentile(d['slope'], 99):.1f} deg; DSM {np.nanmin(d['dsm']):.0f}.."
          f"{np.nanmax(d['dsm']):.0f} m")

    # Sanity check of the alignment: IoU of the rule with the reference shifted by a few pixels.
    sc = d["scene"]
    rule_big = scar_rule(sc["red"], sc["green"], sc["blue"], sc["slope"])[:n_rows, :n_cols]
    inner = rule_big[4:n_rows - 4, 4:n_cols - 4]
    shift_iou = {}
    for dr, dc in itertools.product(range(-2, 3), repeat=2):
        shifted = d["ref_big"][4 + dr:n_rows - 4 + dr, 4 + dc:n_cols - 4 + dc] != 0
        shift_iou[(dr, dc)] = np.count_nonzero(inner & shifted) / np.count_nonzero(inner | shifted)
    best_shift = max(shift_iou, key=shift_iou.get)
    print(f"  rule-vs-reference IoU at zero shift {shift_iou[(0, 0)]:.4f}; best of +-2 px shifts "
          f"(row, col) {best_shift} with {shift_iou[best_shift]:.4f}")

    finite = np.isfinite(d["red"]) & np.isfinite(d["green"]) & np.isfinite(d["blue"]) \
        & np.isfinite(d["slope"])
    valid = finite & ~d["cloud"]
    parts = {"north": valid & d["north"], "south (held out)": valid & ~d["north"], "all": valid}
    print(f"  cloud-masked px in overlap: {int(d['cloud'].sum())}; "
          f"nodata px: {int((~finite).sum())}")

    print("== threshold choice (grid search on the north part only, objective IoU)")
    ranked = grid_search(d, parts["north"])
    best_iou, best = ranked[0]
    print(f"  best: {best}  IoU={best_iou:.4f}")
    for iou, p in ranked[1:5]:
        print(f"  next: slope>={p.min_slope_deg:g} rg>={p.min_red_green_index:g} "
              f"bright>={p.min_brightness_refl:g}  IoU={iou:.4f}")
    params = RuleParams()
    same = replace(params, min_slope_deg=best.min_slope_deg,
                   min_red_green_index=best.min_red_green_index,
                   min_brightness_refl=best.min_brightness_refl) == params
    print(f"  RuleParams() defaults: {params}  {'== best' if same else '!= best (update them)'}")

    rule = scar_rule(d["red"], d["green"], d["blue"], d["slope"], params)
    score = scar_score(d["red"], d["green"], d["blue"], d["slope"], params)
    red = redness_index(d["red"], d["blue"])
    print("== against the reference (HighConf_50), cloud-masked pixels excluded")
    for name, m in parts.items():
        ref_frac = d["ref"][m].mean()
        print(f" [{name}] {int(m.sum())} px, reference landslide fraction {ref_frac:.3f}")
        print(fmt("rule (scar_rule)", binary_scores(rule, d["ref"], m), rule[m].mean()))
        t_score = threshold_at_fraction(score, m, ref_frac)
        print(fmt("scar_score at reference fraction", binary_scores(score >= t_score, d["ref"], m),
                  (score >= t_score)[m].mean()))
        t_red = threshold_at_fraction(red, m, ref_frac)
        print(fmt(f"redness at reference fraction (t={t_red:+.4f})",
                  binary_scores(red >= t_red, d["ref"], m), (red >= t_red)[m].mean()))

    # The README's "~11% / IoU 0.25-0.28" counts the 153 rows the model never processed as 0.
    full_valid = np.ones(d["ref_full"].shape, bool)
    full_frac = d["ref_full"].mean()
    red_full = redness_index(d["full"]["red"], d["full"]["blue"])
    t_full = threshold_at_fraction(red_full, full_valid, full_frac)
    print(f"== whole file overlap incl. unprocessed rows ({d['n_rows_file']} rows): reference "
          f"fraction {full_frac:.3f}")
    print(fmt("redness at that fraction", binary_scores(red_full >= t_full, d["ref_full"],
                                                         full_valid)))

    print("== agreement set (weak labels), reference valid = processed and not cloud")
    labels = combine_weak_labels(rule, d["ref"], ~d["cloud"], rule_valid=finite)
    for name, m in (("north", d["north"]), ("south (held out)", ~d["north"]),
                    ("all", np.ones_like(d["north"]))):
        lab = labels[m]
        n_lab = np.count_nonzero(lab != IGNORE)
        print(f"  [{name}] labelled {n_lab / lab.size:.3f}, ignored {1 - n_lab / lab.size:.3f}, "
              f"landslide among labelled {np.count_nonzero(lab == 1) / n_lab:.3f} "
              f"(label 1: {np.count_nonzero(lab == 1) / lab.size:.3f} of all px)")
    ign = labels == IGNORE
    print(f"  ignored because: rule yes/ref no "
          f"{np.count_nonzero(ign & rule & ~d['ref']) / ign.size:.3f}"
          f", rule no/ref yes {np.count_nonzero(ign & ~rule & d['ref']) / ign.size:.3f}"
          f", cloud/nodata {np.count_nonzero(d['cloud'] | ~finite) / ign.size:.3f}")

    print("== reference confidence (Conf.tif, 0..99) vs the rule")
    for lo, hi in ((0, 1), (1, 25), (25, 50), (50, 90), (90, 99), (99, 100)):
        m = valid & (d["conf"] >= lo) & (d["conf"] < hi)
        print(f"  conf {lo:>2}..{hi - 1:<2}: {int(m.sum()):>6} px, "
              f"rule positive {rule[m].mean():.3f}")
    confident = ~d["cloud"] & ((d["conf"] == 0) | (d["conf"] >= 50))
    lab_c = combine_weak_labels(rule, d["ref"], confident, rule_valid=finite)
    n_c = np.count_nonzero(lab_c != IGNORE)
    print(f"  variant 'background only where conf == 0': labelled {n_c / lab_c.size:.3f}, "
          f"landslide among labelled {np.count_nonzero(lab_c == 1) / n_c:.3f}")

    print("== illumination: share of slopes >= 8 deg marked, by aspect (from the resampled DSM)")
    aspect = aspect_deg(d["dsm"], d["s2_transform"])
    steep = valid & (d["slope"] >= 8)
    for a0 in range(0, 360, 45):
        m = steep & (((aspect - a0 + 22.5) % 360) < 45)
        print(f"  facing {a0:>3} deg: {int(m.sum()):>6} px, reference {d['ref'][m].mean():.3f}, "
              f"rule {rule[m].mean():.3f}, both {(rule & d['ref'])[m].mean():.3f}")

    # Measured alternative, not used: the reference is blobby (a CNN at 10 m), so box-filtering the
    # bands before the rule matches it better, at the cost of a less literal per-pixel rule.
    from scipy.ndimage import uniform_filter
    print("== variant (not used): rule on box-filtered bands")
    for size in (3, 5):
        rs, gs, bs = (uniform_filter(d[k], size) for k in ("red", "green", "blue"))
        rule_s = scar_rule(rs, gs, bs, d["slope"], params)
        for name in ("north", "south (held out)"):
            print(fmt(f"{size}x{size} mean, {name}", binary_scores(rule_s, d["ref"], parts[name])))

    scene = d["scene"]
    rule_scene = scar_rule(scene["red"], scene["green"], scene["blue"], scene["slope"], params)
    print(f"== whole S2 scene: rule marks {rule_scene.mean():.3f}; west of col {n_cols} "
          f"(the reference's side) {rule_scene[:, :n_cols].mean():.3f}, east (lon >= 141.93) "
          f"{rule_scene[:, n_cols:].mean():.3f}")
    r, b = scene["red"], scene["blue"]
    white = ((r + scene["green"] + b) / 30000.0 > 0.15) & (b >= r)  # cloud-like: bright, not red
    print(f"  cloud-like white px (mean refl > 0.15, B >= R): {int(white.sum())}, "
          f"{int((white & rule_scene).sum())} pass the rule, "
          f"{int(white[:n_rows, :n_cols].sum())} in the labelled overlap")

    if args.png:
        write_png(args.png, d, rule, labels)
        print(f"wrote {args.png}")


def write_png(path: Path, d: dict, rule: np.ndarray, labels: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    rgb = np.clip((d["rgb_full"] - 400.0) / 1400.0, 0, 1) ** 0.8
    n_rows, n_cols = d["ref"].shape
    n_north = int(d["north"][:, 0].sum())
    pad = np.full((d["n_rows_file"] - n_rows, n_cols), np.nan)
    ref = np.vstack([d["ref"].astype(float), pad])
    rul = np.vstack([rule.astype(float), pad])
    lab = np.vstack([np.where(labels == IGNORE, 2, labels).astype(float), pad])
    lab[:n_rows][d["cloud"]] = np.nan
    fig, axes = plt.subplots(1, 4, figsize=(16, 6.4), sharex=True, sharey=True)
    panels = [("S2 post RGB (TOA, stretched)", None, None),
              ("reference (Prakash et al. 2021)", ref, ListedColormap(["#222222", "#ffcc00"])),
              ("scar_rule", rul, ListedColormap(["#222222", "#ff4040"])),
              ("weak labels: 0 / 1 / ignore", lab,
               ListedColormap(["#2060c0", "#ffcc00", "#aaaaaa"]))]
    for ax, (title, arr, cmap) in zip(axes, panels):
        ax.imshow(rgb, interpolation="nearest")
        if arr is not None:
            ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=0, vmax=cmap.N - 1,
                      interpolation="nearest", alpha=0.85)
        ax.axhline(n_north - 0.5, color="cyan", lw=1)
        ax.axhline(n_rows - 0.5, color="white", lw=1, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Iburi 2018 overlap, lon 141.8903-141.9300; cyan: north (threshold choice) | "
                 "south (held out); dashed: end of the reference's processed area", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
