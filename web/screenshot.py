"""Make docs/web_explorer.png, README's picture of the explorer, from a model worth looking at.

A VAE trained for about a minute on mnist5k (the browser tests' bundles train one epoch and decode grey noise),
exported, written with `vaedeploy web`, served on 127.0.0.1 and opened in Debian's chromium with the pointer on the
pad. Needs the test extra (Playwright), /usr/bin/chromium and the built page (`make web`):

    .venv/bin/python web/screenshot.py [--work runs/web_screenshot] [--out docs/web_explorer.png]
"""
from __future__ import annotations

import argparse
import threading
from pathlib import Path

from vaedeploy.export import export_run

from vaedeploy.data import load_dataset
from vaedeploy.io import atomic_write_bytes
from vaedeploy.train import TrainConfig, train_run
from vaedeploy.web import make_server, write_site

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/web_screenshot", help="run, bundle and site directories go here")
    parser.add_argument("--out", default="docs/web_explorer.png")
    parser.add_argument("--seconds", type=float, default=60.0, help="training time limit")
    args = parser.parse_args()
    work = Path(args.work)
    bundle = work / "bundle"
    if not (bundle / "manifest.json").is_file():  # a second run only retakes the picture
        train_run("vae", load_dataset("mnist5k"), work / "run", model_config={"latent_dim": 8},
                  train_config=TrainConfig(epochs=200, max_seconds=args.seconds, patience=20), progress=False)
        export_run(work / "run", bundle)
    site = write_site(bundle, work / "site", data="mnist5k")

    from playwright.sync_api import sync_playwright

    server = make_server(site, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
            box = page.locator("#pad").bounding_box()
            page.mouse.move(box["x"] + 0.62 * box["width"], box["y"] + 0.35 * box["height"])
            page.evaluate("explorer.idle()")
            atomic_write_bytes(args.out, page.screenshot(full_page=True))
            browser.close()
    finally:
        server.shutdown()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
