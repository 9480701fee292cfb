"""Thoraco-abdominal aortic CTA phantom with the nine ``aortic-9`` landmarks known exactly.

The anatomy, built in an anatomical frame (LPS millimetres, origin at the centre of the aortic annulus) and then
tilted and moved into the scanner:

- the aorta: ascending, the arch over to the left and back, descending beside the spine through the hiatus, and
  abdominal down to the iliac bifurcation, tapering as it goes;
- the arch branches (brachiocephalic trunk, dividing into the right subclavian and common carotid; left common
  carotid; left subclavian), the celiac trunk (dividing into the hepatic and splenic arteries), the superior
  mesenteric artery, both renal arteries to their kidneys, the inferior mesenteric artery and both common iliacs;
- the heart, lungs, ribs, spine, liver, spleen and kidneys, in soft tissue and fat.

The landmarks follow their definitions in ``Resources/LandmarkSets/aortic-9.json``: a branch's origin is where
its centreline leaves the aortic lumen; the aortic bifurcation is where the centrelines of the common iliacs meet
the aorta's. Levels follow the textbook (celiac at T12/L1, the SMA about 1 cm below it, the renals 1-2.5 cm
lower, the IMA at L3, the bifurcation at L4); sizes, angles, levels, curvature, pose, contrast, noise and blur
vary from case to case, and the same seed gives the same case. Everything here is synthetic.
"""

from __future__ import annotations

import numpy as np

from ...io.landmarks import Landmarks
from ...io.volumes import Volume
from .anatomy import Anatomy, Ellipsoid, Pose, Tube, curve, exit_point, rotation, spine, tissue_values

LANDMARK_SET = "aortic-9"
DEFAULT_SPACING_MM = (0.71, 0.71, 0.81)
FIELD_OF_VIEW_MM = (300.0, 250.0, 500.0)


def make_case(seed: int, *, spacing_mm=DEFAULT_SPACING_MM) -> tuple[Volume, Landmarks]:
    """One aortic CTA phantom (int16 HU) and its nine landmarks (LPS mm); the same seed gives the same case."""
    return anatomy(seed).case(spacing_mm, FIELD_OF_VIEW_MM, LANDMARK_SET)


def anatomy(seed: int) -> Anatomy:
    """The anatomy of case ``seed``, before it meets a voxel grid."""
    rng = np.random.default_rng(seed)
    hu = tissue_values(rng)
    scale = rng.uniform(0.92, 1.08)

    def vary(points, mm):
        return np.asarray(points, dtype=float) * scale + rng.uniform(-mm, mm, size=np.shape(points))

    # The aorta's centreline, annulus to bifurcation, and its radius along the way.
    control = vary(
        [
            [0, 0, 0],
            [-5, -5, 50],
            [-2, 6, 76],
            [10, 26, 84],
            [22, 44, 70],
            [25, 54, 40],
            [24, 58, -20],
            [18, 58, -110],
            [10, 50, -190],
            [5, 40, -240],
            [3, 36, -290],
            [0, 34, -335],
        ],
        4.0,
    )
    control[0] = 0.0
    centreline = curve(control, step_mm=1.5)
    walked = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centreline, axis=0), axis=1))])
    at_control = walked[[np.argmin(np.linalg.norm(centreline - c, axis=1)) for c in control]]
    control_radii = [12, 15, 14, 13, 12.5, 12, 12, 11.5, 11, 10, 9.5, 8.5]
    size = rng.uniform(0.9, 1.1) * scale
    radius = size * np.interp(walked, at_control, control_radii)
    aorta = Tube(centreline, radius)
    bifurcation = centreline[-1]

    def on_aorta(level_mm):
        """The centreline point of the descending aorta at height ``level_mm`` (anatomical frame)."""
        descending = np.flatnonzero(centreline[:, 1] > 45)[0]
        below = descending + np.flatnonzero(centreline[descending:, 2] <= level_mm)[0]
        return centreline[below]

    branches = {}  # name -> (centreline, radii)

    def branch(name, points, start_radius, end_radius=None):
        points = curve(points, step_mm=0.75)
        branches[name] = (points, np.linspace(start_radius, end_radius or start_radius, len(points)))

    # Arch branches, in order along the arch from the right.
    top = walked[np.argmax(centreline[:, 2])]
    origins = {
        "brachiocephalic": aorta.at(top - rng.uniform(10, 16) * scale),
        "left carotid": aorta.at(top + rng.uniform(-3, 3) * scale),
        "left subclavian": aorta.at(top + rng.uniform(10, 16) * scale),
    }
    trunk_end = origins["brachiocephalic"] + vary([-14, -4, 38], 4)
    branch(
        "brachiocephalic",
        [origins["brachiocephalic"], origins["brachiocephalic"] + np.array([-3, -2, 15]), trunk_end],
        6.5 * size,
        6 * size,
    )
    branch(
        "right subclavian",
        [trunk_end, trunk_end + vary([-25, 5, 8], 4), trunk_end + vary([-55, 10, -5], 5)],
        4.5 * size,
    )
    branch("right carotid", [trunk_end, trunk_end + vary([2, 2, 30], 4), trunk_end + vary([4, 6, 70], 5)], 3.5 * size)
    carotid = origins["left carotid"]
    branch("left carotid", [carotid, carotid + vary([2, 0, 20], 3), carotid + vary([10, 4, 90], 6)], 3.8 * size)
    subclavian = origins["left subclavian"]
    branch(
        "left subclavian",
        [
            subclavian,
            subclavian + vary([6, 2, 18], 3),
            subclavian + vary([30, 6, 40], 5),
            subclavian + vary([60, 8, 30], 5),
        ],
        4.5 * size,
    )

    # Abdominal branches, at their textbook levels below the hiatus.
    celiac_level = rng.uniform(-215, -200) * scale
    sma_level = celiac_level - rng.uniform(8, 16)
    renal_level = sma_level - rng.uniform(10, 25)
    ima_level = bifurcation[2] + rng.uniform(30, 45)
    celiac = on_aorta(celiac_level)
    celiac_end = celiac + vary([0, -18, 2], 3)
    branch("celiac", [celiac, celiac + np.array([0, -8, 1]), celiac_end], 3.6 * size)
    branch("hepatic", [celiac_end, celiac_end + vary([-20, -4, 4], 4), celiac_end + vary([-55, 0, 10], 5)], 2.8 * size)
    branch("splenic", [celiac_end, celiac_end + vary([20, 2, 4], 4), celiac_end + vary([60, 25, 10], 5)], 3.0 * size)
    sma = on_aorta(sma_level)
    branch(
        "superior mesenteric",
        [sma, sma + vary([0, -12, -4], 2), sma + vary([-2, -25, -35], 4), sma + vary([-5, -30, -100], 6)],
        3.5 * size,
        2.5 * size,
    )
    kidneys = {}
    for side, sign in (("right", -1), ("left", 1)):
        origin = on_aorta(renal_level + rng.uniform(-6, 6))
        hilum = origin + vary([sign * 45, 12, -6], 4)
        branch(f"{side} renal", [origin, origin + vary([sign * 14, 2, 0], 2), hilum], 2.9 * size)
        kidneys[side] = hilum + np.array([sign * 20, 6, -8])
    ima = on_aorta(ima_level)
    branch("inferior mesenteric", [ima, ima + vary([4, -10, -4], 2), ima + vary([20, -22, -35], 4)], 2.0 * size)
    for side, sign in (("right", -1), ("left", 1)):
        branch(
            f"{side} iliac",
            [bifurcation, bifurcation + vary([sign * 14, 2, -25], 3), bifurcation + vary([sign * 35, 8, -60], 4)],
            5.5 * size,
            5.0 * size,
        )

    pose = Pose.random(rng, max_degrees=6.0, centre_mm=60.0)
    middle = np.array([0.0, 30.0, (control[:, 2].max() + bifurcation[2]) / 2])
    pose.centre = pose.centre - pose.vector(middle)
    place = pose.point

    layers = []

    def paint(shape, tissue):
        layers.append((shape, tissue, None))

    # Body wall, then the organs, then the vessels over them.
    paint(Ellipsoid(place(np.array([0, 30, -120]) * scale), np.array([150, 112, 2000]) * scale, pose.turn), "fat")
    paint(Ellipsoid(place(np.array([0, 30, -120]) * scale), np.array([138, 100, 2000]) * scale, pose.turn), "muscle")
    paint(Ellipsoid(place(np.array([0, 32, -260]) * scale), np.array([120, 78, 170]) * scale, pose.turn), "fat")
    for sign in (-1, 1):
        paint(
            Ellipsoid(place(np.array([sign * 68, 40, -20]) * scale), np.array([58, 72, 135]) * scale, pose.turn), "lung"
        )
    for level in np.arange(110, -170, -26) * scale:
        angles = np.radians(np.linspace(-60, 240, 40))
        ring = np.column_stack([130 * np.cos(angles), 30 + 96 * np.sin(angles), level + 12 * np.sin(angles)]) * [
            scale,
            scale,
            1,
        ]
        paint(Tube(place(ring), 4.0), "cortical bone")
    for part, tissue in spine(pose, rng, top_mm=140, bottom_mm=-420, posterior_mm=78 * scale, scale=scale):
        paint(part, tissue)
    paint(Ellipsoid(place(np.array([12, -28, -40]) * scale), np.array([58, 44, 50]) * scale, pose.turn), "myocardium")
    paint(Ellipsoid(place(np.array([12, -28, -40]) * scale), np.array([44, 32, 38]) * scale, pose.turn), "blood")
    paint(Ellipsoid(place(np.array([-62, 5, -205]) * scale), np.array([72, 68, 70]) * scale, pose.turn), "liver")
    paint(Ellipsoid(place(np.array([82, 45, -195]) * scale), np.array([32, 28, 52]) * scale, pose.turn), "spleen")
    for side, centre in kidneys.items():
        tilt = rotation([0, 1, 0], 15 if side == "right" else -15)
        paint(Ellipsoid(place(centre), np.array([26, 22, 55]) * scale, pose.axes(tilt)), "kidney")

    vessels = {"aorta": (place(centreline), Tube(place(centreline), radius))}
    vessels.update({name: (place(points), Tube(place(points), radii)) for name, (points, radii) in branches.items()})
    for _, vessel in vessels.values():
        paint(vessel, "blood")
    lumen = vessels["aorta"][1]

    def origin_of(name):
        return exit_point(vessels[name][0], lumen)

    return Anatomy(
        layers=layers,
        tissues=hu,
        background="air",
        landmarks={
            "brachiocephalic trunk origin": origin_of("brachiocephalic"),
            "left common carotid artery origin": origin_of("left carotid"),
            "left subclavian artery origin": origin_of("left subclavian"),
            "celiac trunk origin": origin_of("celiac"),
            "superior mesenteric artery origin": origin_of("superior mesenteric"),
            "right renal artery origin": origin_of("right renal"),
            "left renal artery origin": origin_of("left renal"),
            "inferior mesenteric artery origin": origin_of("inferior mesenteric"),
            "aortic bifurcation": place(bifurcation),
        },
        vessels=vessels,
        centre=place(middle) + rng.uniform(-8.0, 8.0, size=3),
        blur_mm=rng.uniform(0.5, 0.9),
        noise_hu=rng.uniform(12.0, 35.0),
        seed=seed,
    )
