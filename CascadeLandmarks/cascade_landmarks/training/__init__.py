"""Training: the training settings (``config``), samples for both stages (``batches``), random transforms
(``augmentation``), the loop itself (``trainer``), its checkpoints (``checkpoints``, and ``run_files`` for
their names, with no torch) and several processes under torchrun (``distributed``)."""
