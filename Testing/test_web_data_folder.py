"""What the web app may open and write: paths inside its data folder only, and uploads that never overwrite a
file or exceed the limit. (The same rules are exercised through the page in ``test_web_app.py``.)"""

from __future__ import annotations

import pytest

from cascade_landmarks.web.data_folder import DataFolder


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    (root / "dicom-series").mkdir(parents=True)
    (root / "dicom-series" / "slice1.dcm").write_bytes(b"\0")
    (root / "ct.nii.gz").write_bytes(b"\0")
    (root / "notes.txt").write_text("not a volume")
    (tmp_path / "secret.nrrd").write_bytes(b"\0")
    (root / "link.nrrd").symlink_to(tmp_path / "secret.nrrd")
    return DataFolder(root, max_upload_bytes=1000)


def test_the_case_list_holds_the_volumes_and_dicom_folders_inside(data):
    assert data.cases() == ["ct.nii.gz", "dicom-series"]  # not the link leading out
    assert data.resolve("ct.nii.gz") == data.root / "ct.nii.gz"
    assert data.resolve(" dicom-series ") == data.root / "dicom-series"


@pytest.mark.parametrize("path", ["../secret.nrrd", "dicom-series/../../secret.nrrd", "/etc/passwd", "link.nrrd"])
def test_a_path_leading_out_of_the_data_folder_is_refused(data, path):
    with pytest.raises(ValueError, match="outside the data folder"):
        data.resolve(path)


def test_a_name_not_in_the_folder_is_refused_with_a_message(data):
    with pytest.raises(ValueError, match="is not in the data folder; pick a case from the list"):
        data.resolve("ct2.nrrd")


def test_uploads_keep_every_file_and_respect_the_limit(data):
    assert data.save_upload("scan.nrrd", b"first") == "uploads/scan.nrrd"
    assert data.save_upload("../scan.nrrd", b"second") == "uploads/scan-2.nrrd"  # no overwrite, no escape
    assert (data.root / "uploads" / "scan.nrrd").read_bytes() == b"first"
    assert (data.root / "uploads" / "scan-2.nrrd").read_bytes() == b"second"
    assert "uploads/scan-2.nrrd" in data.cases()
    with pytest.raises(ValueError, match="more than this server takes"):
        data.save_upload("big.nii.gz", b"x" * 1001)
    with pytest.raises(ValueError, match="not a volume file this page takes"):
        data.save_upload("series.mhd", b"header only")
    assert sorted(p.name for p in (data.root / "uploads").iterdir()) == ["scan-2.nrrd", "scan.nrrd"]
