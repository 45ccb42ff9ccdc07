"""What the pre/post change filter removes on the bundled Iburi pair (a measurement, not a test).

    B=141.8903,42.7239,141.9300,42.7695    # the west part the published predictions cover
    landslide scan --region iburi-2018 --bbox $B --out build/change/post
    landslide scan --region iburi-2018 --bbox $B --start 2017-07-01 --end 2018-07-31 --out build/change/pre
    landslide change --post build/change/post --pre build/change/pre --out build/change/new.gpkg
    python tests/data/measure_change.py

Prints, for all post-event polygons, the kept ones and the removed ones, the share of their pixels
that the published CNN (Prakash et al. 2021; another model, not ground truth) marks as landslide.
"""

from __future__ import annotations

import sys

import geopandas as gpd
import rasterio
from rasterio.features import rasterize

from tasks.datasets.weak_labels import REFERENCE_DIR, REFERENCE_PRED


def main(post_gpkg: str = "build/change/post/landslides.gpkg",
         new_gpkg: str = "build/change/new.gpkg") -> None:
    with rasterio.open(REFERENCE_DIR / REFERENCE_PRED) as src:
        ref, transform, crs = src.read(1), src.transform, src.crs
    post = gpd.read_file(post_gpkg, layer="landslides")
    new = gpd.read_file(new_gpkg, layer="landslides")
    removed = post[~post.landslide_id.isin(new.landslide_id)]
    for name, g in (("all post", post), ("kept", new), ("removed", removed)):
        if not len(g):
            print(f"{name}: none")
            continue
        inside = rasterize(((geom, 1) for geom in g.to_crs(crs).geometry), out_shape=ref.shape,
                           transform=transform, fill=0, dtype="uint8").astype(bool)
        seen = inside & (ref != 255)
        print(f"{name}: {len(g)} polygons, {g.area.sum() / 1e6:.3f} km2; the published CNN marks "
              f"{(ref[seen] == 1).mean():.3f} of their {int(seen.sum())} px (where it looked) as landslide")


if __name__ == "__main__":
    main(*sys.argv[1:])
