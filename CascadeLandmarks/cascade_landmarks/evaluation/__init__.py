"""How well a model does on annotated cases: errors in mm and their tables (``errors``), the statistics every
table reports (``metrics``), and pictures: quality-control slices and the error plot (``figures``)."""
