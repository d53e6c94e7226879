"""Screenshots of TensorBoard's tabs for a run folder, taken in a headless Chromium.

    python scripts/tensorboard_screenshots.py --logdir logs/demo --name demo
    python scripts/tensorboard_screenshots.py --logdir logs/contextual_block --name block \
        --tabs timeseries custom_scalars hparams --out docs/figures/tensorboard

Starts TensorBoard on a free local port over ``--logdir``, opens each tab
(``http://127.0.0.1:<port>/#<tab>``) in ``chromium --headless`` and writes
``<out>/<name>_<tab>.png``; TensorBoard is stopped at the end. Without a Chromium on PATH
(Debian: ``apt-get install chromium``) it says so and exits with status 1, writing nothing.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TABS = ("timeseries", "scalars", "custom_scalars", "hparams", "images")


def find_browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_tensorboard(logdir: Path, port: int, timeout: float = 60) -> subprocess.Popen:
    """TensorBoard serving ``logdir`` on ``127.0.0.1:port``, once it answers HTTP."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        + ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)
            time.sleep(2)  # let it read every event file before the first page loads
            return server
        except OSError:
            if server.poll() is not None:
                message = f"tensorboard exited ({server.returncode}) on --logdir {logdir}"
                raise SystemExit(message) from None
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"tensorboard did not answer on port {port} within {timeout:.0f} s")


def screenshot(browser: str, url: str, path: Path, size: str) -> None:
    """``path``: a PNG of ``url`` rendered by ``browser`` in a ``size`` window."""
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, required=True, help="TensorBoard's --logdir")
    parser.add_argument("--name", required=True, help="file name prefix, e.g. demo")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/tensorboard"))
    parser.add_argument("--tabs", nargs="+", choices=TABS, default=list(TABS))
    parser.add_argument("--size", default="1400,1000", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(
            f"No headless browser found (looked for {', '.join(BROWSERS)} on PATH): no "
            "screenshots taken. Install one, e.g. `apt-get install chromium`, and run again."
        )
        raise SystemExit(1)
    if not args.logdir.is_dir():
        parser.error(f"--logdir {args.logdir}: no such folder")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_tensorboard(args.logdir, port)
    try:
        for tab in args.tabs:
            path = args.out / f"{args.name}_{tab}.png"
            screenshot(browser, f"http://127.0.0.1:{port}/?darkMode=false#{tab}", path, args.size)
            print(f"{tab}: {path}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
