"""Names the programs and the page agree on, defined once (static/terminal.js keeps its copy
of the OSC number in one constant too).

The terminal server sets SESSION_ENV and EXPORT_ENV in each session's environment, and chat
reads them: SESSION_ENV says it runs in the browser terminal; EXPORT_ENV names the folder where
it keeps EXPORT_JSON and EXPORT_MARKDOWN up to date for the server to serve. PAGE_OSC is the
private OSC number of the sequences chat writes for the page (code block markers, download
links).

The same folder carries small JSON files both ways: DROP_NOTICE files the server leaves when a
file is dropped on the page (chat says so at its prompt), DOWNLOAD_TICKET files chat leaves for
`/download PATH` (the page's link names the ticket, never the path: only what chat wrote can be
downloaded).
"""

from __future__ import annotations

SESSION_ENV = "MIXVLLM_SESSION"
EXPORT_ENV = "MIXVLLM_CHAT_EXPORT"
EXPORT_JSON = "chat.json"
EXPORT_MARKDOWN = "chat.md"
PAGE_OSC = 7337
DROP_NOTICE_PREFIX = "dropped-"
DOWNLOAD_TICKET_PREFIX = "download-"
NOTICE_SUFFIX = ".json"
# chat's --context-length; `mixvllm-serve up` sets it for the sessions from the profile when the
# engine does not report its context length itself.
CHAT_CONTEXT_LENGTH_ENV = "CHAT_CONTEXT_LENGTH"
