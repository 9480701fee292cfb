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
vary from case to case, and the same seed gives the same case.

``realistic=True`` adds what a clinical CTA also shows (:func:`_realistic_layers`, and the scanner's look of
:mod:`.realism`): the superior vena cava and brachiocephalic veins (one of them carrying undiluted contrast in
the arterial phases), the inferior vena cava, renal and portal veins; the pulmonary trunk and arteries, vessel
trees in textured lungs, trachea, bronchi and oesophagus; calcified plaques, at times a dissection flap with its
false lumen, or an aneurysm; the patient's build, the arms and the table; contrast timing from early arterial to
portal venous. Drawn from a random stream of their own, so the plain phantoms stay as they were. Everything here
is synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...io.landmarks import Landmarks
from ...io.volumes import Volume
from .anatomy import (
    Anatomy,
    Box,
    Ellipsoid,
    Pose,
    Tube,
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

LANDMARK_SET = "aortic-9"
DEFAULT_SPACING_MM = (0.71, 0.71, 0.81)
FIELD_OF_VIEW_MM = (300.0, 250.0, 500.0)


def make_case(seed: int, *, spacing_mm=DEFAULT_SPACING_MM, realistic: bool = False) -> tuple[Volume, Landmarks]:
    """One aortic CTA phantom (int16 HU) and its nine landmarks (LPS mm); the same seed gives the same case."""
    return anatomy(seed, realistic=realistic).case(spacing_mm, FIELD_OF_VIEW_MM, LANDMARK_SET)


def anatomy(seed: int, *, realistic: bool = False) -> Anatomy:
    """The anatomy of case ``seed``, before it meets a voxel grid (with ``realistic``, what a clinical CTA also
    shows)."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 7])  # the realistic additions' own stream
    hu = tissue_values(rng)
    look = ScanLook.random(extra) if realistic else None
    if look is not None:
        hu = realistic_tissues(extra, look.phase)
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
    if realistic and extra.random() < 0.15:  # an aneurysm: ascending, or below the renal arteries
        middle_mm = extra.uniform(20, 60) if extra.random() < 0.4 else walked[-1] - extra.uniform(40, 90)
        radius = radius * (1 + extra.uniform(0.3, 0.9) * np.exp(-(((walked - middle_mm) / extra.uniform(15, 35)) ** 2)))
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
    build = extra.uniform(0.95, 1.3) if realistic else 1.0  # the fat round the body: lean to obese
    body = np.array([150 * build, 112 * build, 2000]) * scale
    paint(Ellipsoid(place(np.array([0, 30, -120]) * scale), body, pose.turn), "fat")
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
    lumen = vessels["aorta"][1]
    extras = _realistic_layers(extra, place, pose, scale, centreline, radius, kidneys, build) if realistic else None
    if extras:
        layers.extend(extras.before_arteries)
    for _, vessel in vessels.values():
        paint(vessel, "blood")
    if extras:
        layers.extend((shape, tissue, None) for shape, tissue in extras.on_the_aorta)
        layers.extend((shape, tissue, lumen) for shape, tissue in extras.in_the_lumen)

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
        look=look,
    )


@dataclass
class _Extras:
    """What a clinical CTA shows beyond the plain phantom, in painting order: before the arteries (shape, tissue,
    clip or None), then over the aortic wall (shape, tissue), then inside the aortic lumen only (shape, tissue)."""

    before_arteries: list = field(default_factory=list)
    on_the_aorta: list = field(default_factory=list)
    in_the_lumen: list = field(default_factory=list)


def _realistic_layers(rng, place, pose, scale, centreline, radius, kidneys, build) -> _Extras:
    """Veins, pulmonary arteries, lung vessels and airways, oesophagus, arms, table, plaques and a dissection, in
    the anatomical frame (LPS mm, origin at the aortic annulus), placed into the scanner by ``place``."""
    painter = _Painter(rng, place, pose, scale)
    _veins(painter, kidneys)
    _lungs(painter)
    _abdomen(painter)
    _airways(painter)
    _patient(painter, build)
    _aortic_wall(painter, centreline, radius)
    return painter.extras


@dataclass
class _Painter:
    """Draws the realistic additions from ``rng`` and collects them in ``extras``, placed by ``place``."""

    rng: np.random.Generator
    place: object
    pose: Pose
    scale: float
    extras: _Extras = field(default_factory=_Extras)

    def add(self, shape, tissue: str, clip=None) -> None:
        """Paint ``shape`` before the arteries (within ``clip``, if given)."""
        self.extras.before_arteries.append((shape, tissue, clip))

    def tube(self, points, radius_mm, tissue: str, clip=None) -> np.ndarray:
        """A smooth tube through ``points`` (anatomical mm, jittered by 2 mm), its radius going from the first of
        ``radius_mm`` to the last; returns its centreline (scaled, anatomical frame)."""
        jitter = self.rng.normal(0, 2.0, size=np.shape(points))
        points = curve(np.asarray(points, dtype=float) * self.scale + jitter, step_mm=1.0)
        radii = np.linspace(*np.broadcast_to(radius_mm, 2), len(points))
        self.add(Tube(self.place(points), radii), tissue, clip)
        return points


def _veins(painter: _Painter, kidneys) -> None:
    """The superior vena cava and brachiocephalic veins (the injected arm's carries undiluted contrast in the
    arterial phases), the inferior vena cava, the renal veins, the portal and splenic veins."""
    rng, tube, scale = painter.rng, painter.tube, painter.scale
    injected = rng.choice(["right", "left"], p=[0.8, 0.2])
    svc_top = np.array([-26.0, 2.0, 72.0])
    tube(
        [[-60, 5, 135], [-38, 2, 105], svc_top],
        (6.5, 8.0),
        "contrast inflow" if injected == "right" else "venous blood",
    )
    tube([[62, 0, 128], [35, -14, 108], [0, -18, 96], svc_top], 6.0,
         "contrast inflow" if injected == "left" else "venous blood")  # fmt: skip
    tube([svc_top, [-24, 4, 30], [-18, 6, -10]], 9.0, "contrast inflow" if rng.random() < 0.5 else "venous blood")
    ivc = tube([[-16, 12, -60], [-24, 40, -130], [-24, 52, -220], [-22, 58, -300], [-12, 62, -345]], 11.0,
               "venous blood")  # fmt: skip
    left_kidney, right_kidney = kidneys["left"], kidneys["right"]
    renal_meet = ivc[np.argmin(np.abs(ivc[:, 2] - left_kidney[2]))] / scale
    tube([left_kidney / scale - [22, 6, -8], [22, 30, left_kidney[2] / scale + 6], renal_meet], 5.0, "venous blood")
    tube([right_kidney / scale + [22, -6, 8], renal_meet], 5.5, "venous blood")
    tube([[-10, 30, -225], [-30, 18, -210], [-50, 12, -195]], 7.0, "venous blood")  # portal vein to the liver
    tube([[-10, 30, -225], [30, 45, -215], [70, 50, -195]], 4.5, "venous blood")  # splenic vein


def _lungs(painter: _Painter) -> None:
    """The pulmonary trunk from the right ventricle and its arteries, and vessel trees in the lungs."""
    rng, tube, scale, place = painter.rng, painter.tube, painter.scale, painter.place
    split = np.array([18.0, 8.0, 42.0])
    tube([[28, -45, 5], [26, -25, 28], split], 13.0, "pulmonary blood")
    tube([split, [40, 18, 40], [58, 30, 30]], 10.0, "pulmonary blood")
    tube([split, [-10, 20, 36], [-45, 26, 30]], 10.0, "pulmonary blood")
    for side in (-1, 1):
        lung = Ellipsoid(place(np.array([side * 68, 40, -20]) * scale), np.array([58, 72, 135]) * scale,
                         painter.pose.turn)  # fmt: skip
        for _ in range(int(rng.integers(6, 12))):
            _vessel_tree(painter, np.array([side * 52, 28, 30]), side, lung, depth=3)


def _airways(painter: _Painter) -> None:
    """The trachea and main bronchi, and the oesophagus (at times holding air)."""
    rng, tube = painter.rng, painter.tube
    carina = np.array([-2.0, 24.0, 50.0])
    tube([[-2, 20, 220], [-2, 22, 120], carina], 9.0, "airway")
    tube([carina, [-30, 28, 30], [-48, 30, 20]], 6.0, "airway")
    tube([carina, [30, 32, 30], [50, 34, 18]], 5.5, "airway")
    gullet = [[6, 40, 220], [6, 42, 100], [10, 46, 0], [22, 34, -150], [50, 22, -175]]
    tube(gullet, 8.0, "muscle")
    if rng.random() < 0.5:
        tube(gullet[: int(rng.integers(2, 5))], 2.5, "airway")


def _abdomen(painter: _Painter) -> None:
    """Bowel loops (some holding air) in front of the vessels; the psoas and back muscles."""
    rng, scale, place, pose = painter.rng, painter.scale, painter.place, painter.pose
    for _ in range(int(rng.integers(25, 50))):
        centre = np.array([rng.uniform(-100, 100), rng.uniform(-85, 15), rng.uniform(-410, -200)])
        radii = rng.uniform(10, 28, 3)
        turn = pose.axes(rotation(rng.normal(size=3), rng.uniform(0, 90)))
        loop = Ellipsoid(place(centre * scale), radii * scale, turn)
        painter.add(loop, "bowel")
        if rng.random() < 0.3:
            painter.add(Ellipsoid(place(centre * scale), radii * scale * 0.5, loop.axes), "airway")
    for side in (-1, 1):
        painter.tube([[side * 22, 70, -230], [side * 40, 62, -330], [side * 60, 45, -420]], (9.0, 20.0), "muscle")
        painter.tube([[side * 40, 120, 100], [side * 40, 125, -200], [side * 38, 120, -420]], 22.0, "muscle")


def _patient(painter: _Painter, build: float) -> None:
    """The arms beside the chest (in half the scans: the others have them up), and the table under the back."""
    rng, scale, place, pose = painter.rng, painter.scale, painter.place, painter.pose
    if rng.random() < 0.5:
        for side in (-1, 1):
            shoulder = np.array([side * (150 * build + 35), 25, 120])
            arm = place(shoulder * scale + [0, 0, -130])
            painter.add(Ellipsoid(arm, np.array([40, 45, 170]) * scale, pose.turn), "fat")
            painter.add(Ellipsoid(arm, np.array([32, 37, 165]) * scale, pose.turn), "muscle")
            bone = [shoulder, shoulder + np.array([0, 5, -150]), shoulder + np.array([0, 10, -290])]
            painter.tube(bone, 11.0, "cortical bone")
            painter.tube(bone, 7.0, "cancellous bone")
    back = 30 + 112 * build
    painter.add(Box(place(np.array([0.0, back + 18, -120]) * scale), [260, 8, 1500], pose.turn), "table")


def _aortic_wall(painter: _Painter, centreline: np.ndarray, radius: np.ndarray) -> None:
    """Calcified plaques on the aortic wall, and at times (15% of scans) a dissection: a flap along the descending
    aorta with a false lumen of its own contrast on one side."""
    rng, place, pose, extras = painter.rng, painter.place, painter.pose, painter.extras
    walked = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centreline, axis=0), axis=1))])
    for _ in range(int(rng.poisson(4))):
        n = int(rng.integers(len(centreline)))
        tangent = centreline[min(n + 1, len(centreline) - 1)] - centreline[max(n - 1, 0)]
        outward = rotation(tangent, rng.uniform(0, 360)) @ axes_along(tangent)[:, 1]
        centre = centreline[n] + (radius[n] - 0.5) * outward
        plaque = Ellipsoid(place(centre), rng.uniform(0.8, 2.5, 3), pose.axes(axes_along(tangent)))
        extras.on_the_aorta.append((plaque, "calcium"))
    if rng.random() >= 0.15:
        return
    start = int(np.searchsorted(walked, rng.uniform(60, 140)))
    stop = int(np.searchsorted(walked, rng.uniform(walked[-1] - 200, walked[-1] - 30)))
    normal = rng.normal(size=3)
    for n in range(start, max(stop, start + 1), 4):
        end = centreline[min(n + 4, len(centreline) - 1)]
        tangent = end - centreline[n]
        side = across(normal, tangent)
        axes = pose.axes(np.column_stack([unit(tangent), side, np.cross(unit(tangent), side)]))
        half, middle = np.linalg.norm(tangent) / 2 + 0.5, (centreline[n] + end) / 2
        extras.in_the_lumen += [
            (Box(place(middle + side * radius[n] / 2), [half, radius[n] / 2, radius[n]], axes), "false lumen"),
            (Box(place(middle), [half, 0.8, radius[n]], axes), "soft tissue"),
        ]


def _vessel_tree(painter: _Painter, start, side, lung, *, depth: int) -> None:
    """A random branching vessel from ``start`` outwards into the lung on ``side``, thinning as it branches."""
    rng, place, scale = painter.rng, painter.place, painter.scale
    direction = unit([side * 1.0, rng.normal(0, 0.6), rng.normal(0, 0.8)])
    stack = [(np.asarray(start, float), direction, 3.5, depth)]
    while stack:
        point, heading, width, left = stack.pop()
        end = point + heading * rng.uniform(18, 40)
        painter.add(Tube(place(np.array([point, end]) * scale), [width, width * 0.8]), "pulmonary blood", lung)
        if left > 1:
            for _ in range(2):
                turn = rotation(rng.normal(size=3), rng.uniform(20, 45))
                stack.append((end, turn @ heading, width * 0.7, left - 1))
