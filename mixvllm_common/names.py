"""Names the programs and the page agree on, defined once (static/terminal.js keeps its copy
of the OSC number in one constant too).

The terminal server sets SESSION_ENV and EXPORT_ENV in each session's environment, and chat
reads them: SESSION_ENV says it runs in the browser terminal; EXPORT_ENV names the folder where
it keeps EXPORT_JSON and EXPORT_MARKDOWN up to date for the server to serve. PAGE_OSC is the
private OSC number of the sequences chat writes for the page (code block markers).
"""

from __future__ import annotations

SESSION_ENV = "MIXVLLM_SESSION"
EXPORT_ENV = "MIXVLLM_CHAT_EXPORT"
EXPORT_JSON = "chat.json"
EXPORT_MARKDOWN = "chat.md"
PAGE_OSC = 7337
