"""Debian's chromium, headless, driven by selenium through Debian's chromedriver, for the web page tests.

WebGL (NiiVue) runs on SwiftShader, the CPU renderer. Every request the browser makes is logged (chromedriver's
performance log), so a test can assert that nothing left the machine.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1280,800",
    "--disable-dev-shm-usage",
]
LOCAL_SCHEMES = ("data:", "blob:", "about:", "chrome:", "devtools:")


def start_browser(downloads: Path) -> WebDriver:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("the web page tests need Debian's chromium and chromium-driver: run scripts/setup.sh test")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # The Debian driver by path: selenium must not look for (or download) one of its own.
    return webdriver.Chrome(service=Service(driver), options=options)


def requested_urls(browser: WebDriver) -> list[str]:
    """Every URL the browser asked for since the last call (the performance log is drained by reading it)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def external(urls: list[str], base_url: str) -> list[str]:
    return [u for u in urls if not u.startswith(base_url) and not u.startswith(LOCAL_SCHEMES)]


def pixels(element: WebElement) -> Image.Image:
    """What the element shows on screen (composited: a WebGL canvas included)."""
    return Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")


def differing(image: Image.Image, colour: tuple[int, int, int]) -> int:
    """How many pixels are not `colour`."""
    return sum(count for count, rgb in image.getcolors(1 << 24) or [] if rgb != colour)


def changed(a: Image.Image, b: Image.Image) -> int:
    """How many pixels differ between two images of the same size."""
    return sum(ImageChops.difference(a, b).convert("L").histogram()[1:])
