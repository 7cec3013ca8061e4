"""Screenshot of an HTML report in headless chromium (how docs/report_screenshot.png was made).

    python scripts/report_screenshot.py runs/tiny/report.html docs/report_screenshot.png [--height 1700]

Needs Playwright (the dev extra) and a chromium binary (scripts/ensure_chromium.sh); nothing is downloaded.
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

parser = argparse.ArgumentParser()
parser.add_argument("html", type=Path)
parser.add_argument("png", type=Path)
parser.add_argument("--width", type=int, default=1280)
parser.add_argument("--height", type=int, default=1700, help="pixels of the page from its top")
parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
args = parser.parse_args()

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": args.width, "height": args.height})
    page.goto(args.html.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']")
    page.screenshot(path=str(args.png))
    browser.close()
print(args.png)
