"""From a volume to points: what the networks see (``preprocessing``), detection itself (``detector``) and the
record it gives (``detection``, which needs no torch)."""
