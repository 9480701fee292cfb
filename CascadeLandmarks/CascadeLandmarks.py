"""CascadeLandmarks: the 3D Slicer module.

This file stays thin (see STYLE.md, rule 1): the engine is the ``cascade_landmarks`` package beside it,
which needs no Slicer. Heavy imports (torch, SimpleITK) happen inside functions, so Slicer starts fast and
the module loads before torch is installed. So far the module registers itself and its help; the Widget,
Logic and Test classes arrive with the Slicer-module work (Detect, inspect, correct, fine-tune).
"""

from __future__ import annotations

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class CascadeLandmarks(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cascade Landmarks"
        self.parent.categories = ["Landmarks"]
        self.parent.dependencies = []
        self.parent.contributors = ["CascadeLandmarks team"]
        self.parent.helpText = (
            "Finds anatomical landmarks in CT angiography with the two-stage cascade regression model of "
            "Tan et al.: a 3D U-Net regresses one heatmap per landmark on the downsampled volume, then one "
            "small CNN per landmark refines each point from a full-resolution patch. "
            "See the <a href='https://github.com/cascade-landmarks/CascadeLandmarks#readme'>README</a>."
        )
        self.parent.acknowledgementText = (
            "Method: Tan et al., 'A Cascade Regression Model for Anatomical Landmark Detection'. "
            "Landmark sets: the paper's cardiac and aortic landmarks, and the AFIDs protocol (CC-BY-4.0)."
        )
