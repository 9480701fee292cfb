"""3D Slicer: MRML nodes <-> engine objects (``bridge``, the one module that imports ``slicer``), the module's
work on point lists (``workflow``), its background jobs (``runs``) and the processes they run in
(``background``). Nothing here imports torch."""
