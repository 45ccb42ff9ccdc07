"""Apply the torchvision-on-CPU-torch fix (``tasks.core.torchvision_compat``) when ``models`` is
imported, before segmentation-models-pytorch, timm or torchvision are."""

from __future__ import annotations

from tasks.core.torchvision_compat import ensure_torchvision_importable

NATIVE_TORCHVISION = ensure_torchvision_importable()
