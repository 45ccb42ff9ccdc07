"""Training: the loop with resume (``train``), losses, augmentation, run logs and the
architecture suite (``suite``)."""
