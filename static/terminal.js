// mixvllm browser terminal: owns the socket, resize, reconnect and flow control.
// Wire protocol (see terminal_server/protocol.py): ["stdin", s], ["set_size", rows, cols],
// ["ack_bytes", n] (or ["ack", frames] from a server that offers no ack_bytes in setup) up;
// ["setup", {...}], stdout (binary frames, as we ask with ?binary=1),
// ["disconnect", code], ["error", msg] down.
"use strict";

(function () {
  const MSG = Object.freeze({
    STDIN: "stdin", SET_SIZE: "set_size", ACK: "ack", ACK_BYTES: "ack_bytes",
    SETUP: "setup", STDOUT: "stdout", DISCONNECT: "disconnect", ERROR: "error",
    SHARE: "share", SIZE: "size",
  });
  const CLOSE = Object.freeze({
    TAKEN_OVER: 4001, SESSION_ENDED: 4002, VIEW_ONLY: 4004, SHARE_ENDED: 4005, TRY_LATER: 1013,
  });
  // The server serves this page under view/ for a share link: watch only, never type or resize.
  const VIEWER = document.body.dataset.role === "viewer";
  const THEMES = {
    dark: { background: "#1e1e1e", foreground: "#d4d4d4", cursor: "#d4d4d4",
            selectionBackground: "#264f78" },
    light: { background: "#fafafa", foreground: "#1e1e1e", cursor: "#1e1e1e",
             selectionBackground: "#add6ff" },
  };
  const LINE_HEIGHT = 1.2;
  const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000, 15000];

  const params = new URLSearchParams(location.search);
  const settings = {
    fontSize: clampInt(params.get("fontSize"), 6, 48, 14),
    theme: THEMES[params.get("theme")] ? params.get("theme") : "dark",
    screenReader: params.get("screenReader") === "1",
    clipboardWrites: params.get("clipboardWrites") !== "0",  // OSC 52 writes, with a notice
  };
  let sessionId = params.get("session");

  const term = new Terminal({
    fontSize: settings.fontSize,
    fontFamily: "'DejaVu Sans Mono', Menlo, Consolas, monospace",
    // At lineHeight 1 the DOM renderer's row box clips the underscore (it sits below the
    // descent Chromium reports for DejaVu Sans Mono at 1x); the extra leading gives it room.
    lineHeight: LINE_HEIGHT,
    theme: THEMES[settings.theme],
    screenReaderMode: settings.screenReader,
    cursorBlink: !VIEWER,
    disableStdin: VIEWER,
    scrollback: 10000,
    allowProposedApi: true,  // registerDecoration: the copy buttons on chat's code blocks
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.loadAddon(new WebLinksAddon.WebLinksAddon((event, uri) => {
    const w = window.open(uri, "_blank", "noopener,noreferrer");
    if (w) w.opener = null;
  }));
  term.open(document.getElementById("terminal"));
  applyTheme();
  fit.fit();

  // -- private escape codes ---------------------------------------------------------------
  // The OSC numbers this page handles; chat's is defined once on its side too (chat_cli/page.py).
  const OSC = Object.freeze({ CLIPBOARD: 52, CHAT: 7337 });
  const CHAT_BLOCK = "block";  // OSC 7337 "block": a code block starts on this row
  const CHAT_CODE = "code;";  // OSC 7337 "code;BASE64": the finished block's text
  const CHAT_DOWNLOAD = "download;";  // OSC 7337 "download;TICKET;BASE64(NAME)": /download

  // -- chat's code blocks: a copy button at each ----------------------------------------
  // chat (chat_cli/page.py) sends OSC 7337 "block" at a code block's first row and, once the
  // block is complete, "code;BASE64" with its exact text. Any program in the session can
  // send these too, so the text is only trusted as far as the screen shows it: a button
  // appears only when the rows between the two marks show that text, and a click copies
  // only while they still do (see shows() for what may differ: nothing visible).
  const COPY_CELLS = 7;
  const MAX_PAD = 4;  // the most blank columns a block's frame may add left of its text
  const TAB_CELLS = 8;  // the most cells a tab is drawn as
  let blockStart = null;  // the newest block's first row and column, waiting for its text
  const copyBlocks = new Set();  // their buttons are drawn only while on screen
  term.parser.registerOscHandler(OSC.CHAT, (data) => {
    if (data === CHAT_BLOCK) {
      // A live redraw sends it again for the same block: only the newest counts.
      if (blockStart) blockStart.marker.dispose();
      const buf = term.buffer.active;
      blockStart = { marker: term.registerMarker(0), column: buf.cursorX, buffer: buf.type };
    } else if (data.startsWith(CHAT_CODE)) {
      const start = blockStart;
      blockStart = null;
      if (!start) return true;
      const text = decodeBase64(data.slice(CHAT_CODE.length));
      const block = { ...start, end: term.registerMarker(0), text };
      if (text !== null && !block.marker.isDisposed && block.end && shows(block)) {
        addCopyButton(block);
      } else {
        disposeBlock(block);
      }
    } else if (data.startsWith(CHAT_DOWNLOAD) && !VIEWER) {
      const [ticket, name] = data.slice(CHAT_DOWNLOAD.length).split(";");
      offerDownload(ticket, decodeBase64(name || ""));
    }
    return true;
  });

  function disposeBlock(block) {
    block.marker.dispose();
    if (block.end) block.end.dispose();
  }

  function decodeBase64(data) {
    try {
      return new TextDecoder("utf-8", { fatal: true })
        .decode(Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
    } catch (_) {
      return null;
    }
  }

  // The block's rows as the screen shows them: each of chat's rows whole again (a narrower
  // window wraps them), from the block's first column on, without trailing blanks.
  function shownRows(block) {
    const buf = block.buffer === "alternate" ? term.buffer.alternate : term.buffer.normal;
    if (block.marker.isDisposed || block.end.isDisposed) return null;
    const rows = [];
    const cell = buf.getNullCell();
    let text = "";
    let column = 0;
    for (let y = block.marker.line; y < buf.length; y++) {
      const line = buf.getLine(y);
      if (!line || (y > block.end.line && !line.isWrapped)) break;
      if (!line.isWrapped && y !== block.marker.line) {
        rows.push(text.replace(/ +$/, ""));
        text = "";
        column = 0;
      }
      for (let x = 0; x < line.length; x++) {
        line.getCell(x, cell);
        const width = cell.getWidth();
        if (width === 0) continue;  // the right half of a wide character
        if (column >= block.column) text += cell.getChars() || " ";
        column += width;
      }
    }
    rows.push(text.replace(/ +$/, ""));
    return rows;
  }

  // Whether the block's rows show its text. What may differ is invisible: blank rows above
  // and below it, blanks at the end of a line, a tab drawn as 1..8 blanks, the same blank
  // columns left of every row (the block's padding), and where a long line wraps (at a
  // blank, or inside a word when the row is full). Every other character must be the one
  // in its cell, so control codes, a different command or an extra line never match.
  function shows(block) {
    const rows = shownRows(block);
    if (!rows) return false;
    const lines = trimBlankLines(block.text.split("\n").map((l) => l.replace(/[ \t\r]+$/, "")));
    const shown = trimBlankLines(rows);
    if (!lines.length || !shown.length) return false;
    let lead = Infinity;
    for (const row of shown) if (row) lead = Math.min(lead, leadingBlanks(row));
    for (let pad = 0; pad <= Math.min(lead, MAX_PAD); pad++) {
      if (sameText(pad ? shown.map((row) => row.slice(pad)) : shown, lines)) return true;
    }
    return false;
  }

  function trimBlankLines(lines) {
    let first = 0;
    let last = lines.length;
    while (first < last && !lines[first]) first++;  // blanks at the end are gone already
    while (last > first && !lines[last - 1]) last--;
    return lines.slice(first, last);
  }

  function leadingBlanks(row) {
    let n = 0;
    while (row[n] === " ") n++;
    return n;
  }

  function sameText(rows, lines) {
    let r = 0;
    for (const line of lines) {
      if (r >= rows.length) return false;
      let row = rows[r];
      let s = 0;
      let p = 0;
      while (p < line.length) {
        if (line[p] === " " || line[p] === "\t") {
          let spaces = 0;
          let tabs = 0;
          for (; p < line.length && (line[p] === " " || line[p] === "\t"); p++) {
            if (line[p] === "\t") tabs++; else spaces++;
          }
          let blanks = 0;
          while (row[s + blanks] === " ") blanks++;
          if (s > 0 && s + blanks === row.length) {  // wrapped at the blank
            if (++r >= rows.length) return false;
            row = rows[r];
            s = leadingBlanks(row);
          } else if (blanks >= spaces + tabs && blanks <= spaces + TAB_CELLS * tabs) {
            s += blanks;
          } else {
            return false;
          }
        } else if (s < row.length) {
          if (row[s] !== line[p]) return false;
          s++;
          p++;
        } else if (s > 0) {  // a word longer than the row goes on on the next one
          if (++r >= rows.length) return false;
          row = rows[r];
          s = 0;
        } else {
          return false;
        }
      }
      if (s !== row.length) return false;
      r++;
    }
    return r === rows.length;
  }

  function addCopyButton(block) {
    const decoration = term.registerDecoration({
      marker: block.marker, anchor: "right", x: 0, width: COPY_CELLS, layer: "top",
    });
    if (!decoration) { disposeBlock(block); return; }
    copyBlocks.add(decoration);
    const gone = () => { copyBlocks.delete(decoration); decoration.dispose(); disposeBlock(block); };
    block.marker.onDispose(gone);
    block.end.onDispose(gone);
    decoration.onRender((element) => {
      element.style.right = "0px";  // xterm.js leaves `right` unset for x: 0
      if (element.firstChild) return;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "copy";
      button.title = "Copy this code block";
      button.setAttribute("aria-label", "Copy this code block");
      // The terminal under it would start a selection and take the focus.
      button.addEventListener("mousedown", (e) => e.stopPropagation());
      button.addEventListener("click", async (e) => {
        e.stopPropagation();
        // Rows drawn over since: copy nothing rather than text the screen no longer shows.
        const current = shows(block);
        const copied = current && await copyText(block.text);
        button.textContent = !current ? "changed" : copied ? "copied" : "failed";
        setTimeout(() => { button.textContent = "copy"; }, 1500);
        term.focus();
      });
      element.appendChild(button);
    });
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); return true; } catch (_) { /* below */ }
    }
    // Plain http to another host has no Clipboard API: the old way still works on a click.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let copied = false;
    try { copied = document.execCommand("copy"); } catch (_) { copied = false; }
    area.remove();
    return copied;
  }

  // -- OSC 52: a program sets the clipboard -----------------------------------------------
  // Programs in the session (chat's /copy among them) ask for the clipboard with OSC 52.
  // A viewer's page ignores every such request; the owner's page never answers a read
  // ("?" would type the clipboard into the session, where any program reads it) and shows
  // each write it makes, which the settings can turn off. Our own handler rather than
  // @xterm/addon-clipboard's: that one answers every read its provider is asked for.
  const MAX_CLIPBOARD_BYTES = 1 << 20;
  const PREVIEW_CHARS = 40;
  const NOTICE_MS = 6000;
  term.parser.registerOscHandler(OSC.CLIPBOARD, (data) => {
    if (VIEWER || !settings.clipboardWrites) return true;
    const sep = data.indexOf(";");
    const targets = data.slice(0, sep);
    const payload = data.slice(sep + 1);
    // Pc empty or naming c is the clipboard; p, s and cut buffers have no browser equivalent.
    if (sep < 0 || payload === "?" || (targets && !targets.includes("c"))) return true;
    if (payload.length > Math.ceil(MAX_CLIPBOARD_BYTES / 3) * 4) {
      showNotice("A program tried to copy more than 1 MiB to the clipboard; not copied.");
      return true;
    }
    const text = decodeBase64(payload);
    if (text !== null) programCopy(text);
    return true;  // parsing goes on at once: the write finishes on its own
  });

  // One write at a time; of those a program sends meanwhile only the newest is kept.
  let nextCopy = null;
  let copying = false;

  async function programCopy(text) {
    nextCopy = text;
    if (copying) return;
    copying = true;
    try {
      while (nextCopy !== null) {
        const current = nextCopy;
        nextCopy = null;
        await writeClipboard(current);
      }
    } finally {
      copying = false;
    }
  }

  async function writeClipboard(text) {
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); copied = true; } catch (_) { /* below */ }
    }
    if (!copied) {
      showNotice("A program tried to copy to the clipboard; the browser did not allow it.");
    } else if (!text) {
      showNotice("A program emptied the clipboard.");
    } else {
      const n = text.length;
      showNotice(`A program copied ${n} character${n === 1 ? "" : "s"} to the clipboard: `,
        preview(text));
    }
  }

  // The first characters, with nothing in them that could act: line breaks and tabs drawn
  // as symbols, other control and format characters (bidi overrides, zero widths) as U+FFFD.
  function preview(text) {
    const head = Array.from(text.slice(0, 4 * PREVIEW_CHARS)).slice(0, PREVIEW_CHARS).join("");
    const shown = head.replace(/\r\n|\n|\r/g, "\u21b5").replace(/\t/g, "\u2192")
      .replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, "\ufffd");
    return head.length < text.length ? `${shown}\u2026` : shown;
  }

  const notice = document.getElementById("notice");
  const noticeText = document.getElementById("notice-text");
  let noticeTimer = null;

  function showNotice(message, quoted) {
    const parts = [message];
    if (quoted !== undefined) {
      const code = document.createElement("code");
      code.textContent = quoted;
      parts.push(code);
    }
    noticeText.replaceChildren(...parts);
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, NOTICE_MS);
  }

  let ws = null;
  let attempt = 0;
  let reconnectTimer = null;
  let lastError = "";
  let restartRequested = false;
  let attached = false;  // the current socket's setup arrived: its session is known
  let leaving = false;  // logout or the login page's redirect: one navigation, no reconnecting
  // With a server that answers set_size with ["size", r, c] in order with the output, the
  // screen is resized there: output already on its way, drawn for the old size, lands at the
  // old size (resizing at once garbles a streaming chat answer, whose frames count rows).
  let sizesEchoed = false;
  let asked = null;  // the size last asked for and not confirmed yet
  let applyingSize = false;

  // -- socket ---------------------------------------------------------------------------
  function socketUrl() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    if (VIEWER) {  // the share cookie names the session; nothing else is the viewer's to choose
      q.set("binary", "1");
      url.search = q.toString();
      return url.toString();
    }
    if (sessionId) q.set("session", sessionId);
    if (restartRequested) q.set("restart", "1");
    q.set("binary", "1");  // stdout as raw UTF-8 frames; xterm.js decodes them
    q.set("ack", "bytes");  // acks by byte count: typing and its echo need no ack message
    q.set("sizes", "1");  // each set_size answered in order with output: resize there
    q.set("rows", String(term.rows));
    q.set("cols", String(term.cols));
    for (const name of ["model", "system"]) {
      if (params.get(name)) q.set(name, params.get(name));
    }
    url.search = q.toString();
    return url.toString();
  }

  function connect() {
    reconnectTimer = null;
    lastError = "";
    attached = false;
    const sock = new WebSocket(socketUrl());
    sock.binaryType = "arraybuffer";
    ws = sock;
    const acks = connectionAcks(sock);
    sock.onopen = () => { attempt = 0; };
    sock.onmessage = (event) => { if (ws === sock) onMessage(event.data, acks); };
    sock.onclose = (event) => { if (ws === sock) onClose(event); };
  }

  function send(msg) {
    if (VIEWER) return;  // the server closes a viewer that sends stdin or set_size
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  // Acknowledge output once xterm.js has parsed it, to the socket that sent it: xterm.js may
  // still be parsing an old socket's frames after a restart or reattach, and counting those
  // against the new one would over-ack it. By bytes once the server's threshold is reached,
  // where setup offers it; else every frame, coalesced into one message per task.
  function connectionAcks(sock) {
    let every = 0;  // > 0: ack by bytes, at least this many at a time
    let pending = 0;  // bytes or frames consumed and not acknowledged yet
    let scheduled = false;
    function flush() {
      scheduled = false;
      if (ws === sock && sock.readyState === WebSocket.OPEN) {
        sock.send(JSON.stringify([every ? MSG.ACK_BYTES : MSG.ACK, pending]));
      }
      pending = 0;
    }
    return {
      byBytes(n) { every = n; },
      consumed(size) {
        if (every) {
          pending += size;
          if (pending >= every) flush();
          return;
        }
        pending += 1;
        if (!scheduled) {
          scheduled = true;
          queueMicrotask(flush);
        }
      },
    };
  }

  function onMessage(data, acks) {
    if (typeof data !== "string") {  // binary frame: terminal output
      const bytes = new Uint8Array(data);
      term.write(bytes, () => acks.consumed(bytes.length));
      return;
    }
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (!Array.isArray(msg)) return;
    switch (msg[0]) {
      case MSG.SETUP: {
        const info = msg[1] || {};
        attached = true;
        if (VIEWER) { viewerSetup(info); break; }
        if (Number.isInteger(info.ack_bytes) && info.ack_bytes > 0) acks.byBytes(info.ack_bytes);
        sizesEchoed = info.sizes === true;
        asked = null;
        const restarted = restartRequested;
        restartRequested = false;
        // A reattach replays recent output from a clean screen. Reset (RIS) through the write
        // queue: an old socket's frames still queued there must land before it, not after.
        term.write("\x1bc");
        if (sessionId && !info.reattached && !restarted) {
          term.write("\x1b[33m[previous session is gone; this is a new one]\x1b[0m\r\n");
        }
        sessionId = info.session;
        setUrlParam("session", sessionId);
        document.title = `mixvllm · ${sessionId}`;
        hideOverlay();
        send([MSG.SET_SIZE, term.rows, term.cols]);
        refreshShare();
        break;
      }
      case MSG.SIZE:
        // Through the write queue: after every frame that came before it is parsed.
        term.write("", () => applyServerSize(msg[1], msg[2]));
        break;
      case MSG.SHARE:
        renderShare(msg[1]);
        break;
      case MSG.STDOUT:
        term.write(msg[1], () => acks.consumed(0));
        break;
      case MSG.DISCONNECT:
        ended(`Session ended (exit ${msg[1]}).`);
        break;
      case MSG.ERROR:
        lastError = String(msg[1]);
        break;
    }
  }

  function onClose(event) {
    ws = null;
    if (leaving) return;  // a second navigation would abort the first (ERR_ABORTED)
    if (VIEWER && viewerClosed(event)) return;
    if (document.querySelector('meta[name="mixvllm-csrf"]')) {
      // Login modes: a socket refused (401, seen as 1006) after logout or expiry: if the page
      // now answers with the login page's redirect, go there instead of reconnecting.
      fetch(location.href, { cache: "no-store", credentials: "same-origin", redirect: "manual" })
        .then((r) => {
          if (r.type !== "opaqueredirect" || leaving) return;
          leaving = true;
          location.reload();
        })
        .catch(() => {});
    }
    if (event.code === CLOSE.SESSION_ENDED) { ended("Session ended."); return; }
    if (event.code === CLOSE.TAKEN_OVER) {
      showOverlay("This session was opened in another tab.", "Use it here", connect);
      return;
    }
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)]
      * (event.code === CLOSE.TRY_LATER ? 4 : 1);
    attempt += 1;
    const why = lastError || event.reason || "connection lost";
    showOverlay(`${why} — reconnecting in ${(delay / 1000).toFixed(1)} s…`, "Reconnect now", () => {
      clearTimeout(reconnectTimer);
      connect();
    });
    reconnectTimer = setTimeout(connect, delay);
  }

  function ended(text) {
    ws = null;
    if (VIEWER) { showOverlay(text); return; }
    showOverlay(text, "Start a new session", () => {
      sessionId = null;
      setUrlParam("session", null);
      connect();
    });
  }

  // -- view-only page (a share link) ----------------------------------------------------
  function viewerSetup(info) {
    term.write("\x1bc");
    // The PTY has the owner's size; fitting it to this window would garble every line.
    if (info.rows && info.cols) term.resize(info.cols, info.rows);
    document.title = "mixvllm · view-only";
    hideOverlay();
  }

  let viewerGone = false;  // the share ended: no more reconnecting

  function viewerClosed(event) {
    if (viewerGone) return true;
    if (event.code === CLOSE.SHARE_ENDED) {
      showOverlay("This share has ended: the owner stopped sharing.");
    } else if (event.code === CLOSE.SESSION_ENDED) {
      showOverlay("This share has ended: the session is over.");
    } else if (event.code === CLOSE.VIEW_ONLY) {
      showOverlay("This share is view-only.");
    } else {
      // A revoked or expired share refuses the socket (403, seen here as 1006): ask the page.
      fetch(location.pathname, { cache: "no-store", credentials: "same-origin" })
        .then((r) => {
          if (r.status !== 403) return;
          viewerGone = true;
          clearTimeout(reconnectTimer);
          showOverlay("This share has ended.");
        })
        .catch(() => {});
      return false;
    }
    viewerGone = true;
    return true;
  }

  // -- sharing (the owner's side) -------------------------------------------------------
  const sharePanel = document.getElementById("share-panel");
  const shareToggle = document.getElementById("share");
  const shareUrl = document.getElementById("share-url");
  const shareStatus = document.getElementById("share-status");
  let shareState = { url: null, viewers: 0 };

  function renderShare(state) {
    shareState = state || { url: null, viewers: 0 };
    const shared = Boolean(shareState.url);
    shareUrl.value = shared ? new URL(shareState.url, location.href).toString() : "";
    const n = shareState.viewers;
    shareStatus.textContent = `shared \u00b7 ${n} viewer${n === 1 ? "" : "s"}`;
    shareStatus.hidden = !shared;
    if (!shared) showSharePanel(false);
  }

  async function shareRequest(method) {
    if (!sessionId) return;
    try {
      const response = await fetch(`api/share?session=${encodeURIComponent(sessionId)}`, {
        method, cache: "no-store", credentials: "same-origin", headers: csrfHeaders(),
      });
      if (response.status === 204) renderShare(null);
      else if (response.ok) renderShare(await response.json());
    } catch (_) {
      // The server is away: the connection overlay says so.
    }
  }

  function refreshShare() { shareRequest("GET"); }

  // One bar panel open at a time: they open in the same corner, above the controls.
  function closePanelsBut(keep) {
    if (keep !== sharePanel && !sharePanel.hidden) showSharePanel(false);
    if (keep !== exportPanel && !exportPanel.hidden) showExportPanel(false);
    if (keep !== settingsPanel && !settingsPanel.hidden) showSettings(false);
  }

  function showSharePanel(show) {
    if (show) closePanelsBut(sharePanel);
    sharePanel.hidden = !show;
    shareToggle.setAttribute("aria-expanded", String(show));
    if (show) { shareUrl.focus(); shareUrl.select(); }
  }

  shareToggle.addEventListener("click", async () => {
    if (!sharePanel.hidden) { showSharePanel(false); return; }
    if (!shareState.url) await shareRequest("POST");
    if (shareState.url) showSharePanel(true);
  });
  document.getElementById("share-copy").addEventListener("click", () => {
    shareUrl.select();
    if (navigator.clipboard) navigator.clipboard.writeText(shareUrl.value).catch(() => {});
  });
  document.getElementById("share-stop").addEventListener("click", () => {
    shareRequest("DELETE");
    shareToggle.focus();
  });
  sharePanel.addEventListener("submit", (e) => e.preventDefault());
  sharePanel.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    showSharePanel(false);
    shareToggle.focus();
  });

  // -- chat export (the owner's side; terminal_server/chat_export.py) -------------------
  const exportPanel = document.getElementById("export-panel");
  const exportToggle = document.getElementById("export");
  const exportStatus = document.getElementById("export-status");
  const EXPORTS = { markdown: "md", json: "json" };

  function showExportPanel(show) {
    if (show) closePanelsBut(exportPanel);
    exportPanel.hidden = !show;
    exportToggle.setAttribute("aria-expanded", String(show));
    exportStatus.textContent = "";
    if (show) document.getElementById("export-markdown").focus();
  }

  async function downloadChat(format) {
    if (!sessionId) return;
    exportStatus.textContent = "";
    let response;
    try {
      response = await fetch(
        `api/chat?session=${encodeURIComponent(sessionId)}&format=${format}`,
        { cache: "no-store", credentials: "same-origin" });
    } catch (_) {
      exportStatus.textContent = "The server cannot be reached.";
      return;
    }
    if (!response.ok) {
      exportStatus.textContent = response.status === 404
        ? "No chat conversation in this session yet." : `Export failed (${response.status}).`;
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `chat-${sessionId}.${EXPORTS[format]}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    showExportPanel(false);
    exportToggle.focus();
  }

  exportToggle.addEventListener("click", () => showExportPanel(exportPanel.hidden));
  document.getElementById("export-markdown").addEventListener("click", () => downloadChat("markdown"));
  document.getElementById("export-json").addEventListener("click", () => downloadChat("json"));
  exportPanel.addEventListener("submit", (e) => e.preventDefault());
  exportPanel.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    showExportPanel(false);
    exportToggle.focus();
  });

  // -- overlay, settings, controls ------------------------------------------------------
  function showOverlay(text, actionLabel, action) {
    document.getElementById("overlay-text").textContent = text;
    const button = document.getElementById("overlay-action");
    button.hidden = !actionLabel;
    button.textContent = actionLabel || "";
    button.onclick = action || null;
    document.getElementById("overlay").hidden = false;
    if (actionLabel) button.focus();  // keyboard users land on the only thing they can do
  }

  function hideOverlay() {
    document.getElementById("overlay").hidden = true;
    term.focus();
  }

  function setUrlParam(name, value) {
    const url = new URL(location.href);
    if (value === null || value === undefined) url.searchParams.delete(name);
    else url.searchParams.set(name, value);
    history.replaceState(null, "", url);
  }

  function applyTheme() {
    term.options.theme = THEMES[settings.theme];
    term.options.fontSize = settings.fontSize;
    document.body.classList.toggle("light", settings.theme === "light");
  }

  const fontInput = document.getElementById("font-size");
  const themeSelect = document.getElementById("theme");
  const screenReaderBox = document.getElementById("screen-reader");
  fontInput.value = String(settings.fontSize);
  themeSelect.value = settings.theme;
  screenReaderBox.checked = settings.screenReader;
  fontInput.addEventListener("change", () => {
    settings.fontSize = clampInt(fontInput.value, 6, 48, settings.fontSize);
    fontInput.value = String(settings.fontSize);
    setUrlParam("fontSize", String(settings.fontSize));
    applyTheme();
    fit.fit();
  });
  themeSelect.addEventListener("change", () => {
    settings.theme = THEMES[themeSelect.value] ? themeSelect.value : "dark";
    setUrlParam("theme", settings.theme);
    applyTheme();
  });
  const clipboardBox = document.getElementById("clipboard-writes");
  clipboardBox.checked = settings.clipboardWrites;
  function setClipboardWrites(on) {
    settings.clipboardWrites = on;
    clipboardBox.checked = on;
    setUrlParam("clipboardWrites", on ? null : "0");
  }
  clipboardBox.addEventListener("change", () => setClipboardWrites(clipboardBox.checked));
  document.getElementById("notice-off").addEventListener("click", () => {
    setClipboardWrites(false);
    notice.hidden = true;
    term.focus();
  });
  screenReaderBox.addEventListener("change", () => {
    // xterm.js then mirrors the rows into an accessibility tree and announces new output.
    settings.screenReader = screenReaderBox.checked;
    setUrlParam("screenReader", settings.screenReader ? "1" : null);
    term.options.screenReaderMode = settings.screenReader;
  });
  const settingsPanel = document.getElementById("settings");
  const settingsToggle = document.getElementById("settings-toggle");
  function showSettings(show) {
    if (show) closePanelsBut(settingsPanel);
    settingsPanel.hidden = !show;
    settingsToggle.setAttribute("aria-expanded", String(show));
    if (show) fontInput.focus();
  }
  settingsPanel.addEventListener("submit", (e) => e.preventDefault());
  settingsPanel.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    showSettings(false);
    settingsToggle.focus();
  });
  settingsToggle.addEventListener("click", () => showSettings(settingsPanel.hidden));
  document.getElementById("restart").addEventListener("click", () => {
    if (!window.confirm("End this session (chat, shell and everything running in it) and start a new one?")) return;
    restartRequested = true;
    const old = ws;
    ws = null;  // its close event is ours, not a dropped connection
    if (old) old.close();
    clearTimeout(reconnectTimer);
    connect();
  });
  // -- login modes (--auth pam|oidc): the CSRF token the server put in the page, logout ---
  function csrfHeaders() {
    const meta = document.querySelector('meta[name="mixvllm-csrf"]');
    return meta ? { "X-CSRF-Token": meta.content } : {};
  }
  const logoutButton = document.getElementById("logout");
  const loginUser = document.querySelector('meta[name="mixvllm-user"]');
  if (loginUser) {
    logoutButton.hidden = false;
    logoutButton.title = `Log out ${loginUser.content} (your sessions keep running)`;
    logoutButton.addEventListener("click", async () => {
      leaving = true;  // the server closes this login's sockets: no reconnecting, no probe
      try {
        await fetch("logout", { method: "POST", credentials: "same-origin", headers: csrfHeaders() });
      } finally {
        location.href = "login";
      }
    });
  }
  document.getElementById("new-session").addEventListener("click", () => {
    const url = new URL(location.href);
    url.searchParams.delete("session");
    window.open(url.toString(), "_blank", "noopener");
  });

  // -- input, clipboard, resize ---------------------------------------------------------
  term.onData((data) => send([MSG.STDIN, data]));
  term.onResize(({ rows, cols }) => { if (!applyingSize) send([MSG.SET_SIZE, rows, cols]); });

  function applyServerSize(rows, cols) {
    if (asked && asked.rows === rows && asked.cols === cols) asked = null;  // none in flight
    applyingSize = true;  // the server has it already: no set_size back
    try { term.resize(cols, rows); } finally { applyingSize = false; }
  }

  // Fit the terminal to the window: at once, or (with a server that confirms sizes) by
  // asking the server and resizing when its answer arrives behind the output before it.
  function fitToWindow() {
    if (!sizesEchoed || !ws || ws.readyState !== WebSocket.OPEN) { fit.fit(); return; }
    const dims = fit.proposeDimensions();
    if (!dims || !(dims.cols > 0 && dims.rows > 0)) return;
    const want = asked || { rows: term.rows, cols: term.cols };
    if (dims.rows === want.rows && dims.cols === want.cols) return;
    asked = { rows: dims.rows, cols: dims.cols };
    send([MSG.SET_SIZE, dims.rows, dims.cols]);
  }
  term.onTitleChange((title) => {
    const where = VIEWER ? "view-only" : sessionId;
    document.title = title ? `${title} · ${where}` : `mixvllm · ${where}`;
  });
  term.onSelectionChange(() => {
    const text = term.getSelection();
    if (text && navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  });
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === "KeyC") {
      const text = term.getSelection();
      if (text && navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
      return false;
    }
    if (e.code === "KeyV") {
      if (navigator.clipboard && navigator.clipboard.readText) {
        navigator.clipboard.readText().then((t) => term.paste(t)).catch(() => {});
      }
      return false;
    }
    return true;
  });
  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (VIEWER) return;  // the owner's size rules
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(fitToWindow);
  });

  function clampInt(value, lo, hi, fallback) {
    const n = Number.parseInt(value, 10);
    return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
  }

  // -- model-server status bar (fed by the terminal server's poller; never blocks the terminal)
  const STATUS_POLL_MS = 3000;
  const statusBar = document.getElementById("statusbar");

  function formatAge(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  function renderStatus(st) {
    const parts = [`model server: ${st.state}`];
    if (st.state !== "ready" && st.detail) parts[0] += ` (${st.detail})`;
    if (st.for_seconds !== null) parts[0] += ` for ${formatAge(st.for_seconds)}`;
    if (st.model) parts.push(st.model);
    // Behind vLLM's router (docs/deployment-replicas.md): its model servers passing health checks.
    if (st.replicas !== null && st.replicas !== undefined) {
      parts.push(`${st.replicas_up}/${st.replicas} replicas up`);
    }
    if (st.running !== null) parts.push(`${st.running} running`);
    if (st.waiting !== null) parts.push(`${st.waiting} waiting`);
    if (st.kv_cache_usage !== null) parts.push(`KV cache ${Math.round(st.kv_cache_usage * 100)}%`);
    statusBar.textContent = parts.join(" \u00b7 ");
    statusBar.dataset.state = st.state;
    statusBar.title = st.url;
    statusBar.hidden = false;  // the bar's row is there from the start: no refit
  }

  async function pollStatus() {
    if (!document.hidden) {
      try {
        const response = await fetch("api/status", { cache: "no-store", credentials: "same-origin" });
        if (response.ok) renderStatus(await response.json());
      } catch (_) {
        // The terminal server itself is away: the connection overlay already says so.
      }
    }
    setTimeout(pollStatus, STATUS_POLL_MS);
  }
  if (VIEWER) {
    statusBar.textContent = "view-only: watching a shared session";
    statusBar.hidden = false;
  } else {
    pollStatus();
  }

  // -- files: drop to upload, links to download (terminal_server/file_handlers.py) -------
  // A dropped file goes into the folder of the session's foreground program; chat, if it
  // runs, says so. A download link names a ticket chat wrote for `/download PATH`: a program
  // that prints the sequence can only name tickets chat made, and only a click downloads.
  const filesBox = document.getElementById("files");
  const MAX_FILE_ROWS = 5;

  function fileRow(content) {
    const row = document.createElement("div");
    row.append(content);
    filesBox.append(row);
    while (filesBox.children.length > MAX_FILE_ROWS) filesBox.firstElementChild.remove();
    filesBox.hidden = false;
    return row;
  }

  function offerDownload(ticket, name) {
    if (!sessionId || !/^[A-Za-z0-9_-]{16,64}$/.test(ticket || "")) return;
    const link = document.createElement("a");
    const q = new URLSearchParams({ session: sessionId, ticket });
    link.href = `api/download?${q}`;
    link.download = name || "download";
    link.textContent = `\u2b07 ${name || "download"}`;
    link.className = "download";
    fileRow(link);
  }

  async function upload(file) {
    const row = fileRow(`uploading ${file.name}\u2026`);
    const q = new URLSearchParams({ session: sessionId, name: file.name });
    try {
      const response = await fetch(`api/upload?${q}`, {
        method: "POST", body: file, cache: "no-store", credentials: "same-origin",
        headers: { "Content-Type": "application/octet-stream" },
      });
      const text = await response.text();
      row.textContent = response.ok
        ? `dropped ${JSON.parse(text).name} (${file.size} bytes)`
        : `${file.name}: ${text.trim() || response.status}`;
    } catch (_) {
      row.textContent = `${file.name}: the server cannot be reached`;
    }
  }

  const dropZone = document.getElementById("terminal");
  dropZone.addEventListener("dragover", (e) => {
    if (VIEWER || !e.dataTransfer || !Array.from(e.dataTransfer.types).includes("Files")) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  dropZone.addEventListener("drop", (e) => {
    if (VIEWER || !e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    if (sessionId) for (const file of e.dataTransfer.files) upload(file);
  });

  // A small handle for debugging from the console (and for the browser test).
  window.mixvllm = {
    term,
    get sessionId() { return sessionId; },
    // Open and attached: sessionId is the server's, not the address's (a guessed or gone id).
    get connected() { return ws !== null && ws.readyState === WebSocket.OPEN && attached; },
    get viewer() { return VIEWER; },
    get copyButtons() { return copyBlocks.size; },
  };
  connect();
})();
