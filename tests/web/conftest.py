"""Browser fixtures: Debian's Chromium driven by Playwright, skipped cleanly when absent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CARECALL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # The alarm beeps without a click in tests; a person still has to unlock it once.
    "--autoplay-policy=no-user-gesture-required",
]
REPO = Path(__file__).resolve().parents[2]


def _have_chromium() -> bool:
    return CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright  # noqa: PLC0415
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download)")
    if not _have_chromium():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or CARECALL_CHROMIUM)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/ when CARECALL_WEB_SCREENSHOTS=1 (to refresh the ones in
    docs/console.md), else the test's temporary directory."""
    return REPO / "docs" if os.environ.get("CARECALL_WEB_SCREENSHOTS") == "1" else tmp_path
