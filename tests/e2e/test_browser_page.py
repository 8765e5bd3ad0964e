"""What a user sees on the page at 1x: glyphs the cell must not clip, controls that never
cover a cell, themes and accessibility; and flow-control acks that stay with their socket."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from playwright.sync_api import FloatRect, Page, sync_playwright

from .browser_support import (
    TEST_SHELL,
    buffer_text,
    chromium,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_js,
    wait_for_text,
)

pytestmark = pytest.mark.browser

CONTROLS = ["#new-session", "#restart", "#settings-toggle"]
UNDERSCORES = "_" * 24

# Per pixel row and per pixel column of a PNG: how many pixels differ from `bg` ([r, g, b]).
INK_PROFILE = """async ([b64, bg]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bmp = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const ctx = new OffscreenCanvas(bmp.width, bmp.height).getContext("2d");
  ctx.drawImage(bmp, 0, 0);
  const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  const rows = new Array(bmp.height).fill(0), cols = new Array(bmp.width).fill(0);
  for (let y = 0; y < bmp.height; y++) {
    for (let x = 0; x < bmp.width; x++) {
      const i = (y * bmp.width + x) * 4;
      const d = Math.max(...[0, 1, 2].map((c) => Math.abs(px[i + c] - bg[c])));
      if (d > 60) { rows[y] += 1; cols[x] += 1; }
    }
  }
  return { rows, cols };
}"""

# The box of viewport row `row`, columns [0, cols), from .xterm-screen and the grid size.
CELLS_BOX = """([row, cols]) => {
  const t = window.mixvllm.term;
  const r = document.querySelector("#terminal .xterm-screen").getBoundingClientRect();
  const w = r.width / t.cols, h = r.height / t.rows;
  return { x: r.x, y: r.y + row * h, width: cols * w, height: h };
}"""


@pytest.fixture
def server_url() -> Iterator[str]:
    with terminal_server(["--no-autostart-chat", "--shell", TEST_SHELL]) as (url, _):
        yield url


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    wait_connected(page)


def viewport_row_of(page: Page, text: str) -> int:
    row: int = page.evaluate(
        """(text) => {
          const buf = window.mixvllm.term.buffer.active;
          for (let i = buf.length - 1; i >= 0; i--) {
            if (buf.getLine(i).translateToString(true) === text) return i - buf.viewportY;
          }
          return -1;
        }""",
        text,
    )
    assert row >= 0, buffer_text(page)
    return row


def test_an_underscore_is_drawn_at_1x(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 700, "height": 500}, device_scale_factor=1)
        open_page(page, server_url)
        # The command line holds one underscore; its output row holds nothing else.
        type_line(page, f"printf '%.0s_' {{1..{len(UNDERSCORES)}}}; echo")
        wait_for_text(page, f"\n{UNDERSCORES}\n")
        page.wait_for_timeout(100)  # one more animation frame for the DOM renderer to draw
        box = page.evaluate(CELLS_BOX, [viewport_row_of(page, UNDERSCORES), len(UNDERSCORES)])
        shot = page.screenshot(clip=box)
        ink = page.evaluate(INK_PROFILE, [base64.b64encode(shot).decode(), [0x1E, 0x1E, 0x1E]])

        height = len(ink["rows"])
        inked_rows = [y for y, n in enumerate(ink["rows"]) if n > 0]
        assert inked_rows, f"no pixel of {UNDERSCORES!r} was drawn in its {height}px cell row"
        assert min(inked_rows) >= height // 2, f"ink at {inked_rows}, not in the bottom band"
        covered = sum(1 for n in ink["cols"] if n > 0) / len(ink["cols"])
        assert covered > 0.8, f"only {covered:.0%} of the row's width is inked"


def boxes_intersect(a: FloatRect, b: FloatRect) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_controls_never_cover_a_cell_and_are_accessible(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 700, "height": 500}, device_scale_factor=1)
        problems = collect_problems(page)
        open_page(page, server_url)
        cols = page.evaluate("() => window.mixvllm.term.cols")
        # Fill the whole first row so every one of its cells holds text.
        type_line(page, f"clear; printf '%.0sx' {{1..{cols}}}; echo")
        wait_for_js(
            page,
            "(n) => { const buf = window.mixvllm.term.buffer.active; "
            "return buf.getLine(buf.viewportY).translateToString(true) === 'x'.repeat(n); }",
            cols,
            15000,
        )

        screen = page.locator("#terminal .xterm-screen").bounding_box()
        assert screen is not None
        for control in CONTROLS:
            box = page.locator(control).bounding_box()
            assert box is not None, f"{control} is not shown"
            assert not boxes_intersect(box, screen), f"{control} {box} covers rows {screen}"
            assert page.locator(control).evaluate(OPACITY) == 1.0
        # Nothing is drawn over any cell of the first row.
        covered = page.evaluate(
            """(box) => {
              const w = box.width / window.mixvllm.term.cols, hits = [];
              for (let c = 0; c < window.mixvllm.term.cols; c++) {
                const x = box.x + (c + 0.5) * w, y = box.y + box.height / 2;
                const el = document.elementFromPoint(x, y);
                if (!el || !el.closest("#terminal")) hits.push([c, el && el.id]);
              }
              return hits;
            }""",
            page.evaluate(CELLS_BOX, [0, cols]),
        )
        assert covered == [], covered

        assert page.get_by_role("button", name="Settings", exact=True).count() == 1
        dark = [page.locator(c).evaluate(COLOURS) for c in CONTROLS]
        for colours in dark:
            assert contrast(colours["color"], colours["backgroundColor"]) >= 4.5, colours

        # The light theme themes the controls (and the overlay) too.
        page.click("#settings-toggle")
        page.select_option("#theme", "light")
        light = [page.locator(c).evaluate(COLOURS) for c in CONTROLS]
        for before, after in zip(dark, light, strict=True):
            assert before != after
            assert contrast(after["color"], after["backgroundColor"]) >= 4.5, after
        overlay_box = page.locator("#overlay-box").evaluate(COLOURS)
        assert contrast(overlay_box["color"], overlay_box["backgroundColor"]) >= 4.5
        assert luminance(overlay_box["backgroundColor"]) > 0.5, overlay_box

        # Screen-reader mode is a toggle in the same menu.
        assert page.locator(".xterm-accessibility-tree").count() == 0
        page.get_by_label("Screen-reader mode").check()
        assert page.evaluate("() => window.mixvllm.term.options.screenReaderMode") is True
        page.locator(".xterm-accessibility-tree").wait_for(state="attached", timeout=5000)
        assert "screenReader=1" in page.url

        # The bar's panels open in one corner: opening one closes the one that was open.
        page.click("#export")
        assert page.locator("#export-panel").is_visible()
        assert not page.locator("#settings").is_visible()
        page.click("#share")
        page.locator("#share-panel").wait_for(state="visible", timeout=5000)
        assert not page.locator("#export-panel").is_visible()
        page.click("#settings-toggle")
        assert page.locator("#settings").is_visible()
        assert not page.locator("#share-panel").is_visible()
        assert problems == []


def test_the_overlay_takes_the_focus(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        context = browser.new_context(viewport={"width": 700, "height": 500})
        first = context.new_page()
        open_page(first, server_url)
        first.wait_for_function("() => /[?&]session=/.test(location.search)")
        second = context.new_page()
        open_page(second, first.url)  # takes the session over: the first tab shows the overlay
        first.locator("#overlay").wait_for(state="visible", timeout=15000)
        assert first.evaluate("() => document.activeElement.id") == "overlay-action"
        first.keyboard.press("Enter")  # so the keyboard alone takes it back
        wait_connected(first)
        first.locator("#overlay").wait_for(state="hidden", timeout=15000)


# Every socket's close code, kept across reloads of the tab.
RECORD_CLOSES = """(() => {
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("close", (e) => {
        const seen = JSON.parse(sessionStorage.getItem("closes") || "[]");
        sessionStorage.setItem("closes", JSON.stringify([...seen, e.code]));
      });
    }
  };
})();"""


def wait_for_number(page: Page, at_least: int) -> None:
    """Wait until the newest numeric line on screen is at least `at_least`: a flood is on."""
    wait_for_js(
        page,
        """(n) => {
          const buf = window.mixvllm.term.buffer.active;
          for (let i = buf.length - 1; i >= 0; i--) {
            const line = buf.getLine(i).translateToString(true);
            if (/^\\d+$/.test(line)) return Number(line) >= n;
          }
          return false;
        }""",
        at_least,
        30000,
    )


def closes(page: Page) -> list[int]:
    codes: list[int] = page.evaluate("() => JSON.parse(sessionStorage.getItem('closes') || '[]')")
    return codes


def test_restart_and_reload_during_a_flood_keep_acks_with_their_socket(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.add_init_script(RECORD_CLOSES)
        problems = collect_problems(page)
        # A slow client (a laptop on battery): xterm.js, not the PTY, limits the flood, so
        # at the restart it still holds a window of the old socket's frames to parse and ack.
        cdp = page.context.new_cdp_session(page)
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 20})
        open_page(page, server_url)
        for attempt in range(2):  # the crossing is a race: two chances to lose it
            session = page.evaluate("() => window.mixvllm.sessionId")
            type_line(page, "seq 1 100000000")
            wait_for_number(page, 20000)
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#restart")
            page.wait_for_function(
                "(old) => window.mixvllm.connected && window.mixvllm.sessionId !== old",
                arg=session,
            )
            type_line(page, f"echo after-$(({attempt}+40))")
            wait_for_text(page, f"after-{attempt + 40}", 30000)
            assert 1007 not in closes(page), closes(page)
            leftovers = [line for line in buffer_text(page).splitlines() if line.isdigit()]
            assert leftovers == [], f"{len(leftovers)} lines of the old session's flood"
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})

        # Reload in the middle of a flood: the reattached page gets all of it, to the end.
        last = 400000
        type_line(page, f"seq 1 {last}; echo flood-$((1+1))")
        wait_for_number(page, 20000)
        assert "flood-2" not in buffer_text(page), "the flood ended before the reload"
        page.reload()
        wait_connected(page)
        wait_for_text(page, "flood-2", 120000)
        tail = buffer_text(page).split("\nflood-2", 1)[0].splitlines()[-2000:]
        assert tail == [str(n) for n in range(last - 1999, last + 1)]
        assert 1007 not in closes(page), closes(page)
        assert problems == []


OPACITY = """(el) => {
  let o = 1;
  for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
  return o;
}"""

COLOURS = """(el) => {
  const s = getComputedStyle(el);
  return { color: s.color, backgroundColor: s.backgroundColor };
}"""


def rgb(css: str) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return r, g, b


def luminance(css: str) -> float:
    def channel(v: float) -> float:
        v /= 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
