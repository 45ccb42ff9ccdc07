"""Make ``import torchvision`` (and so smp and timm) work on the CPU build of torch.

The torchvision 0.28.0 wheel on the registry is a CUDA build: its ``_C.so`` needs ``libtorch_cuda.so``
and fails to load on CPU torch, after which torchvision's Python code raises ``RuntimeError: operator
torchvision::nms does not exist`` at import. segmentation-models-pytorch and timm only need
torchvision's Python code, so when the extension does not load we register schema-only ops under the
``torchvision`` namespace (see ../shared/TOOLCHAIN.md). Where torchvision loads normally (a GPU
machine) nothing changes.

Two ways in, one implementation:

- :func:`ensure_torchvision_importable` applies the fix now (``models`` does, on import);
- :func:`install_import_hook` applies it lazily, the moment anything first imports torchvision: it
  costs nothing at start-up (torch is not imported until then). ``import tasks`` and ``import
  flows`` install it, so a user's script that imports any of our packages first can then import
  segmentation_models_pytorch, timm or torchvision directly.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_FRAGMENT = None  # keeps the library registration alive for the life of the process


def ensure_torchvision_importable() -> bool:
    """Return True when torchvision's native ops loaded, False when schema-only ops were registered."""
    global _FRAGMENT
    import torch

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


class _FixBeforeTorchvision(importlib.abc.MetaPathFinder):
    """On the first import of torchvision: remove itself, apply the fix, let the import go on."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall_import_hook()
            ensure_torchvision_importable()
        return None  # the normal finders import the module


def install_import_hook() -> None:
    """Apply the fix lazily, before torchvision's first import (idempotent; nothing when torchvision
    is imported already)."""
    if "torchvision" in sys.modules or any(isinstance(f, _FixBeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _FixBeforeTorchvision())


def uninstall_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FixBeforeTorchvision)]
