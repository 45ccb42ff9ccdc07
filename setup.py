"""Install ``tasks/core/landslide_pipeline_torchvision.pth`` into site-packages (all project metadata
is in pyproject.toml).

The .pth makes a plain ``import segmentation_models_pytorch`` (or timm, torchvision) work in the
project's environment: on the first import of torchvision it applies
``tasks.core.torchvision_compat.ensure_torchvision_importable``; nothing of ours is imported before
that. It is a data file installed relative to the environment's prefix. setuptools' editable wheels
look for ``Distribution.has_data``, which distutils names ``has_data_files``, so without the alias
below ``pip install -e .`` would skip data files.
"""

import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

_PTH = "tasks/core/landslide_pipeline_torchvision.pth"


class _Distribution(Distribution):
    def has_data(self) -> bool:
        return bool(self.has_data_files())


_SITE_PACKAGES = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))

setup(distclass=_Distribution, data_files=[(_SITE_PACKAGES.as_posix(), [_PTH])])
