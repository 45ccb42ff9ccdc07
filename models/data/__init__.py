"""Training data: the dataset layouts (scene, Landslide4Sense h5, chips) and their loaders."""
