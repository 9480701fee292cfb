"""The web app in a real browser: ``cascade-landmarks serve`` started on a free localhost port, driven by headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, which ``make test`` installs) through selenium.

One user's session, step by step: open a phantom case, Detect, drag a point in the red slice view, save the
corrected case; then what must not work: a path outside the data folder, a file that cannot be read, a second
tab. A screenshot of each step is written to ``test-artifacts/web/`` (``$CASCADE_TEST_ARTIFACTS`` elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cascade_landmarks import read_landmarks
from cascade_landmarks.model.model_file import load_model, save_model
from cascade_landmarks.model.registry import register_model

from conftest import REPOSITORY

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency: make test installs it")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("CASCADE_TEST_ARTIFACTS", REPOSITORY / "test-artifacts")) / "web"
DOWNLOADS = ARTIFACTS / "downloads"
DRAG_PX = 40  # how far the test drags a point to the right in the red view, in screen pixels

# A browser session takes about a minute: with the slow tests, out of the inner loop (make test runs them all).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMEDRIVER is None, reason="needs chromium-driver (make test installs it)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, synthetic_data, trained_model_path):
    """``cascade-landmarks serve`` on a data folder of two phantom cases and a file cut short; yields its URL, the
    data folder and the training folder."""
    data = tmp_path_factory.mktemp("web-data")
    for name in ("case100", "case101"):
        shutil.copy(synthetic_data / "test" / f"{name}.nrrd", data)
    whole = (synthetic_data / "test" / "case102.nrrd").read_bytes()
    (data / "broken.nrrd").write_bytes(whole[: len(whole) // 3])
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(synthetic_data / "test" / "case103.nrrd", outside / "secret.nrrd")
    (data / "link.nrrd").symlink_to(outside / "secret.nrrd")
    # The test model reports its third landmark not in view, whatever it sees, so that the user places it.
    model = load_model(trained_model_path)
    model.config = model.config.with_detection_settings(presence_threshold=(0.0, 0.0, 0.99))
    save_model(model, data.parent / f"{data.name}-hidden.pt")
    register_model(data.parent / f"{data.name}-hidden.pt", name="spheres-web")
    training = data.parent / f"{data.name}-corrected"
    command = [
        sys.executable,
        "-m",
        "cascade_landmarks.cli",
        "serve",
        str(data),
        "--port",
        "0",
        "--model",
        "spheres-web",
        "--training-folder",
        str(training),
        "--device",
        "cpu",
        "--max-upload-mb",
        "0.5",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = _served_url(process)
        yield url, data, training
    finally:
        process.terminate()
        process.wait(timeout=20)


def _served_url(process: subprocess.Popen) -> str:
    for line in process.stdout:
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"The server stopped before serving (exit status {process.wait()}).")


def _browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,950"):
        options.add_argument(argument)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(DOWNLOADS), "download.prompt_for_download": False}
    )
    options.binary_location = shutil.which("chromium") or ""
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def page(server):
    driver = _browser()
    driver.get(server[0])
    yield driver
    driver.quit()


def _wait(driver, condition, seconds: float = 60, what: str = ""):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        _shot(driver, f"timeout-{what or 'wait'}")
        raise AssertionError(
            f"Timed out waiting for {what}; page status: {_text(driver, 'status')!r}, "
            f"message: {_text(driver, 'message')!r}"
        ) from None


def _text(driver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found and found[0].is_displayed() else ""


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _open(driver, path: str) -> None:
    field = driver.find_element(By.ID, "case-path")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(path, Keys.TAB)
    driver.find_element(By.ID, "open-case").click()


def _rows(driver) -> dict[str, dict]:
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#landmarks tr.landmark"):
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        rows[row.get_attribute("data-label")] = {"moved": cells[2], "ras": cells[3], "element": row}
    return rows


def _ras(row: dict) -> np.ndarray:
    return np.array([float(v) for v in row["ras"].split(",")])


def test_a_user_detects_drags_a_point_and_saves_the_corrected_case(page, server):
    _url, _data, training = server
    _wait(page, lambda d: d.find_elements(By.ID, "case-path"), what="the page")
    _shot(page, "1-page")
    _open(page, "case100.nrrd")
    _wait(page, lambda d: "voxels" in _text(d, "status"), what="the case to open")
    _shot(page, "2-case-open")

    started = time.perf_counter()
    page.find_element(By.ID, "detect").click()
    rows = _wait(page, lambda d: len(_rows(d)) == 3 and _rows(d), what="the detected points")
    detect_seconds = time.perf_counter() - started
    _shot(page, "3-detected")
    (ARTIFACTS / "timings.json").write_text(json.dumps({"click_detect_to_table_s": round(detect_seconds, 2)}))
    assert sorted(rows) == ["sphere 1", "sphere 2", "sphere 3"]
    assert [rows[f"sphere {n}"]["moved"] for n in (1, 2)] == ["0.00", "0.00"]
    assert rows["sphere 3"]["ras"] == ""
    assert "not in view" in rows["sphere 3"]["element"].text

    label = "sphere 1"
    rows[label]["element"].click()  # centres the views on the point
    time.sleep(1.0)
    mm_per_pixel = float(_wait(page, lambda d: _text(d, "mm-per-pixel").split()[2], what="the red view's scale"))
    before = _ras(_rows(page)[label])
    red = page.find_element(
        By.XPATH, "//*[@id='view-Red']/preceding-sibling::div[contains(@class, 'remote-controlled-area')]"
    )
    chain = ActionChains(page, duration=50).move_to_element(red).move_by_offset(1, 1).pause(0.5)
    chain.move_by_offset(-1, -1).pause(0.5).click_and_hold()
    for _ in range(DRAG_PX // 5):
        chain.move_by_offset(5, 0).pause(0.1)
    chain.release().perform()
    moved = _wait(page, lambda d: _settled_move(d, label), what="the drag to end")
    _shot(page, "4-dragged")
    after = _ras(_rows(page)[label])
    expected = DRAG_PX * mm_per_pixel
    assert float(moved) == pytest.approx(expected, rel=0.1, abs=mm_per_pixel)
    # Screen right in the red (axial) view is the patient's left: R decreases, A and S stay.
    assert after[0] - before[0] == pytest.approx(-expected, rel=0.1, abs=mm_per_pixel + 0.1)
    np.testing.assert_allclose(after[1:], before[1:], atol=0.1)

    # The landmark reported not in view is placed by a click in the red view, 30 pixels left of the centre.
    rows = _rows(page)
    rows["sphere 3"]["element"].find_element(By.CSS_SELECTOR, "button.place").click()
    _wait(page, lambda d: "Click in a slice view to place sphere 3" in _text(d, "status"), what="place mode")
    ActionChains(page, duration=50).move_to_element(red).move_by_offset(-30, 0).pause(0.5).click().perform()
    placed = _ras(_wait(page, lambda d: _rows(d)["sphere 3"]["ras"] and _rows(d)["sphere 3"], what="the placed point"))
    _shot(page, "5-placed")
    # Screen left is the patient's right (+R), in the red view's plane (the S of the point it was centred on).
    assert placed[0] - before[0] == pytest.approx(30 * mm_per_pixel, rel=0.1, abs=mm_per_pixel)
    assert placed[1:] == pytest.approx(before[1:], abs=mm_per_pixel + 0.1)

    # A landmark the user finds not in the image: its point taken away, saved as missing.
    _rows(page)["sphere 2"]["element"].find_element(By.CSS_SELECTOR, "button.not_in_view").click()
    _wait(page, lambda d: _rows(d)["sphere 2"]["ras"] == "", what="sphere 2 marked not in view")
    assert "not in view" in _rows(page)["sphere 2"]["element"].text

    # Opening another case would lose the correction: refused once, with a message.
    _open(page, "case101.nrrd")
    _wait(page, lambda d: "corrections not saved" in _text(d, "message"), what="the guard on unsaved corrections")
    assert _rows(page)[label]["moved"] == moved

    name = page.find_element(By.ID, "case-name")
    name.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    name.send_keys("corrected-case100", Keys.TAB)
    page.find_element(By.ID, "save-case").click()
    _wait(page, lambda d: "Saved" in _text(d, "message"), what="the case to be saved")
    _shot(page, "6-saved")
    saved = read_landmarks(training / "corrected-case100.mrk.json")
    assert (training / "corrected-case100.nrrd").is_file()
    np.testing.assert_allclose(saved.positions_ras[saved.labels.index(label)], after, atol=0.06)
    np.testing.assert_allclose(saved.positions_ras[saved.labels.index("sphere 3")], placed, atol=0.06)
    assert saved.missing.tolist() == [False, True, False]  # sphere 2: the user's "not in view"
    # Saving again under that name is refused until Replace is clicked.
    page.find_element(By.ID, "save-case").click()
    _wait(page, lambda d: "already in" in _text(d, "message"), what="the refusal to overwrite")
    assert page.find_element(By.ID, "replace-case").is_displayed()
    # The points download as the files the command line writes.
    for button, name in (("download-mrk", "points.mrk.json"), ("download-csv", "points.csv")):
        (DOWNLOADS / name).unlink(missing_ok=True)
        page.find_element(By.ID, button).click()
        _wait(page, lambda d, n=name: (DOWNLOADS / n).is_file(), what=f"{name} to download")
    downloaded = read_landmarks(DOWNLOADS / "points.mrk.json")
    np.testing.assert_allclose(downloaded.positions_ras, saved.positions_ras, atol=1e-6)
    assert label in (DOWNLOADS / "points.csv").read_text()


def _settled_move(driver, label: str) -> str | None:
    """The moved distance in the table once two readings a second apart agree (the drag has ended)."""
    first = _rows(driver)[label]["moved"]
    time.sleep(1.0)
    second = _rows(driver)[label]["moved"]
    return second if first == second and second not in ("", "0.00") else None


def test_paths_outside_the_data_folder_and_unreadable_files_get_a_message(page, server):
    _wait(page, lambda d: d.find_elements(By.ID, "case-path"), what="the page")
    for path in ("../outside.nrrd", "/etc/passwd", "link.nrrd"):
        _open(page, path)
        _wait(page, lambda d: "outside the data folder" in _text(d, "message"), what=f"the refusal of {path}")
    _shot(page, "7-outside-refused")
    _open(page, "broken.nrrd")
    _wait(page, lambda d: "Cannot read volume" in _text(d, "message"), what="the unreadable file's message")
    _shot(page, "8-unreadable")
    # The page is alive: another case opens, and a detection can be cancelled.
    _open(page, "case101.nrrd")
    _wait(page, lambda d: "case101.nrrd" in _text(d, "status") and "voxels" in _text(d, "status"), what="case101")
    page.find_element(By.ID, "detect").click()
    cancel = page.find_element(By.ID, "cancel")
    _wait(page, lambda _: cancel.is_displayed(), what="the Cancel button")
    cancel.click()
    _wait(page, lambda d: _text(d, "status") == "Cancelled.", what="the cancellation")
    assert not _rows(page)
    assert page.find_element(By.ID, "detect").is_enabled()


def test_an_upload_opens_and_a_too_large_one_is_refused(page, server, tmp_path, synthetic_data):
    data = server[1]
    original = synthetic_data / "test" / "case103.nrrd"
    shutil.copy(original, tmp_path / "from-pacs.nrrd")
    page.find_element(By.CSS_SELECTOR, "#upload").send_keys(str(tmp_path / "from-pacs.nrrd"))
    _wait(page, lambda d: "uploads/from-pacs.nrrd" in _text(d, "status"), what="the upload to open")
    _shot(page, "9-uploaded")
    assert (data / "uploads" / "from-pacs.nrrd").read_bytes() == original.read_bytes()
    (tmp_path / "big.nrrd").write_bytes(os.urandom(600_000))  # the server takes at most 0.5 MB
    page.find_element(By.CSS_SELECTOR, "#upload").send_keys(str(tmp_path / "big.nrrd"))
    _wait(page, lambda d: "more than this server takes" in _text(d, "message"), what="the refusal of a large upload")
    assert not (data / "uploads" / "big.nrrd").exists()


def test_a_second_tab_is_told_the_server_is_busy(page, server):
    other = _browser()
    try:
        other.get(server[0])
        _wait(other, lambda d: "busy" in _text(d, "busy"), what="the busy notice")
        _shot(other, "10-second-tab-busy")
        assert not other.find_elements(By.ID, "detect")
    finally:
        other.quit()


def test_fine_tuning_runs_in_the_background_and_its_model_joins_the_list(page, server, synthetic_data):
    training = server[2]
    training.mkdir(exist_ok=True)
    for suffix in (".nrrd", ".mrk.json"):
        shutil.copy(synthetic_data / "test" / f"case102{suffix}", training / f"corrected-case102{suffix}")
    page.find_element(By.ID, "fine-tune").click()
    _wait(page, lambda d: "Fine-tuning" in _text(d, "status"), what="fine-tuning to start")
    assert not page.find_element(By.ID, "detect").is_enabled()  # one job at a time
    _wait(page, lambda d: "Fine-tuned" in _text(d, "message"), seconds=600, what="fine-tuning to end")
    _shot(page, "11-fine-tuned")
    new = re.search(r"Fine-tuned: (\S+) is registered", _text(page, "message")).group(1)
    assert new.startswith("spheres-web")
    assert new in page.find_element(By.CSS_SELECTOR, ".v-select:has(#model)").text  # and chosen
