"""The CTA phantoms: reproducible, plausible in Hounsfield units, and labelled where each definition says.

The phantoms are made at coarse voxels here (1.0 mm cardiac, 2.0 mm aortic) to keep the tests fast; the anatomy
and the landmarks do not depend on the voxel size.
"""

import numpy as np
import pytest

from cascade_landmarks.bench.phantoms import aortic, cardiac
from cascade_landmarks.cli import main
from cascade_landmarks.io.landmark_sets import load_landmark_set
from cascade_landmarks.io.landmarks import read_landmarks
from cascade_landmarks.io.volumes import read_volume, values_at

CONTRAST_HU = 200.0
VESSEL_LANDMARKS = {
    "cardiac": ["left coronary ostium", "right coronary ostium", "left main bifurcation"],
    "aortic": list(load_landmark_set(aortic.LANDMARK_SET).labels),
}
BIFURCATIONS = {"cardiac": ["left main bifurcation"], "aortic": ["aortic bifurcation"]}
SPACING_MM = {"cardiac": 1.0, "aortic": 2.0}


@pytest.fixture(scope="module", params=["cardiac", "aortic"])
def case(request):
    module = {"cardiac": cardiac, "aortic": aortic}[request.param]
    volume, landmarks = module.make_case(7, spacing_mm=SPACING_MM[request.param])
    return request.param, volume, landmarks


def _bright_share(volume, point_lps, radius_mm):
    """Share of the voxels within ``radius_mm`` of a point that hold contrast-filled blood."""
    k, j, i = np.indices(volume.array.shape)
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    distance = np.linalg.norm(volume.geometry.index_to_lps(ijk) - point_lps, axis=1)
    values = volume.array.reshape(-1)[distance <= radius_mm]
    assert values.size >= 7, "the ball must hold several voxels"
    return float(np.mean(values > CONTRAST_HU))


def test_the_same_seed_gives_the_same_case_and_another_seed_another():
    first_volume, first_landmarks = cardiac.make_case(3, spacing_mm=2.0)
    again_volume, again_landmarks = cardiac.make_case(3, spacing_mm=2.0)
    _, other_landmarks = cardiac.make_case(4, spacing_mm=2.0)
    assert np.array_equal(first_volume.array, again_volume.array)
    assert np.allclose(first_volume.geometry.origin, again_volume.geometry.origin)
    assert np.array_equal(first_landmarks.positions_lps, again_landmarks.positions_lps)
    moved = np.linalg.norm(first_landmarks.positions_lps - other_landmarks.positions_lps, axis=1)
    assert np.all(moved > 1.0), "another seed must give another anatomy and pose"


def test_every_landmark_lies_inside_the_volume(case):
    _, volume, landmarks = case
    ijk = volume.geometry.lps_to_index(landmarks.positions_lps)
    margin = 10.0 / volume.geometry.spacing  # room for a stage-2 patch around each landmark
    assert np.all(ijk >= margin)
    assert np.all(ijk <= np.array(volume.geometry.size) - 1 - margin)


def test_a_landmark_at_the_edge_of_a_random_field_of_view_is_still_inside_it():
    # Seed 55's field of view (placed at random round the heart) cut its commissure off by a third of a voxel;
    # the view now moves just enough to hold it, and every other seed's stays where it was.
    volume, landmarks = cardiac.make_case(55, spacing_mm=1.6)
    ijk = volume.geometry.lps_to_index(landmarks.positions_lps)
    assert np.all(ijk >= 0.5 - 1e-9)  # a voxel inside the volume's edges (at index -0.5 and size - 0.5)
    assert np.all(ijk <= np.asarray(volume.geometry.size) - 1.5 + 1e-9)
    assert volume.geometry.origin[2] == pytest.approx(-54.955, abs=1e-3)  # moved 2.05 mm from -57.007


def test_vessel_landmarks_sit_in_contrast_filled_blood(case):
    kind, volume, landmarks = case
    values = values_at(volume, landmarks.positions_lps)
    for label in VESSEL_LANDMARKS[kind]:
        assert values[landmarks.labels.index(label)] > CONTRAST_HU, label


def _distance_to_polyline(point, polyline):
    a, b = polyline[:-1], polyline[1:]
    t = np.clip(np.einsum("ij,ij->i", point - a, b - a) / np.einsum("ij,ij->i", b - a, b - a), 0, 1)
    return float(np.min(np.linalg.norm(a + t[:, None] * (b - a) - point, axis=1)))


@pytest.mark.parametrize(
    ("module", "ostia"),
    [
        (cardiac, {"left coronary ostium": "left main", "right coronary ostium": "right coronary"}),
        (
            aortic,
            {
                "brachiocephalic trunk origin": "brachiocephalic",
                "left common carotid artery origin": "left carotid",
                "left subclavian artery origin": "left subclavian",
                "celiac trunk origin": "celiac",
                "superior mesenteric artery origin": "superior mesenteric",
                "right renal artery origin": "right renal",
                "left renal artery origin": "left renal",
                "inferior mesenteric artery origin": "inferior mesenteric",
            },
        ),
    ],
)
def test_an_ostium_is_where_the_branch_centreline_crosses_the_parent_wall(module, ostia):
    for seed in (1, 2, 3):
        body = module.anatomy(seed)
        _, aorta_lumen = body.vessels["aorta"]
        for label, branch in ostia.items():
            point = body.landmarks[label]
            assert abs(aorta_lumen.distance(point[None])[0]) < 0.01, f"{label} is not on the aortic wall"
            assert _distance_to_polyline(point, body.vessels[branch][0]) < 0.01, f"{label} is off the {branch}"


@pytest.mark.parametrize(
    ("module", "label", "vessels"),
    [
        (cardiac, "left main bifurcation", ["left main", "left anterior descending", "circumflex"]),
        (aortic, "aortic bifurcation", ["aorta", "right iliac", "left iliac"]),
    ],
)
def test_a_bifurcation_is_where_the_centrelines_meet(module, label, vessels):
    for seed in (1, 2, 3):
        body = module.anatomy(seed)
        for vessel in vessels:
            assert _distance_to_polyline(body.landmarks[label], body.vessels[vessel][0]) < 0.01, (seed, vessel)


def test_a_bifurcation_lies_inside_the_lumen_in_the_image(case):
    kind, volume, landmarks = case
    for label in BIFURCATIONS[kind]:
        share = _bright_share(
            volume, landmarks.positions_lps[landmarks.labels.index(label)], 1.5 * volume.geometry.spacing.max()
        )
        assert share > 0.75, (label, share)


def test_the_phantom_holds_the_tissues_of_a_ct_angiogram(case):
    kind, volume, _ = case
    values = volume.array
    shares = {
        "air or lung": np.mean(values < -700),
        "fat": np.mean((values > -150) & (values < -50)),
        "soft tissue": np.mean((values > 0) & (values < 150)),
        "contrast-filled blood": np.mean((values > 250) & (values < 600)),
        "bone": np.mean(values > 600),
    }
    for tissue, share in shares.items():
        assert share > 0.002, f"{kind}: no {tissue}"
    assert volume.array.dtype == np.int16


def test_the_apex_is_on_the_left_ventricle_wall_not_in_blood_or_air():
    volume, landmarks = cardiac.make_case(11, spacing_mm=1.0)
    apex = landmarks.positions_lps[landmarks.labels.index("apex cordis")]
    assert -150 < values_at(volume, apex[None])[0] < CONTRAST_HU
    assert 0.0 < _bright_share(volume, apex, 12.0) < 0.5, "the contrast-filled cavity lies just inside the apex"


def test_the_phantom_command_writes_cases_that_read_back_as_made(tmp_path, capsys):
    assert main(["phantom", "aortic", "-n", "2", "--seed", "5", "--spacing", "3", "-o", str(tmp_path)]) == 0
    assert "synthetic" in capsys.readouterr().out
    volume = read_volume(tmp_path / "aortic-0006.nrrd")
    landmarks = read_landmarks(tmp_path / "aortic-0006.mrk.json")
    expected_volume, expected = aortic.make_case(6, spacing_mm=3.0)
    assert np.array_equal(volume.array, expected_volume.array)
    assert np.allclose(landmarks.positions_lps, expected.positions_lps, atol=1e-6)
    assert landmarks.labels == expected.labels


def test_the_phantom_command_refuses_a_bad_spacing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["phantom", "cardiac", "--spacing", "0,1", "-o", str(tmp_path)])
    assert "not a spacing in mm" in capsys.readouterr().err


@pytest.fixture(scope="module")
def realistic_pair():
    """Case 2 of the aortic phantom at 2 mm, plain and realistic (its noise grain, 1.1 mm, spans 2 mm voxels)."""
    pair = {}
    for realistic in (False, True):
        anatomy = aortic.anatomy(2, realistic=realistic)
        volume, landmarks = anatomy.case((2.0,) * 3, aortic.FIELD_OF_VIEW_MM, aortic.LANDMARK_SET)
        pair[realistic] = (anatomy, volume, landmarks)
    return pair


def test_a_realistic_phantom_has_the_grain_of_ct_noise_and_the_plain_one_white_noise(realistic_pair):
    from cascade_landmarks.bench.realism_report import _lumen_core, _noise

    correlations = {}
    for realistic, (anatomy, volume, _) in realistic_pair.items():
        _, correlations[realistic] = _noise(volume, _lumen_core(volume, *anatomy.vessels["aorta"]))
    assert correlations[False] < 0.0  # white noise (less the local mean: slightly negative)
    assert correlations[True] > 0.15  # blurred noise, as a reconstruction filter leaves it (the real CTA: 0.10)


def test_realistic_lungs_hold_vessels_and_the_landmarks_stay_in_contrast(realistic_pair):
    from cascade_landmarks.bench.phantoms.anatomy import Ellipsoid

    def dense_share_in_lungs(anatomy, volume):
        lungs = [shape for shape, tissue, _ in anatomy.layers if tissue == "lung" and isinstance(shape, Ellipsoid)]
        k, j, i = np.indices(volume.array.shape)
        points = volume.geometry.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3))
        inside = np.min([lung.distance(points) for lung in lungs], axis=0) < -10.0  # 10 mm inside the pleura
        return float(np.mean(volume.array.reshape(-1)[inside] > -500))

    plain, realistic = (dense_share_in_lungs(*realistic_pair[key][:2]) for key in (False, True))
    assert realistic > plain + 0.005  # vessels and their branches (and the pulmonary arteries) in the lungs
    _, volume, landmarks = realistic_pair[True]
    values = values_at(volume, landmarks.positions_lps)
    assert np.all(values > 120.0), dict(zip(landmarks.labels, values, strict=True))  # portal venous: 140 HU up


def test_the_realistic_additions_leave_the_plain_phantoms_as_they_were():
    # Drawn from their own random stream: the same seed gives the plain case it gave before they existed.
    plain, _ = aortic.make_case(7, spacing_mm=4.0)
    again, _ = aortic.make_case(7, spacing_mm=4.0, realistic=False)
    realistic, _ = aortic.make_case(7, spacing_mm=4.0, realistic=True)
    assert np.array_equal(plain.array, again.array)
    assert not np.array_equal(plain.array, realistic.array)
