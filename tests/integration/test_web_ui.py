"""The web page /ui/ in a real browser (Debian's chromium, headless) against a real `inferserver serve` and the real
Docker engine: a run of the example model from start to viewer, the upload errors a user meets, the docs offline,
the operator view on a GPU pool, and access control with operators.

Screenshots of each page are saved in the screenshots directory of the test run's temporary directory.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from inferserver.api.credentials import hash_password

from ..conftest import REPO, TEST_MODELS
from ..files import nifti_gz_like
from . import rawhttp
from .browser import changed, differing, external, pixels, requested_urls, start_browser
from .conftest import Server, kill_server, restart_server, start_server, stop_and_check, write_nifti
from .gpu_engine import Engine, engine_fixture, start_server_on
from .gpu_engine import leftover_containers as engine_containers
from .tcpproxy import CuttingProxy, cutting_proxy
from .test_deploy_nginx import start_nginx, stop_nginx

gpu_engine = engine_fixture(["inferserver-test/gpuwork:1"])

UPLOAD_LIMIT = "512KiB"
OPERATOR, USER = ("olga", "olga-pw"), ("nina", "nina-pw")
BACKGROUND = (0, 0, 0)  # the viewer's backColor
CHUNK = 32 << 20  # js/upload.js's tus chunk
ACCESS_LINE = re.compile(r"inferserver\.access: (\S+) (\S+) (\d+) ")


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(downloads: Path) -> Iterator[WebDriver]:
    """One browser for the whole test run: starting chromium costs seconds."""
    driver = start_browser(downloads)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser with no credentials kept and a drained request log; left on a blank page afterwards."""
    requested_urls(browser)
    yield browser
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory, example_images: None) -> Iterator[Server]:
    """The example model and the test fixtures, with a small upload limit for the over-limit test."""
    models = tmp_path_factory.mktemp("models")
    shutil.copy(REPO / "examples" / "models" / "bone_threshold.json", models)
    shutil.copy(TEST_MODELS / "sleep.json", models)
    shutil.copy(TEST_MODELS / "fail.json", models)
    server = start_server(tmp_path_factory.mktemp("web"), models, MAX_UPLOAD_BYTES=UPLOAD_LIMIT)
    yield server
    stop_and_check([server])


@pytest.fixture(scope="module")
def anatomical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nibabel's own test volume (a T1 MRI, 33 x 41 x 25), gzipped as the model's .nii.gz input."""
    import nibabel

    source = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    path = tmp_path_factory.mktemp("data") / "anatomical.nii.gz"
    path.write_bytes(gzip.compress(source.read_bytes()))
    return path


def wait(browser: WebDriver, condition: object, timeout: float = 60) -> object:
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)  # type: ignore[arg-type]


def open_model(browser: WebDriver, server: Server, name: str) -> None:
    browser.get(f"{server.url}/ui/")
    button = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"button[aria-label='Choose {name}']"))
    button.click()  # type: ignore[attr-defined]


def message(browser: WebDriver) -> str:
    return wait(browser, lambda b: b.find_element(By.ID, "message").text)  # type: ignore[return-value]


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def requests_logged(server: Server, since: int) -> list[str]:
    """`METHOD PATH STATUS` of each request the server logged after the first `since` characters of its output;
    a tus upload's id is shown as `<id>`."""
    calls = ACCESS_LINE.findall(server.output()[since:])
    return [
        f"{method} {re.sub('^/uploads/[0-9a-f]{32}$', '/uploads/<id>', path)} {status}"
        for method, path, status in calls
    ]


def test_bone_threshold_runs_entirely_through_the_page(
    page: WebDriver, web_server: Server, anatomical: Path, screenshots: Path, downloads: Path
) -> None:
    logged = len(web_server.output())
    open_model(page, web_server, "Example: CT bone by threshold")
    page.find_element(By.ID, "input-ct").send_keys(str(anatomical))
    threshold = page.find_element(By.ID, "param-threshold")
    threshold.clear()
    threshold.send_keys("11000")  # the MRI's brightest tissue (see test_example_model.py)
    page.save_screenshot(str(screenshots / "ui-run-form.png"))
    page.find_element(By.ID, "submit").click()

    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=180)
    assert page.find_element(By.ID, "state").text == "complete", page.find_element(By.ID, "message").text
    assert "bone_threshold: threshold 11000.0" in page.find_element(By.ID, "log").text
    session_id = page.find_element(By.ID, "session-id").text

    # The input went up by tus (one chunk: the file is small), not PUT, and arrived byte for byte.
    calls = requests_logged(web_server, logged)
    assert calls.count("OPTIONS /uploads 204") == 1 and calls.count("POST /uploads 201") == 1, calls
    assert calls.count("PATCH /uploads/<id> 204") == 1, calls
    assert not [c for c in calls if c.startswith("PUT ")], calls
    assert (web_server.session_path / session_id / "inputs" / "ct.nii.gz").read_bytes() == anatomical.read_bytes()

    # The download link gives the server's file byte for byte.
    link = wait(page, lambda b: b.find_element(By.CSS_SELECTOR, "#downloads a"))
    assert link.get_attribute("download") == "bone.nii.gz"  # type: ignore[attr-defined]
    link.click()  # type: ignore[attr-defined]
    saved = downloads / "bone.nii.gz"
    deadline = time.monotonic() + 30
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with web_server.client() as client:
        served = client.get(f"/sessions/{session_id}/outputs/bone")
    assert served.status_code == 200
    assert saved.read_bytes() == served.content

    # The viewer draws the volume with the overlay, and the overlay's opacity changes what it shows.
    wait(page, lambda b: "shown in red" in b.find_element(By.ID, "viewer-message").text)
    canvas = page.find_element(By.ID, "viewer")
    page.execute_script("arguments[0].scrollIntoView()", canvas)
    time.sleep(0.5)  # NiiVue draws on the next animation frame
    before = pixels(canvas)
    assert differing(before, BACKGROUND) > 1000, "the viewer's canvas is blank"
    slider = page.find_element(By.ID, "opacity")
    slider.send_keys(Keys.END)  # the keyboard: opacity 1
    assert slider.get_attribute("value") == "1"
    time.sleep(0.5)
    after = pixels(canvas)
    assert changed(before, after) > 100, "the overlay's opacity changed nothing on screen"
    page.save_screenshot(str(screenshots / "ui-result.png"))
    assert external(requested_urls(page), web_server.url) == []


def sessions_of(server: Server) -> list[dict]:
    with server.client() as client:
        response = client.get("/operator/overview")
    assert response.status_code == 200, response.text
    return response.json()["data"]["sessions"]


def test_a_file_of_the_wrong_type_is_named_before_anything_is_uploaded(
    page: WebDriver, web_server: Server, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a volume\n")
    before = len(sessions_of(web_server))
    open_model(page, web_server, "Example: CT bone by threshold")
    page.find_element(By.ID, "input-ct").send_keys(str(notes))
    expected = "notes.txt is not a file type the server recognises; CT volume needs a .nii.gz file."
    wait(page, lambda b: b.find_element(By.CSS_SELECTOR, "#inputs .problem").text == expected)
    assert page.find_element(By.ID, "input-ct").get_attribute("aria-invalid") == "true"
    page.find_element(By.ID, "submit").click()
    assert message(page) == expected
    assert len(sessions_of(web_server)) == before  # refused before a session was created
    assert external(requested_urls(page), web_server.url) == []


def test_an_upload_over_the_limit_says_so_and_the_session_continues_with_another_file(
    page: WebDriver, web_server: Server, anatomical: Path, tmp_path: Path, screenshots: Path
) -> None:
    big = write_nifti(tmp_path / "big.nii.gz", 2)  # random voxels: gzip cannot bring it under 512 KiB
    logged = len(web_server.output())
    open_model(page, web_server, "Test: sleep")
    page.find_element(By.ID, "input-input_vol").send_keys(str(big))
    page.find_element(By.ID, "param-seconds").clear()
    page.find_element(By.ID, "param-seconds").send_keys("0")
    page.find_element(By.ID, "submit").click()
    text = message(page)
    assert text.startswith("This is too large for the server: input input_vol is over the upload limit of 512 KiB"), (
        text
    )
    assert "Files already uploaded are kept" in text
    assert f"(MAX_UPLOAD_BYTES): its Upload-Length is {big.stat().st_size} bytes" in text, text
    # Refused at the tus creation, before a byte of the file was sent.
    calls = requests_logged(web_server, logged)
    assert "POST /uploads 413" in calls and not [c for c in calls if c.startswith(("PATCH ", "PUT "))], calls
    page.save_screenshot(str(screenshots / "ui-upload-error.png"))
    session_id = page.find_element(By.ID, "session-id").text
    assert web_server.wait_status(session_id, {"waiting"}, timeout=1)["status"] == "waiting"

    # The same session goes on with a file under the limit: nothing has to be filled in again.
    assert page.find_element(By.ID, "submit").text == "Continue the run"
    page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
    page.find_element(By.ID, "submit").click()
    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
    assert page.find_element(By.ID, "state").text == "complete"
    assert page.find_element(By.ID, "session-id").text == session_id
    with web_server.client() as client:
        assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == anatomical.read_bytes()


def start_copy_through(page: WebDriver, server: Server, proxy: CuttingProxy, volume: Path) -> int:
    """Open the page through the proxy, start a copy run of `volume` with the proxy set to cut halfway through
    the second tus chunk; the bytes the proxy had passed before the upload."""
    open_model(page, dataclasses.replace(server, url=proxy.url), "Test: copy")
    page.find_element(By.ID, "input-input_vol").send_keys(str(volume))
    wait(page, lambda b: b.find_element(By.ID, "input-input_vol").get_attribute("aria-invalid") == "false")
    before = proxy.sent
    proxy.cut_after = before + (CHUNK + volume.stat().st_size) // 2
    page.find_element(By.ID, "submit").click()
    return before


def resent_by_the_page(page: WebDriver, proxy: CuttingProxy, before: int, size: int) -> int:
    """Once the page says the file is uploaded: how many bytes besides the file went through the proxy (headers,
    a status poll, and whatever was sent again)."""
    label = "#upload-input_vol label"
    wait(page, lambda b: b.find_element(By.CSS_SELECTOR, label).text.startswith("Uploaded"), timeout=180)
    return proxy.sent - before - size


def check_copied(page: WebDriver, server: Server, volume: Path) -> None:
    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
    assert page.find_element(By.ID, "state").text == "complete", page.find_element(By.ID, "message").text
    session_id = page.find_element(By.ID, "session-id").text
    with server.client() as client:
        assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == volume.read_bytes()


def test_an_upload_whose_connection_breaks_resumes_from_the_servers_offset_and_the_run_completes(
    page: WebDriver, tmp_path: Path, fixture_images: None
) -> None:
    """The page through a TCP proxy that drops every connection in the middle of the second tus chunk (as a Wi-Fi
    drop does): the page asks the server for its offset and sends the rest, not the file again.

    Chromium itself resends the PATCH it was sending when its connection was a reused one (from the chunk's start;
    the server reads it through to answer 409), so a break costs up to one chunk. The cut is in the second chunk
    so that a restart from zero (over CHUNK bytes again) and a resume (at most the second chunk again) differ."""
    server = start_server(tmp_path / "server")
    volume = write_nifti(tmp_path / "ct.nii.gz", 42)  # 40 MiB: one full chunk and a second of 8 MiB
    size = volume.stat().st_size
    assert CHUNK < size < 2 * CHUNK
    try:
        with cutting_proxy(port_of(server), cut_after=1 << 62) as proxy:
            proxy.release.set()  # cut as soon as cut_after is reached
            logged = len(server.output())
            before = start_copy_through(page, server, proxy, volume)
            resent = resent_by_the_page(page, proxy, before, size)
            assert proxy.cuts == 1
            check_copied(page, server, volume)
        # From zero: over CHUNK bytes again. From the server's offset: at most the second chunk again.
        assert 0 < resent < (size - CHUNK) + (1 << 20) < CHUNK, f"{resent} bytes more than the file went up"
        calls = requests_logged(server, logged)
        assert calls.count("POST /uploads 201") == 1 and calls.count("HEAD /uploads/<id> 200") >= 1, calls
        assert calls.count("PATCH /uploads/<id> 204") == 2, calls  # the broken one logs another status
        assert not [c for c in calls if c.startswith("PUT ")], calls
    finally:
        stop_and_check([server])


def test_an_upload_resumes_after_the_server_is_killed_and_restarted(
    page: WebDriver, tmp_path: Path, fixture_images: None
) -> None:
    """`kill -9` of the server in the middle of the second chunk: the page tries again with back-off while nothing
    answers (the proxy's connections to the dead port are refused) and, once the server is back on its session
    directory, resumes from the last acknowledged chunk."""
    server = start_server(tmp_path / "server")
    servers = [server]
    volume = write_nifti(tmp_path / "ct.nii.gz", 42)
    size = volume.stat().st_size
    try:
        with cutting_proxy(port_of(server), cut_after=1 << 62) as proxy:
            before = start_copy_through(page, server, proxy, volume)
            assert proxy.reached.wait(120), "the upload never reached the second chunk"
            kill_server(server)
            proxy.release.set()  # the page's connections drop; new ones find no server
            restarted = restart_server(server)
            servers.append(restarted)
            proxy.target_port = port_of(restarted)
            resent = resent_by_the_page(page, proxy, before, size)
            check_copied(page, restarted, volume)
        # What the killed server had not acknowledged (part of the second chunk) went again, not the first chunk.
        assert 0 < resent < (size - CHUNK) + (1 << 20) < CHUNK, f"{resent} bytes more than the file went up"
        calls = requests_logged(restarted, 0)
        assert "HEAD /uploads/<id> 200" in calls and calls.count("PATCH /uploads/<id> 204") == 1, calls
        assert not [c for c in calls if c.startswith(("PUT ", "POST /uploads"))], calls
    finally:
        stop_and_check(servers)


def test_without_a_tus_endpoint_the_page_uploads_with_put(
    page: WebDriver, web_server: Server, anatomical: Path
) -> None:
    """As against a server (or a proxy in front of it) that does not answer OPTIONS /uploads."""
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/uploads"]})
    try:
        logged = len(web_server.output())
        open_model(page, web_server, "Test: sleep")
        page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
        page.find_element(By.ID, "param-seconds").clear()
        page.find_element(By.ID, "param-seconds").send_keys("0")
        page.find_element(By.ID, "submit").click()
        wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
        assert page.find_element(By.ID, "state").text == "complete", page.find_element(By.ID, "message").text
    finally:
        page.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    session_id = page.find_element(By.ID, "session-id").text
    calls = requests_logged(web_server, logged)
    assert f"PUT /sessions/{session_id}/inputs/input_vol 200" in calls, calls
    assert not [c for c in calls if " /uploads" in c], calls
    with web_server.client() as client:
        assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == anatomical.read_bytes()


def test_a_queued_run_shows_its_place_in_the_queue_then_runs(
    page: WebDriver, web_server: Server, anatomical: Path
) -> None:
    with web_server.client() as client:  # one run at a time (WORKER_THREADS=1): this one holds the slot
        body = {"inputs": {}, "params": {"seconds": {"value": 120}}, "outputs": {}}
        blocker = client.post("/models/sleep", json=body).json()["data"]["session_id"]
        put = client.put(f"/sessions/{blocker}/inputs/input_vol", content=anatomical.read_bytes())
        assert put.status_code == 200, put.text
    try:
        assert web_server.wait_status(blocker, {"working"})["status"] == "working"
        open_model(page, web_server, "Test: sleep")
        page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
        page.find_element(By.ID, "param-seconds").clear()
        page.find_element(By.ID, "param-seconds").send_keys("0")
        page.find_element(By.ID, "submit").click()
        wait(page, lambda b: b.find_element(By.ID, "queue").text.startswith("Waiting, position in queue is 1"))
        assert page.find_element(By.ID, "state").text == "ready"
    finally:
        with web_server.client() as client:
            client.delete(f"/sessions/{blocker}")
    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
    assert page.find_element(By.ID, "state").text == "complete"
    assert page.find_element(By.ID, "queue").text == ""


def test_a_failed_run_shows_its_log_and_the_reason(page: WebDriver, web_server: Server, anatomical: Path) -> None:
    open_model(page, web_server, "Test: fail")
    page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
    page.find_element(By.ID, "submit").click()
    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
    assert page.find_element(By.ID, "state").text == "failed"
    session_id = page.find_element(By.ID, "session-id").text
    with web_server.client() as client:
        info = client.get(f"/sessions/{session_id}").json()["data"]["info"]
    assert info  # the server's reason, e.g. the exit status
    assert message(page) == f"The run failed: {info}"
    assert page.find_element(By.ID, "reason").text == f"— the run failed: {info}"
    log = page.find_element(By.ID, "log").text
    assert "fail: starting" in log and "fail: something went wrong" in log
    assert page.find_element(By.ID, "result").is_displayed() is False


def test_an_upload_to_a_session_cancelled_meanwhile_is_refused_in_words_and_the_page_starts_a_new_one(
    page: WebDriver, web_server: Server, anatomical: Path, tmp_path: Path
) -> None:
    big = write_nifti(tmp_path / "big.nii.gz", 2)
    open_model(page, web_server, "Test: sleep")
    page.find_element(By.ID, "input-input_vol").send_keys(str(big))
    page.find_element(By.ID, "param-seconds").clear()
    page.find_element(By.ID, "param-seconds").send_keys("0")
    page.find_element(By.ID, "submit").click()
    wait(page, lambda b: b.find_element(By.ID, "submit").text == "Continue the run")
    first = page.find_element(By.ID, "session-id").text
    with web_server.client() as client:  # e.g. an operator cancels it while the user looks for a smaller file
        assert client.delete(f"/sessions/{first}").status_code == 200
    page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
    page.find_element(By.ID, "submit").click()
    wait(page, lambda b: b.find_element(By.ID, "submit").text == "Start the run")
    text = page.find_element(By.ID, "message").text
    assert text == (
        "The server could not accept this: session is failed: it takes no more inputs. "
        'This session cannot continue; "Start the run" starts a new one with the same choices.'
    )
    page.find_element(By.ID, "submit").click()
    wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
    assert page.find_element(By.ID, "state").text == "complete"
    assert page.find_element(By.ID, "session-id").text != first


def test_a_full_disk_is_said_in_words(page: WebDriver, tmp_path: Path, fixture_images: None) -> None:
    server = start_server(tmp_path / "full", DISK_RESERVE_BYTES="1000TiB")  # no disk has that much free
    try:
        open_model(page, server, "Test: copy")
        page.find_element(By.ID, "input-input_vol").send_keys(str(write_nifti(tmp_path / "v.nii.gz", 0.1)))
        page.find_element(By.ID, "submit").click()
        text = message(page)
        assert text.startswith("The server's disk is full: "), text
        assert "DISK_RESERVE_BYTES" in text, text
    finally:
        stop_and_check([server])


def test_an_output_too_large_for_the_browser_gets_a_message_and_a_plain_download_link(
    page: WebDriver, tmp_path: Path, fixture_images: None
) -> None:
    server = start_server(tmp_path / "big")
    try:
        volume = tmp_path / "big.nii.gz"
        nifti_gz_like(volume, 513)  # the copy model's output is as large: over the page's 512 MiB
        open_model(page, server, "Test: copy")
        page.find_element(By.ID, "input-input_vol").send_keys(str(volume))
        page.find_element(By.ID, "submit").click()
        wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=300)
        assert page.find_element(By.ID, "state").text == "complete"
        shown = wait(page, lambda b: b.find_element(By.ID, "viewer-message").text, timeout=60)
        assert shown == "Output Volume is 513.0 MiB: over the 512.0 MiB a browser can show. Download it instead."
        link = page.find_element(By.CSS_SELECTOR, "#downloads a")
        session_id = page.find_element(By.ID, "session-id").text
        assert link.get_attribute("href") == f"{server.url}/sessions/{session_id}/outputs/output_vol"  # no blob
        assert link.text == "Download Output Volume (output_vol.nii.gz, 513.0 MiB)"
        assert not page.find_element(By.ID, "viewer-box").is_displayed()
    finally:
        stop_and_check([server])


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .opblock"), ("/redoc", "[data-section-id]")])
def test_docs_render_from_local_files_only(
    page: WebDriver, web_server: Server, screenshots: Path, path: str, rendered: str
) -> None:
    page.get(web_server.url + path)
    wait(page, lambda b: len(b.find_elements(By.CSS_SELECTOR, rendered)) > 5)
    assert "put_input" in page.page_source or "Upload an input file" in page.page_source
    page.save_screenshot(str(screenshots / f"ui{path.replace('/', '-')}.png"))
    urls = requested_urls(page)
    assert any(u.endswith("/openapi.json") for u in urls)
    assert external(urls, web_server.url) == []


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory, gpu_engine: Engine) -> Iterator[Server]:
    """Access control on (an operator and a user) and a pool of two GPUs on the private fake-GPU engine."""
    tmp = tmp_path_factory.mktemp("operator")
    users = tmp / "users"
    users.write_text(f"{OPERATOR[0]}:{hash_password(OPERATOR[1])}:operator\n{USER[0]}:{hash_password(USER[1])}\n")
    server = start_server_on(gpu_engine.host, tmp, AUTH_USERS_FILE=str(users), GPUS="0,1", GPUS_PER_RUN="1")
    yield server
    stop_and_check([server])
    assert engine_containers(gpu_engine) == []


def as_user(server: Server, who: tuple[str, str]) -> httpx.Client:
    return server.client(auth=who)


def start_gpu_run(server: Server, who: tuple[str, str]) -> str:
    with as_user(server, who) as client:
        body = {"inputs": {}, "params": {"seconds": {"value": 120}}, "outputs": {}}
        created = client.post("/models/gpuwork", json=body)
        assert created.status_code == 200, created.text
        session_id: str = created.json()["data"]["session_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/sessions/{session_id}").json()["data"]["status"] != "working":
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
    return session_id


def sign_in(browser: WebDriver, who: tuple[str, str]) -> None:
    dialog = wait(
        browser, lambda b: b.find_element(By.ID, "login") if b.find_element(By.ID, "login").is_displayed() else None
    )
    assert dialog
    assert browser.switch_to.active_element.get_attribute("id") == "login-user"  # focus is in the dialog
    browser.switch_to.active_element.send_keys(who[0], Keys.TAB, who[1], Keys.ENTER)  # the keyboard alone


def test_the_operator_view_lists_a_running_session_with_its_gpu_and_cancels_it(
    page: WebDriver, operator_server: Server, screenshots: Path
) -> None:
    session_id = start_gpu_run(operator_server, USER)
    page.get(f"{operator_server.url}/ui/operator.html")
    sign_in(page, OPERATOR)
    row = wait(page, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-session='{session_id}']"))
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]  # type: ignore[attr-defined]
    with as_user(operator_server, OPERATOR) as client:
        held = client.get("/gpus").json()["data"]["devices"]
    device = next(d["id"] for d in held if d["session_id"] == session_id)
    assert cells[1] == "gpuwork" and cells[2].startswith("working") and cells[6] == device, cells
    assert cells[9] == USER[0], cells
    pool = page.find_element(By.ID, "gpus").text
    assert f"{device} {session_id}" in pool, pool
    page.save_screenshot(str(screenshots / "ui-operator.png"))

    page.find_element(By.CSS_SELECTOR, f"button[aria-label^='Cancel session {session_id}']").click()
    assert message(page) == f"Session {session_id} is failed (cancelled)."
    with as_user(operator_server, OPERATOR) as client:
        assert client.get(f"/sessions/{session_id}").json()["data"] == {
            "status": "failed",
            "needed": [],
            "info": "cancelled",
        }
    failures = wait(
        page,
        lambda b: (
            b.find_element(By.ID, "failures").text if session_id[:8] in b.find_element(By.ID, "failures").text else None
        ),
    )
    assert "cancelled" in failures  # type: ignore[operator]
    assert external(requested_urls(page), operator_server.url) == []


def test_with_access_control_the_page_asks_for_credentials_and_a_non_operator_cannot_cancel(
    page: WebDriver, operator_server: Server
) -> None:
    # The page's files load without credentials; the API answers the page 401 without a Basic challenge (no
    # browser dialog), and the page asks itself.
    assert httpx.get(f"{operator_server.url}/ui/operator.html").status_code == 200
    refused = httpx.get(f"{operator_server.url}/models", headers={"X-Requested-With": "XMLHttpRequest"})
    assert refused.status_code == 401 and "www-authenticate" not in refused.headers
    # The open prefix reaches the page's files only: dot segments (sent raw; clients would remove them) do not
    # lead out of it to the API.
    for path in (b"/ui/../models", b"/ui/%2e%2e/models", b"/ui/..%2fmodels", b"/ui/../operator/overview"):
        raw = rawhttp.request(operator_server.url, b"GET " + path + b" HTTP/1.1\r\nHost: x")
        assert raw.status == 404 and b'"data"' not in raw.body, (path, raw)
    page.get(f"{operator_server.url}/ui/operator.html")
    sign_in(page, ("olga", "wrong"))
    wait(page, lambda b: b.find_element(By.ID, "login-reason").text.startswith("That user name and password"))
    sign_in(page, USER)
    status = wait(page, lambda b: b.find_element(By.ID, "overview-status").text.startswith("You are not") or None)
    assert status
    assert page.find_element(By.ID, "overview-status").text == (
        "You are not allowed to do this: only operators may see the operator view "
        "(a user marked `:operator` in AUTH_USERS_FILE)."
    )
    assert page.find_elements(By.CSS_SELECTOR, "#sessions tbody tr") == []

    others = start_gpu_run(operator_server, OPERATOR)
    with as_user(operator_server, USER) as client:
        refused = client.delete(f"/sessions/{others}")
        assert refused.status_code == 403
        assert refused.json() == {
            "errors": [
                {
                    "detail": "only operators may cancel another user's session (a user marked `:operator` in "
                    "AUTH_USERS_FILE)"
                }
            ]
        }
        assert client.get(f"/sessions/{others}").json()["data"]["status"] == "working"
        own = client.post("/models/gpuwork", json={"inputs": {}, "params": {"seconds": {"value": 60}}, "outputs": {}})
        mine = own.json()["data"]["session_id"]
        assert client.delete(f"/sessions/{mine}").json()["data"]["info"] == "cancelled"  # one's own: allowed
    with as_user(operator_server, OPERATOR) as client:
        assert client.delete(f"/sessions/{others}").json()["data"]["info"] == "cancelled"


def test_with_access_control_the_page_sends_its_credentials_on_every_tus_call(
    page: WebDriver, tmp_path: Path, anatomical: Path, fixture_images: None
) -> None:
    users = tmp_path / "users"
    users.write_text(f"{USER[0]}:{hash_password(USER[1])}\n")
    server = start_server(tmp_path / "server", AUTH_USERS_FILE=str(users))
    try:
        page.get(f"{server.url}/ui/")
        sign_in(page, USER)  # asked once, when the model list answers 401
        choose = wait(page, lambda b: b.find_element(By.CSS_SELECTOR, "button[aria-label='Choose Test: copy']"))
        choose.click()  # type: ignore[attr-defined]
        logged = len(server.output())
        page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
        page.find_element(By.ID, "submit").click()
        wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
        assert page.find_element(By.ID, "state").text == "complete", page.find_element(By.ID, "message").text
        calls = requests_logged(server, logged)
        assert [c for c in calls if " /uploads" in c] == [
            "OPTIONS /uploads 204",
            "POST /uploads 201",
            "PATCH /uploads/<id> 204",
        ], calls
        assert not [c for c in calls if c.endswith(" 401")], calls
    finally:
        stop_and_check([server])


UNLABELLED = """
return [...document.querySelectorAll('input, select, button, textarea')]
  .filter(e => e.offsetParent !== null)
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map(e => e.outerHTML);
"""


@pytest.mark.parametrize("width", [1280, 768])
def test_the_run_page_works_from_the_keyboard_with_every_control_labelled_at_desktop_and_tablet_width(
    page: WebDriver, web_server: Server, screenshots: Path, width: int
) -> None:
    page.set_window_size(width, 800 if width == 1280 else 1024)
    try:
        page.get(f"{web_server.url}/ui/")
        wait(page, lambda b: b.find_element(By.ID, "models").is_displayed())
        # Tab to the first model's button and press Enter: the form opens and takes the focus.
        for _ in range(10):
            page.switch_to.active_element.send_keys(Keys.TAB)
            if page.switch_to.active_element.get_attribute("aria-label") == "Choose Example: CT bone by threshold":
                break
        page.switch_to.active_element.send_keys(Keys.ENTER)
        wait(page, lambda b: b.find_element(By.ID, "run").is_displayed())
        assert page.switch_to.active_element.get_attribute("id") == "input-ct"
        assert page.execute_script(UNLABELLED) == []
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width} px window"
        page.save_screenshot(str(screenshots / f"ui-form-{width}.png"))
    finally:
        page.set_window_size(1280, 800)


def test_behind_the_shipped_nginx_site_under_its_prefix_the_page_runs_a_model(
    page: WebDriver, web_server: Server, anatomical: Path, tmp_path: Path
) -> None:
    nginx = start_nginx(tmp_path / "nginx", int(web_server.url.rsplit(":", 1)[1]), web_server.session_path)
    try:
        base = nginx.url.rstrip("/")  # http://127.0.0.1:PORT/inferserver
        assert httpx.get(f"{base}/ui").headers["location"] == "ui/"  # relative: right under any prefix
        open_model(page, dataclasses.replace(web_server, url=base), "Test: sleep")
        logged = len(web_server.output())
        page.find_element(By.ID, "input-input_vol").send_keys(str(anatomical))
        page.find_element(By.ID, "param-seconds").clear()
        page.find_element(By.ID, "param-seconds").send_keys("0")
        page.find_element(By.ID, "submit").click()
        wait(page, lambda b: b.find_element(By.ID, "state").text in ("complete", "failed"), timeout=120)
        assert page.find_element(By.ID, "state").text == "complete", page.find_element(By.ID, "message").text
        # By tus through the prefix: the relative Location resolved under /inferserver/.
        calls = requests_logged(web_server, logged)
        assert "POST /uploads 201" in calls and "PATCH /uploads/<id> 204" in calls, calls
        page.get(f"{base}/docs")
        wait(page, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")) > 5)
        urls = requested_urls(page)
        assert urls and all(u.startswith(f"{base}/") for u in urls if not u.startswith(("data:", "blob:"))), urls
    finally:
        stop_nginx(nginx)
