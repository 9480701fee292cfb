"""The web app (``cascade-landmarks serve``): the Slicer module's workflow in a browser, on trame-slicer."""
