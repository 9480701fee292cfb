"""Files in and out, with no torch: voxel index <-> LPS/RAS millimetres (``coordinates``), volumes (``volumes``),
point lists (``landmarks``), landmark-set definitions (``landmark_sets``), folders and manifests of cases
(``cases``), the extension's shipped files (``resources``), and writing every file atomically
(``atomic_files``)."""
