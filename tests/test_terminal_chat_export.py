"""`api/chat`: the session's conversation export, for the owner only, read-only."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from .support import wait_for_async
from .terminal_support import TOKEN, run, running_server
from .test_terminal_share import share, share_cookie

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_the_owner_downloads_what_chat_left_in_the_sessions_folder_and_no_one_else() -> None:
    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            sid = owner.session_id
            url = f"api/chat?session={sid}"
            r = await srv.fetch(url, BEARER)
            assert r.code == 404  # no chat has written yet
            # What chat_cli/render/page.py does after each change (the shell stands in for it here).
            owner.type(
                'cd "$MIXVLLM_CHAT_EXPORT"'
                ' && printf \'{"messages": ["h\\303\\251_1"]}\' > chat.json'
                " && printf '# Chat\\n' > chat.md && echo wr''itten:\"$PWD\":\r"
            )
            await owner.expect("written:")
            folder = Path(re.findall(r"written:([^:]+):", owner.output)[0])
            assert folder.name == sid
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700

            r = await srv.fetch(url + "&format=json", BEARER)
            assert r.code == 200
            assert json.loads(r.body) == {"messages": ["hé_1"]}
            assert r.headers["Content-Disposition"] == 'attachment; filename="chat.json"'
            r = await srv.fetch(url, BEARER)
            assert (r.code, r.body, r.headers["Content-Type"]) == (
                200,
                b"# Chat\n",
                "text/markdown; charset=utf-8",
            )
            assert (await srv.fetch(url + "&format=../../etc/passwd", BEARER)).code == 400
            assert (await srv.fetch("api/chat?session=nosuchsession", BEARER)).code == 404
            assert (await srv.fetch(url)).code == 403  # no token
            assert (await srv.fetch(url, BEARER, method="POST", body=b"")).code == 405
            # A viewer's share cookie opens nothing here, whatever it shares.
            token = await share(srv, sid)
            assert (await srv.fetch(url, share_cookie(srv, token))).code == 403
            assert (await srv.fetch("view/" + url, share_cookie(srv, token))).code == 404

            owner.type("exit\r")
            await wait_for_async(lambda: not folder.exists(), 10, "the folder removed")

    run(body)
