"""`api/chat`: the session's conversation (chat_cli keeps it in the session's export folder,
exports.py) handed to the session's owner as a download.

The owner's token guards it like every server route; a share link's viewer has none. It only
reads: no request can make anything write.
"""

from __future__ import annotations

from tornado import web

from mixvllm_common.names import EXPORT_JSON, EXPORT_MARKDOWN

from .handlers import GuardedHandler

FORMATS = {
    "json": (EXPORT_JSON, "application/json; charset=utf-8"),
    "markdown": (EXPORT_MARKDOWN, "text/markdown; charset=utf-8"),
}


class ChatExportHandler(GuardedHandler):
    """`api/chat?session=ID&format=markdown|json`: the conversation, as /save writes it."""

    def get(self) -> None:
        session = self.own_session()
        kind = FORMATS.get(self.get_query_argument("format", "markdown"))
        if kind is None:
            raise web.HTTPError(400)
        data = None if session is None else self.ctx.manager.exports.read(session.id, kind[0])
        if session is None or data is None:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("No chat conversation in this session yet.\n")
            return
        self.ctx.audit.record(
            "export_read", self.current_user, session=session.id, format=kind[0], bytes=len(data)
        )
        self.set_header("Content-Type", kind[1])
        self.set_header("Content-Disposition", f'attachment; filename="{kind[0]}"')
        self.finish(data)
