"""The shipped landmark sets: the paper's order, names, descriptions, and left/right twins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade_landmarks import Landmarks, available_landmark_sets, load_landmark_set


def test_the_three_sets_ship():
    assert available_landmark_sets() == ["afids-32", "aortic-9", "cardiac-5"]
    assert [len(load_landmark_set(name)) for name in ("cardiac-5", "aortic-9", "afids-32")] == [5, 9, 32]


def test_cardiac_landmarks_follow_the_papers_table_order():
    names = [d.name for d in load_landmark_set("cardiac-5").landmarks]
    assert names == [
        "Apex cordis",
        "Left coronary ostium",
        "Right coronary ostium",
        "Bifurcation of the left main",
        "Origin of the non-coronary aortic valve commissure",
    ]


def test_aortic_landmarks_are_the_branch_origins_and_the_bifurcation():
    labels = load_landmark_set("aortic-9").labels
    assert labels[0] == "brachiocephalic trunk origin"
    assert labels[-1] == "aortic bifurcation"
    assert {
        "right renal artery origin",
        "left renal artery origin",
        "inferior mesenteric artery origin",
    } <= set(labels)


@pytest.mark.parametrize("name", ["cardiac-5", "aortic-9", "afids-32"])
def test_every_landmark_has_a_name_and_a_description(name):
    for definition in load_landmark_set(name).landmarks:
        assert definition.name.strip(), definition
        assert definition.description.strip(), definition


def test_mirroring_swaps_each_paired_landmark_with_its_twin():
    afids = load_landmark_set("afids-32")
    permutation = afids.twin_permutation()
    assert sorted(permutation) == list(range(32))
    assert [permutation[p] for p in permutation] == list(range(32))  # swapping twice restores the order
    assert afids.landmarks[permutation[5]].name == "LSLMS"  # RSLMS <-> LSLMS
    assert permutation[0] == 0  # AC is on the midline
    aortic = load_landmark_set("aortic-9")
    swapped = [aortic.labels[i] for i in aortic.twin_permutation()]
    assert swapped[5:7] == ["left renal artery origin", "right renal artery origin"]
    assert load_landmark_set("cardiac-5").twin_permutation() == list(range(5))


def test_matching_a_point_list_reorders_it_and_names_what_is_wrong():
    cardiac = load_landmark_set("cardiac-5")
    shuffled = Landmarks(cardiac.labels[::-1], np.arange(15.0).reshape(5, 3))
    assert cardiac.match(shuffled).labels == cardiac.labels
    broken = Landmarks([*cardiac.labels[1:], "aorta", "aorta"], np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"case7\.mrk\.json .*missing apex cordis.*repeated aorta.*not in cardiac-5"):
        cardiac.match(broken, source="case7.mrk.json")
    unplaced = Landmarks(cardiac.labels, np.vstack([np.zeros((4, 3)), [np.nan] * 3]))
    with pytest.raises(ValueError, match="not placed: non-coronary commissure"):
        cardiac.match(unplaced)


def test_a_users_own_set_loads_from_a_file_and_bad_twins_are_refused(tmp_path):
    path = tmp_path / "knee.json"
    path.write_text(
        json.dumps({"name": "knee-2", "landmarks": [{"label": "a", "twin": "b"}, {"label": "b", "twin": "a"}]})
    )
    assert load_landmark_set(path).twin_permutation() == [1, 0]
    path.write_text(json.dumps({"name": "bad", "landmarks": [{"label": "a", "twin": "b"}, {"label": "b"}]}))
    with pytest.raises(ValueError, match=r"does not name it back"):
        load_landmark_set(path)
    with pytest.raises(ValueError, match=r"Unknown landmark set 'hip-3'.*cardiac-5"):
        load_landmark_set("hip-3")
