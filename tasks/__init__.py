"""The scan pipeline's stages as plain functions of paths (no Prefect here; ``flows/`` wraps them).

One subpackage a role, imports pointing one way (``docs/architecture.md``; checked by the
import-linter contracts in ``pyproject.toml``):

- ``tasks.core``: the contracts every layer shares (bands, errors, grid, tiling, stitching, the one
  patch loop, GDAL settings, atomic file writes); imports nothing else of the project.
- ``tasks.sources``: the data catalog and the scene sources (local, STAC, Sentinel Hub), mosaics,
  cloud masks, scene listing for regional scans.
- ``tasks.raster``: terrain (slope) and alignment of every layer on the analysis grid.
- ``tasks.predict``: block-wise inference, here or on a Dask cluster.
- ``tasks.vector``: mask cleanup and polygons.
- ``tasks.run``: the scan plan, its steps and the run folder's outputs.
- ``tasks.inventory``: the regional landslide inventory and pre/post change.
- ``tasks.datasets``: training datasets built from the catalog.
"""

from tasks.core.torchvision_compat import install_import_hook

install_import_hook()  # smp/timm/torchvision import on CPU-only torch, whatever imports them later
