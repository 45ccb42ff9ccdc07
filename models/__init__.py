"""Models: networks and what uses them, above ``tasks.core`` only.

``registry`` (the 12 paper architectures over segmentation-models-pytorch), ``checkpoint``
(safetensors + model card), ``detectors`` (network, ensemble, ONNX export, index rule),
``evaluate`` (scores and comparison tables), ``cards`` (card summaries without torch), ``ensemble``,
``export`` (ONNX), ``index_rule`` (the weights-free bare-soil rule), ``metrics``; ``data/`` (dataset
layouts) and ``training/``.

Importing ``models`` installs the torchvision fix lazily (``tasks.core.torchvision_compat``): torch
is not imported until something imports torchvision, so ``models.cards`` stays fast.
"""

from tasks.core.torchvision_compat import install_import_hook

install_import_hook()  # smp/timm/torchvision import on CPU-only torch, whatever imports them later
