"""Browser fixtures: Debian's chromium driven by Playwright (no browser download), pages served from 127.0.0.1.

The browser tests need three things a plain `pip install` does not bring: Playwright for Python (the test extra),
Debian's chromium at /usr/bin/chromium, and the npm build of the page (`make web`). `make test` installs what it
can; without them the tests skip, saying how to enable them, except under CI (CI=true), where they fail.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
# no component updates, sync, first-run pages or background fetches: nothing the browser does on its own may
# send a request, so the only requests are the page's
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "web"
READY_TIMEOUT_MS = 60_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (it is in the test extra: pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"Debian's chromium is not at {CHROMIUM} (apt-get install chromium; `make test` does it as root)"
    from vaedeploy.web.site import PageNotBuilt, page_files

    try:
        page_files()
    except PageNotBuilt as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def browser():
    reason = _missing()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
    if reason:
        pytest.skip(f"browser tests skipped: {reason}; `make test` builds the page where npm exists and, as root, "
                    "installs chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def served(exported, tmp_path_factory):
    """(bundle name, isolated) → (base URL, site directory, bundle directory): `vaedeploy web` output, served."""
    from vaedeploy.web import make_server, write_site

    sites, servers = {}, []

    def get(name: str, isolated: bool = True):
        if name not in sites:
            _, bundle = exported(name)
            sites[name] = write_site(bundle, tmp_path_factory.mktemp("sites") / name, data="digits"), bundle
        site, bundle = sites[name]
        server = make_server(site, port=0, isolated=isolated, quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", site, bundle

    yield get
    for server in servers:
        server.shutdown()
        server.server_close()


class View:
    """One open page with what it logged: console errors, uncaught exceptions, and every request's URL."""

    def __init__(self, page, site: Path, bundle: Path):
        self.page, self.site, self.bundle = page, site, bundle
        self.errors, self.requests = [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        # anything not for 127.0.0.1 is stopped before it leaves (and still recorded above, so the test fails)
        page.route(lambda url: urlsplit(url).hostname not in ("127.0.0.1", None), lambda route: route.abort())

    def open(self, url: str) -> "View":
        self.page.goto(url)
        self.page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=READY_TIMEOUT_MS)
        state = self.page.evaluate("document.body.dataset.state")
        assert state == "ready", f"page not ready: {self.page.inner_text('#status')}; console: {self.errors}"
        return self

    def idle(self):
        self.page.evaluate("explorer.idle()")

    def state(self) -> dict:
        """The page's last decode: z, pad, codes, image (float32 values) and the canvas's pixel levels."""
        doc = self.page.evaluate("""() => {
            const s = explorer.state, canvas = document.getElementById("image");
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            return {z: s.z && Array.from(s.z), pad: s.pad, codes: s.codes, image: Array.from(s.image),
                    pixels: Array.from(pixels), size: [canvas.height, canvas.width], frames: s.frames};
        }""")
        doc["image"] = np.asarray(doc["image"], np.float32)
        doc["pixels"] = np.asarray(doc["pixels"], np.uint8).reshape(*doc["size"], 4)
        return doc

    def assert_clean(self):
        """No console error or exception, and every request went to 127.0.0.1 (data: and blob: stay in the page)."""
        assert self.errors == []
        foreign = [u for u in self.requests if urlsplit(u).scheme not in ("data", "blob")
                   and urlsplit(u).hostname != "127.0.0.1"]
        assert foreign == [], f"requests that left 127.0.0.1: {foreign}"
        assert self.requests, "the page made no request at all"


@pytest.fixture
def open_site(browser):
    """(site directory, bundle directory) → a ready View of a `vaedeploy web` output the test wrote itself (served
    cross-origin isolated from 127.0.0.1); closed after the test."""
    from vaedeploy.web import make_server

    opened = []

    def open_(site: Path, bundle: Path) -> View:
        server = make_server(site, port=0, isolated=True, quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        opened.append((server, context))
        return View(context.new_page(), site, bundle).open(f"http://127.0.0.1:{server.server_address[1]}/")

    yield open_
    for server, context in opened:
        context.close()
        server.shutdown()
        server.server_close()


@pytest.fixture
def open_page(browser, served):
    """(bundle name, query="", isolated=True) → a ready View of that bundle's explorer; closed after the test."""
    contexts = []

    def open_(name: str, query: str = "", isolated: bool = True) -> View:
        url, site, bundle = served(name, isolated)
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        contexts.append(context)
        return View(context.new_page(), site, bundle).open(url + query)

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """build/test-artifacts/web/: what the browser tests keep (a screenshot, the measured tolerances)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def measured(artifacts):
    """Largest differences page vs Python, by name; written to build/test-artifacts/web/tolerances.json at the end."""
    figures = {}
    yield figures
    if figures:
        from vaedeploy.io import write_json

        write_json(artifacts / "tolerances.json", dict(sorted(figures.items())))
