"""Open a run's report.html in headless Chromium, save a screenshot and check that it shows something.

    python benchmarks/screenshot_report.py RUN_DIR [--out screenshot.png] [--width 1400] [--height 3000]

Checks: the screenshot exists; it is not blank (pixel standard deviation above a threshold, and a share of
non-white pixels); report.html embeds at least four PNG figures (``data:image/png;base64``) and has no
external resources, so what Chromium shows is the offline file alone.  Network access is disabled in the
browser.  Exit code 0 when every check passes.  Needs ``chromium`` (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MIN_STD = 10.0
"""Pixel standard deviation (0-255 grey levels) below which the page counts as blank."""
MIN_INK = 0.02
"""Share of pixels that must be clearly non-white."""
MIN_COLOUR = 0.001
"""Share of pixels that must be coloured (figure lines and bars; the page's text is grey)."""


def find_browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium found: apt-get update && apt-get install -y chromium")


def screenshot(html: Path, out: Path, width: int, height: int, timeout: float = 120) -> None:
    profile = tempfile.mkdtemp(prefix="rlhfkit-chromium-")
    command = [
        find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
        html.resolve().as_uri(),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def image_stats(path: Path) -> dict:
    import matplotlib.image as mpimg
    import numpy as np

    image = mpimg.imread(path)  # float in [0, 1], H x W x (3|4)
    grey = image[..., :3].mean(axis=2) * 255.0
    return {
        "width": image.shape[1],
        "height": image.shape[0],
        "std": float(grey.std()),
        "ink": float((grey < 200).mean()),
        "colour": float((np.ptp(image[..., :3], axis=2) > 0.15).mean()),
    }


def check_html(html: Path) -> list[str]:
    text = html.read_text()
    problems = []
    figures = text.count("data:image/png;base64,")
    if figures < 4:
        problems.append(f"only {figures} embedded figures (need >= 4)")
    if re.search(r'(src|href)="(?!data:|#)', text):
        problems.append("report.html references an external resource")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="screenshot path (default RUN_DIR/report_screenshot.png)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    html = args.run_dir / "report.html"
    if not html.is_file():
        print(f"no {html}: run `rlhfkit report {args.run_dir}` first", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "report_screenshot.png"
    problems = check_html(html)
    screenshot(html, out, args.width, args.height)
    if not out.is_file():
        problems.append("chromium wrote no screenshot")
    else:
        stats = image_stats(out)
        print(f"screenshot {out}: {stats['width']}x{stats['height']}, pixel std {stats['std']:.1f}, "
              f"non-white {stats['ink']:.1%}, coloured {stats['colour']:.1%}")
        if stats["std"] < MIN_STD or stats["ink"] < MIN_INK:
            problems.append(f"screenshot looks blank (std {stats['std']:.1f} < {MIN_STD} or non-white {stats['ink']:.1%} < {MIN_INK:.0%})")
        if stats["colour"] < MIN_COLOUR:
            problems.append("no coloured pixels: the figures did not render")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("ok: report.html renders offline with its figures")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
