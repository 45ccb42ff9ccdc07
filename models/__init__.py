"""Models: registry over segmentation-models-pytorch, checkpoints, losses, metrics.

The torchvision compatibility shim is imported first so that smp/timm import on CPU-only torch.
"""

from models import _torchvision_compat  # noqa: F401  (must run before smp/timm/torchvision)
