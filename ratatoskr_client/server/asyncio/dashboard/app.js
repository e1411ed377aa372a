// The relay's dashboard: plain JavaScript, no build step, nothing from elsewhere.
// The admin token lives in this tab's sessionStorage and goes out as an
// Authorization header (a "#token=..." fragment, which browsers never send
// to a server, is moved there and removed from the address bar). Updates
// arrive pushed on one Server-Sent Events stream, read with fetch() so the
// token can be a header; the relay coalesces them (a few per second at most).
"use strict";

const KEY = "ratatoskr-admin-token";
const $ = (id) => document.getElementById(id);
let controller = null;
let retry = 0;
let latest = null;
const gone = new Set(); // peers disconnected from this tab, until the relay confirms
const boards = new Map(); // document id -> {canvas, cursors: Map(peer -> {x, y, tx, ty})}

function token() { return sessionStorage.getItem(KEY); }

function takeFragmentToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function showLogin(message) {
  if (controller) controller.abort();
  $("app").hidden = true;
  $("stats").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("stats").hidden = false;
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("The relay refused the token.");
    throw new Error("unauthorized");
  }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.message || answer.error || response.status);
  return answer;
}

async function stream() {
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  setStatus("connecting", "connecting");
  let response;
  try {
    response = await fetch("/admin/api/stream", {
      headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" },
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (!signal.aborted) again();
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("The relay refused the token.");
    return;
  }
  if (!response.ok || !response.body) {
    setStatus("error", "error " + response.status);
    again();
    return;
  }
  showApp();
  setStatus("live", "live");
  retry = 0;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (err) {
    if (signal.aborted) return;
  }
  if (!signal.aborted) again();
}

function again() {
  setStatus("error", "reconnecting");
  retry = Math.min(retry + 1, 5);
  setTimeout(stream, 500 * 2 ** retry);
}

function hue(id) {
  let h = 0x811c9dc5; // FNV-1a: neighbouring ids get far-apart colours
  for (const c of id) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h % 360;
}
const color = (id) => `hsl(${hue(id)} 70% 45%)`;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

function ago(epoch) {
  if (!epoch) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - epoch));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

const label = (p) => p.chosenName || p.name || p.peerId;

function render(snapshot) {
  latest = snapshot;
  $("stat-peers").textContent = snapshot.peerCount;
  $("stat-documents").textContent = snapshot.documentCount;
  $("stat-rate").textContent = snapshot.rate;

  const nodes = $("nodes");
  nodes.replaceChildren(...snapshot.nodes.map((n) =>
    el("div", { class: "node" + (n.self ? " self" : ""), "data-node": n.node },
      el("code", {}, n.node), el("span", { class: "muted" }, `${n.peers} peers${n.self ? " · this relay" : ""}`))));
  nodes.hidden = snapshot.nodes.length < 2;

  renderDocuments(snapshot);
  renderPeers(snapshot);
}

function renderDocuments(snapshot) {
  const sidecars = $("show-sidecars").checked;
  const docs = snapshot.documents.filter((d) => sidecars || !d.id.startsWith("eph:"));
  $("no-documents").hidden = docs.length > 0;
  const container = $("documents");
  const seen = new Set();
  for (const doc of docs) {
    seen.add(doc.id);
    let board = boards.get(doc.id);
    if (!board) {
      const canvas = el("canvas", { width: 560, height: 280, "data-cursors": "{}" });
      canvas.setAttribute("aria-label", "cursors in " + doc.id);
      const card = el("article", { class: "card doc", "data-doc": doc.id },
        el("header", {}, el("h3", {}, doc.id), el("span", { class: "muted count" })),
        canvas, el("div", { class: "chips" }));
      board = { card, canvas, cursors: new Map() };
      boards.set(doc.id, board);
    }
    container.append(board.card); // (in the snapshot's order: the busiest first)
    board.card.querySelector(".count").textContent =
      `${doc.count} peer${doc.count === 1 ? "" : "s"} · ${doc.users} user${doc.users === 1 ? "" : "s"}`;
    const present = new Set();
    const chips = [];
    for (const p of doc.peers) {
      present.add(p.peerId);
      chips.push(el("span", { class: "chip", "data-peer": p.peerId, title: `${p.user} · ${p.node}` },
        el("span", { class: "dot" }), label(p), el("span", { class: "muted" }, ago(p.since))));
      chips[chips.length - 1].firstChild.style.background = color(p.peerId);
      if (p.cursor) {
        const [x, y] = p.cursor;
        const c = board.cursors.get(p.peerId);
        if (c) { c.tx = x; c.ty = y; c.name = label(p); }
        else board.cursors.set(p.peerId, { x, y, tx: x, ty: y, name: label(p) });
      }
    }
    for (const id of [...board.cursors.keys()]) if (!present.has(id)) board.cursors.delete(id);
    board.card.querySelector(".chips").replaceChildren(...chips);
    const targets = {};
    for (const [id, c] of board.cursors) targets[id] = [c.tx, c.ty];
    board.canvas.dataset.cursors = JSON.stringify(targets);
  }
  for (const [id, board] of boards) {
    if (!seen.has(id)) { board.card.remove(); boards.delete(id); }
  }
}

const rows = new Map(); // peer id -> its row, kept across snapshots (stable buttons)

function peerRow(p) {
  let row = rows.get(p.peerId);
  if (!row) {
    const button = el("button", { class: "danger", type: "button", "data-action": "disconnect", "data-peer": p.peerId }, "Disconnect");
    button.title = "Disconnect this connection; it is told not to reconnect";
    row = el("tr", { "data-peer": p.peerId }, el("td"), el("td"), el("td", { class: "docs" }), el("td", {}, button));
    rows.set(p.peerId, row);
  }
  const [who, user, docs] = row.children;
  const dot = el("span", { class: "dot" });
  dot.style.background = color(p.peerId);
  who.replaceChildren(dot, " ", label(p), el("span", { class: "sub" }, p.peerId));
  user.replaceChildren(p.anonymous ? "anonymous" : p.userId, el("span", { class: "sub" }, p.node));
  docs.textContent = p.documents.filter((d) => !d.startsWith("eph:")).join(", ") || "—";
  row.className = gone.has(p.peerId) ? "gone" : "";
  row.querySelector("button").disabled = gone.has(p.peerId);
  return row;
}

function renderPeers(snapshot) {
  const present = new Set(snapshot.peers.map((p) => p.peerId));
  for (const [id, row] of rows) if (!present.has(id)) { row.remove(); rows.delete(id); }
  const body = $("peers");
  snapshot.peers.forEach((p, i) => {
    const row = peerRow(p);
    if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
  });
  $("no-peers").hidden = snapshot.peers.length > 0;
  const hidden = snapshot.peerCount - snapshot.peers.length;
  $("peer-count").textContent = snapshot.peerCount + (hidden > 0 ? ` (${hidden} not shown)` : "");
  for (const id of [...gone]) if (!present.has(id)) gone.delete(id);
}

async function disconnect(peerId, button) {
  button.disabled = true;
  gone.add(peerId);
  try {
    await api("POST", "/admin/api/disconnect", { peerId, reason: "disconnected from the dashboard" });
    $("notice").textContent = `Disconnected ${peerId}.`;
  } catch (err) {
    gone.delete(peerId);
    button.disabled = false;
    $("notice").textContent = `Could not disconnect ${peerId}: ${err.message}`;
  }
}

function draw() {
  for (const board of boards.values()) {
    const canvas = board.canvas;
    const rect = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * ratio));
    const h = Math.max(1, Math.round(rect.height * ratio));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    // The demo's bots move in 80 x 40; larger coordinates widen the board.
    let maxX = 80, maxY = 40;
    for (const c of board.cursors.values()) { maxX = Math.max(maxX, c.tx); maxY = Math.max(maxY, c.ty); }
    const pad = 14 * ratio;
    const sx = (w - 2 * pad) / maxX, sy = (h - 2 * pad) / maxY;
    ctx.strokeStyle = "#eaeef2";
    ctx.lineWidth = 1;
    for (let i = 1; i < 4; i++) {
      ctx.beginPath(); ctx.moveTo((w * i) / 4, 0); ctx.lineTo((w * i) / 4, h); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(0, (h * i) / 4); ctx.lineTo(w, (h * i) / 4); ctx.stroke();
    }
    ctx.font = `${12 * ratio}px system-ui, sans-serif`;
    for (const [id, c] of board.cursors) {
      c.x += (c.tx - c.x) * 0.25;
      c.y += (c.ty - c.y) * 0.25;
      const x = pad + c.x * sx, y = pad + c.y * sy;
      ctx.fillStyle = color(id);
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x + 4 * ratio, y + 14 * ratio);
      ctx.lineTo(x + 7 * ratio, y + 8 * ratio);
      ctx.lineTo(x + 13 * ratio, y + 6 * ratio);
      ctx.closePath();
      ctx.fill();
      const text = c.name;
      const tw = ctx.measureText(text).width + 8 * ratio;
      // The label goes right of and below the arrow, or left / above it
      // where the board ends.
      const lx = x + 10 * ratio + tw <= w ? x + 10 * ratio : x - tw - 2 * ratio;
      const ly = y + 29 * ratio <= h ? y + 12 * ratio : y - 19 * ratio;
      ctx.fillRect(lx, ly, tw, 17 * ratio);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, lx + 4 * ratio, ly + 13 * ratio);
    }
  }
  requestAnimationFrame(draw);
}

document.addEventListener("DOMContentLoaded", () => {
  takeFragmentToken();
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    stream();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });
  $("show-sidecars").addEventListener("change", () => latest && render(latest));
  $("peers").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action=disconnect]");
    if (button) disconnect(button.dataset.peer, button);
  });
  window.addEventListener("hashchange", () => {
    const before = token();
    takeFragmentToken();
    if (token() && token() !== before) stream();
  });
  requestAnimationFrame(draw);
  if (token()) stream(); else showLogin("");
});
