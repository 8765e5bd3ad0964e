// mixvllm admin page: polls api/admin/state and draws it; ends sessions and revokes shares.
// Every name and id from the server goes in as text (textContent), never as markup.
"use strict";

(function () {
  const POLL_MS = 3000;
  const CONFIRM_MS = 4000;  // a destructive button asks again, once, for this long
  const status = document.getElementById("status");
  const csrf = document.querySelector('meta[name="mixvllm-csrf"]');
  let armedButtons = 0;  // while one asks "end?", the table is not redrawn under the pointer
  let heldUntil = 0;  // an action's outcome stays on the status line this long

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function bytes(n) {
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KiB";
    if (n < 1024 * 1024 * 1024) return (n / (1024 * 1024)).toFixed(1) + " MiB";
    return (n / (1024 * 1024 * 1024)).toFixed(2) + " GiB";
  }

  function count(n) { return n === null || n === undefined ? "–" : n.toLocaleString("en"); }

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function setStatus(text, state, hold) {
    if (!hold && Date.now() < heldUntil) return;
    if (hold) heldUntil = Date.now() + CONFIRM_MS;
    status.textContent = text;
    status.dataset.state = state || "";
  }

  function action(label, name, query, row) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.action = name;
    let armed = null;
    button.addEventListener("click", async () => {
      if (armed === null) {  // the first click only arms it
        button.textContent = label + "?";
        armedButtons += 1;
        armed = setTimeout(() => {
          armed = null;
          armedButtons -= 1;
          button.textContent = label;
        }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      armed = null;
      armedButtons -= 1;
      button.disabled = true;
      const headers = csrf ? { "X-CSRF-Token": csrf.content } : {};
      try {
        const resp = await fetch("api/admin/" + name + "?" + new URLSearchParams(query),
                                 { method: "POST", headers, credentials: "same-origin" });
        if (!resp.ok) throw new Error("the server answered " + resp.status);
        setStatus(label + ": done", "", true);
      } catch (err) {
        setStatus(label + " failed: " + err.message, "error", true);
      }
      refresh();
    });
    row.appendChild(button);
  }

  function drawUsers(users) {
    const body = document.querySelector("#users tbody");
    body.replaceChildren();
    for (const u of users) {
      const row = body.insertRow();
      cell(row, u.name);
      cell(row, u.logins ? String(u.logins) : "–", "num");
      cell(row, String(u.sessions), "num");
      cell(row, u.cpu_s.toFixed(1) + " s", "num");
      cell(row, bytes(u.rss_bytes), "num");
      const t = u.tokens;
      cell(row, t ? count(t.prompt_today + t.completion_today) : "–", "num");
      cell(row, t ? count(t.prompt_total + t.completion_total) : "–", "num");
      cell(row, t ? count(t.requests) : "–", "num");
      cell(row, t && t.quota ? count(t.quota) : "–", "num");
      const actions = row.insertCell();
      if (u.logins) action("log out", "logout", { user: u.name }, actions);
    }
  }

  function drawSessions(sessions) {
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    document.getElementById("no-sessions").hidden = sessions.length > 0;
    for (const s of sessions) {
      const row = body.insertRow();
      row.dataset.session = s.id;
      cell(row, s.user);
      cell(row, s.id, "id");
      cell(row, duration(s.age_s), "num");
      cell(row, duration(s.idle_s), "num");
      cell(row, s.attached ? "open" : "detached");
      cell(row, String(s.processes), "num");
      cell(row, s.cpu_s.toFixed(1) + " s", "num");
      cell(row, bytes(s.rss_bytes), "num");
      cell(row, s.shared ? s.viewers + " watching" : "–", s.shared ? "shared" : "");
      const actions = row.insertCell();
      action("end", "end", { session: s.id }, actions);
      if (s.shared) action("revoke share", "revoke", { session: s.id }, actions);
    }
  }

  async function refresh() {
    try {
      const resp = await fetch("api/admin/state", { credentials: "same-origin" });
      if (!resp.ok) throw new Error("the server answered " + resp.status);
      const state = await resp.json();
      if (!armedButtons) {
        drawUsers(state.users);
        drawSessions(state.sessions);
      }
      document.getElementById("usage-note").hidden = state.usage_counted;
      setStatus("signed in as " + state.you + " · " + state.sessions.length + " sessions");
    } catch (err) {
      setStatus("cannot load the state: " + err.message, "error");
    }
  }

  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
})();
