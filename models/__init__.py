"""Models: networks and what uses them, above ``tasks.core`` only.

``registry`` (the 12 paper architectures over segmentation-models-pytorch), ``checkpoint``
(safetensors + model card), ``detectors`` (network, ensemble, ONNX export, index rule),
``evaluate`` (scores and comparison tables), ``ensemble``, ``export`` (ONNX), ``index_rule``
(the weights-free bare-soil rule), ``metrics``; ``data/`` (dataset layouts) and ``training/``.

The torchvision compatibility shim is imported first so that smp/timm import on CPU-only torch.
"""

from models import _torchvision_compat  # noqa: F401  (must run before smp/timm/torchvision)
