"""The `landslide` command line and the Prefect flows: wiring only (no pixel work here).

``cli`` (entry point), ``options`` (shared options), ``scan`` (the one-off scan flow), ``regional``
(scheduled regional scans), ``train`` / ``evaluate`` (training and comparison flows), and the
subcommands of ``train_cli``, ``regional_cli``, ``dev_server_cli``.
"""

from tasks.core.torchvision_compat import install_import_hook

install_import_hook()  # smp/timm/torchvision import on CPU-only torch, whatever imports them later
