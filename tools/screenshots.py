"""Screenshots of the built book at desktop and phone widths, with a short audit.

Opens every page of ``_build/html`` in headless Chromium (Debian's ``chromium``
package: ``apt-get install chromium``) with the network cut off, as a reader
without a connection would, and saves one full-page PNG per page and width::

    jupyter-book build . -W
    python tools/screenshots.py                       # every page, 1366 and 390 px
    python tools/screenshots.py --pages book/intro --widths 390

For each page it also prints what a reader would notice:

- ``math``: formulas typeset by MathJax / formulas on the page (raw TeX shows
  as ``typeset < total``);
- ``overflow``: how far (CSS px) the page is wider than the window (anything
  above 0 means the reader must scroll the whole page sideways);
- ``cut``: code blocks and formulas wider than their box (a reader has to
  scroll them sideways), and elements that hide part of their content
  without a scroll bar (tables and figures may scroll inside their own box);
- ``figures``: the smallest scale at which a figure is shown (displayed width
  / its size as saved, from the dpi in the PNG); text of 10 pt in a figure
  reads as 10 pt times that scale (at 96 CSS px per inch); below
  :data:`MIN_FIGURE_SCALE` the page view counts as a problem.

Look at every screenshot of a page you changed. This is a tool for people, not
part of CI. It talks to Chromium over the DevTools protocol on a pipe, so it
needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: A figure shown smaller than this (shown width / saved width at 96 px per inch)
#: counts as unreadable: its 10 pt text reads below 7.5 pt.
MIN_FIGURE_SCALE = 0.75

#: Runs in the page once MathJax has finished; returns the audit as a dict.
AUDIT_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;
  const maths = [...document.querySelectorAll('.math')];
  const typeset = maths.filter(m => m.querySelector('mjx-container, svg, .katex')).length;
  const article = document.querySelector('article.bd-article') || document.body;
  const cut = [];
  const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const insideScrollBox = el => {
    for (let up = el.parentElement; up && up !== article; up = up.parentElement) {
      if (scrolls(up)) return true;
    }
    return false;
  };
  const right = article.getBoundingClientRect().right + 1;
  for (const el of article.querySelectorAll('pre, table, img, .cell_output, .output, div.math')) {
    // Code and formulas must fit: one that has to be scrolled sideways looks cut off.
    if (el.matches('pre, div.math') && el.scrollWidth > el.clientWidth + 1) {
      cut.push(el.tagName.toLowerCase() + '.' + [...el.classList].join('.') + ' (scrolls)');
      continue;
    }
    const hiddenInside = el.scrollWidth > el.clientWidth + 1 && !scrolls(el);
    const pastArticle = el.getBoundingClientRect().right > right;
    if ((hiddenInside || pastArticle) && !insideScrollBox(el)) {
      cut.push(el.tagName.toLowerCase() + '.' + [...el.classList].join('.'));
    }
  }
  const figures = [...article.querySelectorAll('img')].filter(i => i.naturalWidth > 0).map(i => ({
    src: i.getAttribute('src'),
    natural: i.naturalWidth,
    shown: Math.round(i.getBoundingClientRect().width),
  }));
  return {
    title: document.title,
    math_total: maths.length,
    math_typeset: typeset,
    scroll_width: document.documentElement.scrollWidth,
    cut: cut,
    column: Math.round(article.clientWidth - parseFloat(getComputedStyle(article).paddingLeft)
                       - parseFloat(getComputedStyle(article).paddingRight)),
    figures: figures,
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
"""


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (JSON messages
    ending in a NUL byte, written to its fd 3 and read from its fd 4)."""

    def __init__(self, executable: str):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Keep the child's ends above 4, so that moving them to 3 and 4 cannot clash.
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.profile = tempfile.mkdtemp(prefix="book-screenshots-")
        args = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
            # Offline, as a reader without a connection: every host name fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "about:blank",
        ]
        def as_fd_3_and_4():  # in the child, before exec; fds 3 and 4 are then kept open
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.process = subprocess.Popen(
            args, preexec_fn=as_fd_3_and_4, pass_fds=(3, 4),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(child_r)
        os.close(child_w)
        self.send_pipe = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.receive_pipe = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = self.receive_pipe.read(1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it start? try `chromium --version`)")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = True, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        self.send_pipe.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, event: str) -> None:
        while self._message().get("method") != event:
            pass

    def open_tab(self) -> None:
        target = self.call("Target.createTarget", session=False, url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")

    def shoot(self, url: str, width: int, phone: bool, out: Path) -> dict:
        height = 844 if phone else 900
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=phone)
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        audit = self.call("Runtime.evaluate", expression=AUDIT_JS, awaitPromise=True,
                          returnByValue=True)["result"]["value"]
        # A phone widens its layout to fit content that is too wide: compare with the window.
        audit["overflow"] = max(0, audit["scroll_width"] - width)
        # The window is made as tall as the page, so that the screenshot shows all of it.
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=audit["height"],
                  deviceScaleFactor=1, mobile=phone)
        shot = self.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        return audit

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False)
        except (RuntimeError, OSError):
            pass
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


def png_dpi(path: Path) -> float | None:
    """Dots per inch recorded in a PNG's pHYs chunk (matplotlib writes it), or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    at = data.find(b"pHYs")
    if not data.startswith(b"\x89PNG") or at < 0:
        return None
    per_metre = int.from_bytes(data[at + 4 : at + 8], "big")
    unit_is_metre = data[at + 12] == 1
    return per_metre * 0.0254 if unit_is_metre and per_metre else None


def figure_scale(page_html: Path, figure: dict) -> float:
    """How much larger (> 1) or smaller (< 1) than its saved size a figure is shown:
    10 pt text in the figure reads as 10 pt times this. Without a recorded dpi,
    the image is taken at 96 px per inch."""
    dpi = png_dpi((page_html.parent / figure["src"]).resolve()) or 96.0
    return figure["shown"] / (figure["natural"] * 96.0 / dpi)


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, in reading order (paths without suffix)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [chapter["file"] for chapter in part.get("chapters", [])]
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=REPO / "_build" / "html", help="the built site")
    parser.add_argument("--out", type=Path, default=REPO / "_build" / "screenshots", help="where PNGs go")
    parser.add_argument("--pages", nargs="*", help="pages as in _toc.yml (default: all of them)")
    parser.add_argument("--widths", nargs="*", type=int, default=[1366, 390],
                        help="window widths in CSS px; below 600 a phone is emulated")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium on PATH: apt-get install chromium (or pass --chromium PATH)")
    if not (args.html / "index.html").is_file():
        parser.error(f"{args.html} has no index.html: build the book first (jupyter-book build . -W)")
    args.out.mkdir(parents=True, exist_ok=True)

    problems = 0
    browser = Chromium(args.chromium)
    try:
        browser.open_tab()
        for page in args.pages or toc_pages():
            html = args.html / f"{page}.html"
            if not html.is_file():
                print(f"{page}: not in the built site ({html})")
                problems += 1
                continue
            for width in args.widths:
                png = args.out / f"{page.replace('/', '__')}-{width}.png"
                audit = browser.shoot(html.resolve().as_uri(), width, width < 600, png)
                scales = [figure_scale(html, f) for f in audit["figures"]]
                too_small = bool(scales) and min(scales) < MIN_FIGURE_SCALE
                bad = (audit["math_typeset"] < audit["math_total"] or audit["overflow"] > 0
                       or audit["cut"] or too_small)
                problems += bool(bad)
                print(f"{'!!' if bad else 'ok'} {page} @ {width}px: column {audit['column']} px, "
                      f"math {audit['math_typeset']}/{audit['math_total']}, overflow {audit['overflow']} px, "
                      f"cut {len(audit['cut'])}{' ' + str(sorted(set(audit['cut']))[:3]) if audit['cut'] else ''}, "
                      f"figures {len(scales)}"
                      f"{f' (smallest scale {min(scales):.2f})' if scales else ''} -> {png}")
    finally:
        browser.close()
    print(f"{problems} page view(s) with problems" if problems else "no problems found")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
