"""Landmark files in and out: coordinate systems honoured on read, labels, descriptions and order kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade_landmarks import (
    Landmarks,
    read_landmarks,
    read_landmarks_csv,
    write_landmarks,
    write_landmarks_csv,
)


def _assert_same(a: Landmarks, b: Landmarks, *, atol: float = 1e-9) -> None:
    assert a.labels == b.labels
    assert a.descriptions == b.descriptions
    np.testing.assert_allclose(a.positions_lps, b.positions_lps, atol=atol)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_markups_json_round_trip_in_either_frame(tmp_path, oblique_landmarks, system):
    path = write_landmarks(oblique_landmarks, tmp_path / "case.mrk.json", coordinate_system=system)
    document = json.loads(path.read_text())
    assert document["markups"][0]["coordinateSystem"] == system
    first = document["markups"][0]["controlPoints"][0]["position"]
    expected = oblique_landmarks.positions_lps[0] if system == "LPS" else oblique_landmarks.positions_ras[0]
    np.testing.assert_allclose(first, expected)
    _assert_same(read_landmarks(path), oblique_landmarks)


def test_markups_json_in_ras_is_converted_to_lps(tmp_path):
    document = {
        "markups": [
            {"type": "Line", "coordinateSystem": "LPS", "controlPoints": []},
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "controlPoints": [
                    {"label": "A", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
                    {"label": "B", "positionStatus": "undefined"},
                ],
            },
        ]
    }
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps(document))
    landmarks = read_landmarks(path)
    assert landmarks.labels == ["A", "B"]
    np.testing.assert_array_equal(landmarks.positions_lps[0], [-1.0, -2.0, 3.0])
    assert landmarks.defined.tolist() == [True, False]


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("not json", "not valid JSON"),
        ('{"markups": [{"type": "Curve"}]}', "holds no point list"),
        ('{"markups": [{"type": "Fiducial", "coordinateSystem": "IJK"}]}', "coordinate system 'IJK'"),
        ('{"markups": [{"type": "Fiducial", "coordinateUnits": "um"}]}', "millimetres"),
        ('{"something": 1}', "no 'markups' list"),
    ],
)
def test_bad_markups_json_is_refused_with_the_reason(tmp_path, content, phrase):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=phrase):
        read_landmarks(path)


FCSV_HEADER = "# Markups fiducial file version = {version}\n# CoordinateSystem = {system}\n"
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"


@pytest.mark.parametrize(
    ("version", "system", "expected_lps"),
    [
        ("4.6", "0", [-1.5, -2.5, 3.5]),  # Slicer 4.6 to 4.10: 0 is RAS
        ("4.6", "1", [1.5, 2.5, 3.5]),  # 1 is LPS
        ("4.11", "RAS", [-1.5, -2.5, 3.5]),
        ("4.11", "LPS", [1.5, 2.5, 3.5]),
    ],
)
def test_fcsv_honours_its_coordinate_system(tmp_path, version, system, expected_lps):
    text = FCSV_HEADER.format(version=version, system=system) + FCSV_COLUMNS
    text += 'vtkMRMLMarkupsFiducialNode_1,1.5,2.5,3.5,0,0,0,1,1,1,0,"P, one",a desc,\n'
    path = tmp_path / "points.fcsv"
    path.write_text(text)
    landmarks = read_landmarks(path)
    assert landmarks.labels == ["P, one"]
    assert landmarks.descriptions == ["a desc"]
    np.testing.assert_allclose(landmarks.positions_lps[0], expected_lps)


def test_a_markups_file_with_several_point_lists_is_refused_not_half_read(tmp_path, oblique_landmarks):
    path = write_landmarks(oblique_landmarks, tmp_path / "one.mrk.json")
    document = json.loads(path.read_text())
    document["markups"].append(document["markups"][0])
    (tmp_path / "two.mrk.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="holds 2 point lists; save each landmark list to its own file"):
        read_landmarks(tmp_path / "two.mrk.json")


def test_a_long_csv_saved_by_excel_is_read(tmp_path, oblique_landmarks):
    path = write_landmarks_csv({"case 1": oblique_landmarks}, tmp_path / "all.csv")
    excel = tmp_path / "excel.csv"
    excel.write_bytes("\ufeff".encode() + path.read_bytes())  # Excel's "CSV UTF-8" starts with a BOM
    np.testing.assert_allclose(read_landmarks_csv(excel)["case 1"].positions_lps, oblique_landmarks.positions_lps)


def test_an_fcsv_that_names_no_coordinate_system_is_refused(tmp_path):
    # Slicer 5 reads such a file as LPS; Slicer 4.10 and earlier wrote RAS: either guess mirrors L and P for some.
    path = tmp_path / "points.fcsv"
    path.write_text(FCSV_COLUMNS + "vtkMRMLMarkupsFiducialNode_1,1.5,2.5,3.5,0,0,0,1,1,1,0,P,,\n")
    with pytest.raises(ValueError, match=r"does not say its coordinate system .* Add '# CoordinateSystem = RAS'"):
        read_landmarks(path)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_long_csv_round_trip_keeps_cases_labels_descriptions_and_order(tmp_path, oblique_landmarks, system):
    second = Landmarks(["b", "a", "c"], [[1.0, 2.0, 3.0], [np.nan] * 3, [np.nan] * 3], ["x", "y", ""],
                       missing=[False, False, True])  # fmt: skip
    path = write_landmarks_csv(
        {"case 1": oblique_landmarks, "case2": second}, tmp_path / "all.csv", coordinate_system=system
    )
    header, first_row = path.read_text(encoding="utf-8").splitlines()[:2]
    assert header == "case,landmark,x,y,z,coordinate_system,description,status"
    assert first_row.startswith("case 1,apex cordis,")
    assert f",{system}," in first_row
    cases = read_landmarks_csv(path)
    assert list(cases) == ["case 1", "case2"]
    _assert_same(cases["case 1"], oblique_landmarks)
    assert cases["case2"].labels == ["b", "a", "c"]
    assert cases["case2"].statuses == ["defined", "undefined", "missing"]


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_a_missing_point_stays_missing_and_an_unplaced_one_unplaced_in_markups_json(tmp_path, system):
    landmarks = Landmarks(["placed", "unplaced", "out of view"], [[1.0, 2.0, 3.0], [np.nan] * 3, [4.0, 5.0, 6.0]],
                          missing=[False, False, True])  # fmt: skip
    assert landmarks.statuses == ["defined", "undefined", "missing"]
    assert np.isnan(landmarks.positions_lps[2]).all()  # a missing point has no position
    path = write_landmarks(landmarks, tmp_path / "points.mrk.json", coordinate_system=system)
    points = json.loads(path.read_text())["markups"][0]["controlPoints"]
    assert [p["positionStatus"] for p in points] == ["defined", "undefined", "missing"]
    assert "position" not in points[2]
    back = read_landmarks(path)
    assert back.statuses == landmarks.statuses
    np.testing.assert_allclose(back.positions_lps[0], [1.0, 2.0, 3.0])


def test_unknown_landmark_file_types_are_refused(tmp_path):
    path = tmp_path / "points.txt"
    path.write_text("1 2 3")
    with pytest.raises(ValueError, match=r"\.mrk\.json or \.fcsv"):
        read_landmarks(path)
    with pytest.raises(ValueError, match="markups JSON"):
        write_landmarks(Landmarks(["a"], [[0, 0, 0]]), tmp_path / "points.fcsv")
