"""Files through the page, in Chromium: a real drop event with a DataTransfer holding a file
lands the file in the session's folder and chat says so; `/file` sends it to the model;
`/download` gives the page a link that downloads it again."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.chat_support import fake_server
from tests.fake_openai import FakeServer
from tests.support import isolated_home, wait_for

from .browser_support import (
    TEST_SHELL,
    chromium,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_text,
)

pytestmark = pytest.mark.browser

CHAT = str(Path(sys.executable).with_name("chat"))
NAME = "dropped notes.txt"
TEXT = "line one\nligne deux é\n"
DATA_TRANSFER = """([name, text]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, { type: "text/plain" }));
  return dt;
}"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakeServer, Path]]:
    home = tmp_path / "home"
    home.mkdir()
    with fake_server() as model:
        env = {"MODEL_SERVER_URL": model.url, **isolated_home(tmp_path), "HOME": str(home)}
        args = ["--shell", TEST_SHELL, "--chat-command", f"{CHAT} --timeout 30"]
        with terminal_server(args, env) as (url, _):
            yield url, model, home


def test_a_dropped_file_lands_chat_says_so_and_download_brings_it_back(
    served: tuple[str, FakeServer, Path],
) -> None:
    url, model, home = served
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 900, "height": 600}, device_scale_factor=1)
        problems = collect_problems(page)
        page.goto(url)
        wait_connected(page)
        wait_for_text(page, "Connected to", 30000)

        transfer = page.evaluate_handle(DATA_TRANSFER, [NAME, TEXT])
        for event in ("dragenter", "dragover", "drop"):
            page.dispatch_event(".xterm-screen", event, {"dataTransfer": transfer})
        wait_for_text(page, f"dropped: {NAME} (", 15000)
        wait_for_text(page, f"/file '{NAME}' to attach", 5000)
        landed = home / NAME
        assert landed.read_text(encoding="utf-8") == TEXT
        assert stat.S_IMODE(landed.stat().st_mode) == 0o600
        page.locator("#files").get_by_text(f"dropped {NAME}").wait_for(timeout=5000)

        type_line(page, f"/file '{NAME}'")
        wait_for_text(page, f"attached: {NAME}", 10000)
        type_line(page, "what is in it?")
        wait_for_text(page, "tok/s", 30000)
        sent = model.state.requests[-1]["messages"][-1]["content"]
        assert sent.startswith(f"what is in it?\n\n{NAME}:\n```\n{TEXT}```")

        type_line(page, f"/download '{NAME}'")
        wait_for_text(page, f"download: {NAME} (23 B)", 10000)
        link = page.locator("#files a.download")
        link.wait_for(timeout=10000)
        assert link.inner_text().endswith(NAME)
        with page.expect_download() as download:
            link.click()
        assert download.value.suggested_filename == NAME
        assert Path(download.value.path()).read_text(encoding="utf-8") == TEXT
        wait_for(lambda: problems == [], 1, "no page errors")
