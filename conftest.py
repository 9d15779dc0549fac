"""Fixtures for every test of the repository (tests/ and the examples' tests):
a real browser for the mesh page, and where tests leave screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by selenium (Debian's chromium and chromium-driver).

    Skipped where they are not installed, except under CI=true, where a
    missing browser is a failure (scripts/bootstrap.sh installs them).
    """
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or shutil.which("chromium") is None:
        message = "chromium and chromium-driver are not installed (apt-get install them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave what a person looks at afterwards (screenshots)."""
    path = Path(os.environ.get("MESHLOCAL_ARTIFACTS", ".artifacts")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
