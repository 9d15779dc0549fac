"""pytest plugin entry point (registered under pytest11)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "meshlocal: test runs against a live meshlocal mesh")
