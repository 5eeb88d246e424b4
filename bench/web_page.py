"""The web page's cost and its upload speed, for the issue note (a script, not a test).

Starts `inferserver serve` on the test models (tests/models; images from tests/images/build.sh, a running Docker
engine), opens /ui/ in a fresh headless chromium (nothing cached; after one request to /healthz, so the browser's
own start-up is not counted) and prints what its first load transferred (and what it would with gzip, e.g. behind
NGINX with `gzip on`), the first contentful paint and the time until the model list is shown; then uploads one
SIZE volume through the page by tus (32 MiB PATCHes, as a user's browser does), through the page by PUT (the
page's fallback, forced by blocking OPTIONS /uploads in the browser) and with `curl -T` to the same server, and
prints the three speeds.

    .venv/bin/python bench/web_page.py [--size-mib 200]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.files import nifti_gz_like  # noqa: E402
from tests.integration.browser import start_browser  # noqa: E402
from tests.integration.conftest import start_server, stop_server  # noqa: E402

STATIC = REPO / "src" / "inferserver" / "web" / "static"


def first_load(browser: object, url: str) -> None:
    # A page of the same server first: the browser's own start (a renderer process for the site) is not the page's.
    browser.get(f"{url}/healthz")  # type: ignore[attr-defined]
    began = time.monotonic()
    browser.get(f"{url}/ui/")  # type: ignore[attr-defined]
    WebDriverWait(browser, 60, poll_frequency=0.02).until(  # type: ignore[arg-type]
        lambda b: b.find_element(By.ID, "models").is_displayed()
    )
    shown = time.monotonic() - began
    entries = browser.execute_script(  # type: ignore[attr-defined]
        "return performance.getEntriesByType('resource').map(e => [e.name, e.transferSize, e.encodedBodySize])"
    )
    navigation = browser.execute_script(  # type: ignore[attr-defined]
        "const n = performance.getEntriesByType('navigation')[0]; return [n.transferSize, n.encodedBodySize]"
    )
    paint = WebDriverWait(browser, 10, poll_frequency=0.05).until(  # type: ignore[arg-type]
        lambda b: b.execute_script("return performance.getEntriesByName('first-contentful-paint')[0]?.startTime")
    )
    files = [(f"{url}/ui/", *navigation), *entries]
    static = [(name, size) for name, size, _ in files if urlparse(name).path.startswith("/ui/")]
    zipped = 0
    for name, _size in static:
        relative = urlparse(name).path.removeprefix("/ui/") or "index.html"
        zipped += len(gzip.compress((STATIC / relative).read_bytes(), 6))
    total = sum(size for _, size, _ in files)
    print(f"first load: {len(files)} requests, {total / 1e6:.2f} MB transferred ({total} bytes)")
    own = sum(s for _, s in static) / 1e6
    print(f"  of which the page's files: {own:.2f} MB; gzipped (level 6): {zipped / 1e6:.2f} MB")
    for name, size, _ in sorted(files, key=lambda f: -f[1]):
        print(f"    {size:>9} {urlparse(name).path}")
    print(f"first contentful paint: {paint:.0f} ms; model list shown after {shown * 1000:.0f} ms (from navigation)")


def browser_upload(browser: object, url: str, volume: Path, tus: bool) -> float:
    # Without tus: the page finds no OPTIONS /uploads (a blocked URL fails as a network error) and PUTs.
    blocked = [] if tus else ["*/uploads"]
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": blocked})  # type: ignore[attr-defined]
    browser.get(f"{url}/ui/")  # type: ignore[attr-defined]
    wait = WebDriverWait(browser, 600, poll_frequency=0.05)  # type: ignore[arg-type]
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "button[aria-label='Choose Test: copy']")).click()
    browser.find_element(By.ID, "input-input_vol").send_keys(str(volume))  # type: ignore[attr-defined]
    wait.until(lambda b: b.find_element(By.ID, "input-input_vol").get_attribute("aria-invalid") == "false")
    began = time.monotonic()
    browser.find_element(By.ID, "submit").click()  # type: ignore[attr-defined]
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#upload-input_vol label").text.startswith("Uploaded"))
    seconds = time.monotonic() - began
    finish(url, browser.find_element(By.ID, "session-id").text)  # type: ignore[attr-defined]
    return seconds


def finish(url: str, session_id: str) -> None:
    """Wait for the copy run the upload queued: a server stopped during a run leaves its container behind."""
    deadline = time.monotonic() + 300
    while httpx.get(f"{url}/sessions/{session_id}").json()["data"]["status"] not in ("complete", "failed"):
        assert time.monotonic() < deadline, f"session {session_id} did not finish in 300 s"
        time.sleep(0.2)


def curl_upload(url: str, volume: Path) -> float:
    body = {"inputs": {}, "params": {}, "outputs": {}}
    session_id = httpx.post(f"{url}/models/copy", json=body).json()["data"]["session_id"]
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "-T",
            str(volume),
            "-H",
            "Content-Type: application/octet-stream",
            f"{url}/sessions/{session_id}/inputs/input_vol",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "200", out
    finish(url, session_id)
    return float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        server = start_server(tmp / "server")
        browser = start_browser(tmp / "downloads")
        try:
            first_load(browser, server.url)
            volume = tmp / "volume.nii.gz"
            nifti_gz_like(volume, args.size_mib)
            mib = volume.stat().st_size / 1048576
            browser.execute_cdp_cmd("Network.enable", {})  # type: ignore[attr-defined]
            for tus, label in ((True, "browser (page, tus PATCH)"), (False, "browser (page, XHR PUT) ")):
                logged = len(server.output())
                seconds = browser_upload(browser, server.url, volume, tus)
                patches = server.output()[logged:].count("PATCH /uploads/")
                print(f"{label}: {mib:.0f} MiB in {seconds:.2f} s = {mib / seconds:.0f} MiB/s ({patches} PATCHes)")
            seconds = curl_upload(server.url, volume)
            print(f"curl -T (same server):     {mib:.0f} MiB in {seconds:.2f} s = {mib / seconds:.0f} MiB/s")
        finally:
            browser.quit()
            stop_server(server)


if __name__ == "__main__":
    main()
