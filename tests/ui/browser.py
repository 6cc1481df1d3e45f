"""Headless Chromium for the browser tests: Debian's `chromium` package driven by Playwright.

The package registries serve no browser builds, so Playwright is pointed at the system binary. Without it
the tests skip with the reason locally, and fail in CI (`CI` or `LORAFORGE_REQUIRE_BROWSER` set), where
`.ci/run` installs it.
"""

import os
import shutil

import pytest

REQUIRE_ENV = ("CI", "LORAFORGE_REQUIRE_BROWSER")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing(reason: str) -> None:
    if any(os.environ.get(name) for name in REQUIRE_ENV):
        pytest.fail(f"browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"{reason} (install it: apt-get install -y chromium)")


def launch(playwright):
    path = chromium_path()
    if path is None:
        missing("no chromium on PATH")
    # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
    return playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
