"""Inference over the analysis grid, block by block, in this process or on a Dask cluster
(``blocks``, ``cluster``)."""
