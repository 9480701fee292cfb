"""The cascade model: the stage-1 network (``heatmap_unet``) and its heatmaps (``heatmaps``), the stage-2 networks
(``displacement_cnn``), the training losses (``losses``), the configuration as data (``config``), the model
file (``model_file``), the registry of models by name (``registry``) and where they run (``devices``)."""
