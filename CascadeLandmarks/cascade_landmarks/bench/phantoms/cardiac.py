"""Cardiac CTA phantom with the five ``cardiac-5`` landmarks known exactly.

The anatomy, built in an anatomical frame (LPS millimetres, origin at the centre of the aortic annulus) and then
tilted and moved into the scanner:

- the aortic root: a tube from the left-ventricular outflow tract up the ascending aorta, three spherical
  sinuses (right coronary anteriorly, left coronary left-posteriorly, non-coronary right-posteriorly), the
  sinotubular junction, and the closed valve as three thin leaflet walls from the axis to the commissures;
- the left coronary artery: the left main leaving the left sinus and dividing into the LAD (towards the apex)
  and the circumflex (round the left atrioventricular groove); the right coronary artery leaving the right sinus
  round the right groove; all in epicardial fat;
- the left ventricle (myocardium round a contrast-filled cavity, ending in the apex), right ventricle, both
  atria, pulmonary trunk and descending aorta; lungs, spine, sternum and soft tissue round them.

The landmarks follow their definitions in ``Resources/LandmarkSets/cardiac-5.json``:

- apex cordis: the tip of the left ventricle's outer (epicardial) surface, along its long axis;
- left and right coronary ostia: where the artery's centreline leaves the aortic root's lumen;
- left main bifurcation: where the centrelines of the left main, LAD and circumflex meet;
- non-coronary commissure: the top of the commissure between the non-coronary and left coronary cusps, where
  their leaflet wall meets the aortic wall at the sinotubular junction.

Sizes, angles, branch positions and lengths, contrast, noise and blur vary from case to case; the same seed
gives the same case. Everything here is synthetic: figures measured on it are figures on phantoms.
"""

from __future__ import annotations

import numpy as np

from ...io.landmarks import Landmarks
from ...io.volumes import Volume
from .anatomy import (
    Anatomy,
    Box,
    Ellipsoid,
    Pose,
    Tube,
    Union,
    across,
    axes_along,
    curve,
    exit_point,
    rotation,
    spine,
    tissue_values,
    unit,
)
from .realism import ScanLook, realistic_tissues

LANDMARK_SET = "cardiac-5"
DEFAULT_SPACING_MM = (0.4, 0.4, 0.4)
FIELD_OF_VIEW_MM = (128.0, 128.0, 128.0)


def make_case(seed: int, *, spacing_mm=DEFAULT_SPACING_MM, realistic: bool = False) -> tuple[Volume, Landmarks]:
    """One cardiac CTA phantom (int16 HU) and its five landmarks (LPS mm); the same seed gives the same case."""
    return anatomy(seed, realistic=realistic).case(spacing_mm, FIELD_OF_VIEW_MM, LANDMARK_SET)


def anatomy(seed: int, *, realistic: bool = False) -> Anatomy:
    """The anatomy of case ``seed``, before it meets a voxel grid (with ``realistic``, the scanner's look of
    :mod:`.realism` and its contrast timing, drawn from a stream of their own)."""
    rng = np.random.default_rng(seed)
    hu = tissue_values(rng)
    look = None
    if realistic:
        extra = np.random.default_rng([seed, 7])
        look = ScanLook.random(extra, phase=("arterial", "late arterial")[int(extra.integers(2))])  # gated CTA
        hu = realistic_tissues(extra, look.phase)
    scale = rng.uniform(0.9, 1.1)

    # The aortic root: annulus at the origin, axis tilted up, right and forward.
    annulus_radius = 11.5 * scale * rng.uniform(0.92, 1.08)
    root_axis = unit(rotation(rng.normal(size=3), rng.uniform(0, 10)) @ unit([-0.25, -0.35, 1.0]))
    junction_height = 1.6 * annulus_radius * rng.uniform(0.9, 1.1)
    junction_radius = 0.95 * annulus_radius
    anterior = across([0.0, -1.0, 0.0], root_axis)
    right_sinus = rotation(root_axis, rng.uniform(-15, 15)) @ anterior
    left_sinus = rotation(root_axis, 120 + rng.uniform(-8, 8)) @ right_sinus
    non_sinus = rotation(root_axis, -120 + rng.uniform(-8, 8)) @ right_sinus

    # The left ventricle: base behind and left of the annulus, long axis to the front, left and down.
    long_axis = unit(rotation(rng.normal(size=3), rng.uniform(0, 12)) @ unit([0.55, -0.55, -0.6]))
    half_length = 42.0 * scale * rng.uniform(0.92, 1.08)
    width = 27.0 * scale * rng.uniform(0.9, 1.1)
    apical_wall = rng.uniform(5.0, 8.0)
    base = np.array([8.0, 10.0, -6.0]) * scale
    lv_centre = base + half_length * long_axis
    apex = lv_centre + half_length * long_axis
    lv_axes = axes_along(long_axis)

    pose = Pose.random(rng, max_degrees=10.0, centre_mm=60.0)
    middle = apex / 2  # halfway between the annulus (the origin) and the apex: the centre of the field of view
    pose.centre = pose.centre - pose.vector(middle)
    place = pose.point

    layers = []

    def paint(shape, tissue, inside=None):
        layers.append((shape, tissue, inside))

    # Surroundings: lungs either side, spine behind, sternum in front, descending aorta beside the spine.
    for side in (-1, 1):
        paint(Ellipsoid(place([side * 75, 35, 0]), [55, 70, 110], pose.turn), "lung")
    for part, tissue in spine(pose, rng, top_mm=120, bottom_mm=-140, posterior_mm=70 * scale, scale=scale):
        paint(part, tissue)
    paint(Box(place([-5, -62 * scale, -20]), [14, 5, 60], pose.turn), "cortical bone")
    paint(Box(place([-5, -62 * scale, -20]), [12, 3.5, 58], pose.turn), "cancellous bone")
    paint(Tube(place([[22 * scale, 48 * scale, 120], [22 * scale, 48 * scale, -140]]), 11 * scale), "blood")

    # The heart in its pericardial fat: atria and right ventricle first, the left ventricle over the septum.
    paint(Ellipsoid(place(lv_centre * 0.7), np.array([66, 50, 48]) * scale, pose.axes(lv_axes)), "fat")
    paint(Ellipsoid(place(np.array([12, 32, -4]) * scale), np.array([22, 17, 18]) * scale, pose.turn), "blood")
    paint(Ellipsoid(place(np.array([-30, 16, -14]) * scale), np.array([22, 20, 25]) * scale, pose.turn), "venous blood")
    rv_centre = lv_centre + np.array([-22, -16, 2]) * scale
    rv_axes = pose.axes(lv_axes)
    paint(Ellipsoid(place(rv_centre), np.array([36, 26, 20]) * scale + 3, rv_axes), "myocardium")
    paint(Ellipsoid(place(rv_centre), np.array([36, 26, 20]) * scale, rv_axes), "venous blood")
    pulmonary = curve(np.array([[-2, -28, -6], [8, -20, 30], [22, 4, 45]]) * scale, step_mm=2.0)
    paint(Tube(place(pulmonary), 12 * scale), "venous blood")
    paint(Ellipsoid(place(lv_centre), [half_length, width, width], pose.axes(lv_axes)), "myocardium")
    cavity_length = half_length - apical_wall / 2
    cavity = Ellipsoid(
        place(lv_centre - apical_wall / 2 * long_axis), [cavity_length, width - 9, width - 9], pose.axes(lv_axes)
    )
    paint(cavity, "blood")

    # The fat pad round the aortic root, where the coronary arteries leave it.
    collar = Tube(place([2 * root_axis, 40 * root_axis]), 1.35 * annulus_radius + 8.0)
    paint(collar, "fat")

    # The aortic root and ascending aorta.
    bend = across([0.3, 1.0, 0.0], root_axis)
    aorta_points = [
        -12 * root_axis,
        np.zeros(3),
        junction_height * root_axis,
        45 * root_axis,
        70 * root_axis + 15 * bend,
        80 * root_axis + 40 * bend,
    ]
    centreline = curve(aorta_points, step_mm=1.0)
    heights = centreline @ root_axis
    radii = np.interp(heights, [-12, 0, junction_height, 45], [0.9, 1.0, 0.95, 1.1]) * annulus_radius
    aorta = Tube(place(centreline), radii)
    sinus_height = 0.45 * junction_height
    sinus_radius = 0.75 * annulus_radius
    sinus_centres = {
        name: sinus_height * root_axis + 0.55 * annulus_radius * direction
        for name, direction in (("right", right_sinus), ("left", left_sinus), ("non", non_sinus))
    }
    lumen = Union([aorta, *(Ellipsoid(place(c), sinus_radius) for c in sinus_centres.values())])
    paint(lumen, "blood")

    # The closed aortic valve: a thin leaflet wall from the axis to each commissure, clipped to the lumen.
    commissures = {}
    for name, direction in (
        ("non-left", rotation(root_axis, 180) @ right_sinus),
        ("right-left", rotation(root_axis, 60) @ right_sinus),
        ("right-non", rotation(root_axis, -60) @ right_sinus),
    ):
        commissures[name] = junction_height * root_axis + junction_radius * direction
        bottom = 0.2 * junction_height
        wall_centre = (junction_height + bottom) / 2 * root_axis + junction_radius / 2 * direction
        wall_axes = np.column_stack([direction, root_axis, np.cross(root_axis, direction)])
        half = [junction_radius / 2 + 1.0, (junction_height - bottom) / 2, 0.6]
        paint(Box(place(wall_centre), half, pose.axes(wall_axes)), "valve", inside=lumen)

    # Coronary arteries: each starts inside its sinus and leaves through the wall.
    coronary_radius = 2.0 * scale * rng.uniform(0.9, 1.1)
    left_out = unit(left_sinus + rng.uniform(-0.2, 0.2) * root_axis - 0.1 * long_axis)
    wall = sinus_centres["left"] + (sinus_radius + 0.5) * left_out
    left_main_length = rng.uniform(7.0, 14.0) * scale
    bifurcation = wall + left_main_length * unit(left_out + 0.35 * long_axis)
    left_main = curve([sinus_centres["left"], wall, bifurcation], step_mm=0.5)
    lad_direction = unit(long_axis + rng.uniform(-0.3, 0.1) * unit(np.cross(root_axis, long_axis)) - 0.4 * bend)
    lad = curve(
        [
            bifurcation,
            bifurcation + 14 * lad_direction,
            apex - 0.45 * (apex - bifurcation) + np.array([0, -6, 0]),
            apex,
        ],
        step_mm=1.0,
    )
    circumflex_direction = unit(rotation(long_axis, rng.uniform(-15, 15)) @ unit([0.6, 0.8, -0.1]))
    circumflex = curve(
        [
            bifurcation,
            bifurcation + 14 * circumflex_direction,
            bifurcation + 30 * circumflex_direction + 12 * long_axis,
        ],
        step_mm=1.0,
    )
    right_out = unit(right_sinus + rng.uniform(-0.2, 0.2) * root_axis)
    right_wall = sinus_centres["right"] + (sinus_radius + 0.5) * right_out
    right_coronary = curve(
        [
            sinus_centres["right"],
            right_wall,
            right_wall + 10 * unit(right_out + np.array([-0.6, 0, 0])),
            right_wall + 25 * unit([-0.8, -0.2, -0.6]),
            right_wall + 50 * unit([-0.5, 0.4, -0.8]),
        ],
        step_mm=0.5,
    )
    taper = coronary_radius * np.array([1.0, 0.55])
    paint(Tube(place(left_main), coronary_radius), "blood")
    for branch in (lad, circumflex):
        paint(Tube(place(branch), np.linspace(*(taper * 0.85), len(branch))), "blood")
    paint(Tube(place(right_coronary), np.linspace(*(taper * 0.95), len(right_coronary))), "blood")

    return Anatomy(
        layers=layers,
        tissues=hu,
        background="soft tissue",
        landmarks={
            "apex cordis": place(apex),
            "left coronary ostium": exit_point(place(left_main), lumen),
            "right coronary ostium": exit_point(place(right_coronary), lumen),
            "left main bifurcation": place(bifurcation),
            "non-coronary commissure": place(commissures["non-left"]),
        },
        vessels={
            "aorta": (place(centreline), lumen),
            "left main": (place(left_main), None),
            "left anterior descending": (place(lad), None),
            "circumflex": (place(circumflex), None),
            "right coronary": (place(right_coronary), None),
        },
        centre=place(middle) + rng.uniform(-6.0, 6.0, size=3),
        blur_mm=rng.uniform(0.35, 0.7),
        noise_hu=rng.uniform(12.0, 35.0),
        seed=seed,
        look=look,
    )
