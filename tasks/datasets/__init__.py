"""Training datasets built from the catalog on the analysis grid (``weak_labels``: the Iburi
weak-label dataset)."""
