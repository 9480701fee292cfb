"""Research tooling, not needed to detect or train: synthetic phantoms (``phantoms``), the paper's tables on them
(``paper_tables``), the AFIDs brain benchmark (``afids``), speed and memory of detection (``speed``), and
shipping a model with the extension (``bundling``)."""
