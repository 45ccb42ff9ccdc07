"""Make ``import torchvision`` work on the CPU build of torch.

The torchvision 0.28.0 wheel on the registry is a CUDA build: its ``_C.so`` needs ``libtorch_cuda.so``
and fails to load on CPU torch, after which torchvision's Python code raises ``RuntimeError: operator
torchvision::nms does not exist`` at import. segmentation-models-pytorch and timm only need
torchvision's Python code, so when the extension does not load we register schema-only ops under the
``torchvision`` namespace (see ../shared/TOOLCHAIN.md). Where torchvision loads normally (a GPU
machine) this module changes nothing.
"""

from __future__ import annotations

import importlib.util
import os

import torch

_FRAGMENT = None  # keeps the library registration alive for the life of the process


def ensure_torchvision_importable() -> bool:
    """Return True when torchvision's native ops loaded, False when schema-only ops were registered."""
    global _FRAGMENT
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg_dir = list(spec.submodule_search_locations)[0]
    so = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if so:
        try:
            torch.ops.load_library(os.path.join(pkg_dir, so[0]))
            return True
        except (OSError, RuntimeError):
            pass
    if _FRAGMENT is None:
        try:
            torch.ops.torchvision.nms  # noqa: B018  (already defined by an earlier import)
            return True
        except (AttributeError, RuntimeError):
            pass
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _FRAGMENT = lib
    return False


NATIVE_TORCHVISION = ensure_torchvision_importable()
