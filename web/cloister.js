// Cloister's page: xterm.js 5 on ttyd's protocol (/token, then /ws with subprotocol "tty"),
// plus Cloister's sessions: the page counts the output bytes it has been given, so after a
// dropped connection it resumes its session at exactly that offset and the screen goes on
// where it was, and what was typed is kept until the server says how much of it reached the
// terminal (session.js). This module wires the terminal, the socket and the page's parts.
import { Send, Receive, InputStream, inputMessage, joinedSession, remembered, hello, attachedSession, shareLink,
  reconnectDelay, closing, webSocketQuery, routeCookie } from "./session.js";
import { chooseRenderer, probeWebgl } from "./renderer.js";
import { openLink } from "./links.js";
import { osc52Text } from "./clipboard.js";
import { Modifiers, mountKeyBar, showModifiers, withModifiers } from "./keybar.js";
import { mountSearch } from "./search.js";
import { createTransfer } from "./transfer.js";

// xterm.js options a server may set through ttyd's preferences message (ttyd's -t).
const terminalOptions = ["fontSize", "fontFamily", "fontWeight", "fontWeightBold", "lineHeight", "letterSpacing",
  "theme", "cursorStyle", "cursorBlink", "scrollback", "macOptionIsMeta", "rightClickSelectsWord", "minimumContrastRatio",
  "drawBoldTextInBrightColors", "cursorInactiveStyle", "smoothScrollDuration", "wordSeparator"];
const storageKey = "cloister.session";

const encoder = new TextEncoder();
const stateLabel = document.getElementById("state");
const shareToggle = document.getElementById("share-toggle");
const sharePanel = document.getElementById("share");
const terminalElement = document.getElementById("terminal");

const term = new Terminal({
  cursorBlink: true, fontSize: 15, fontFamily: "DejaVu Sans Mono, Noto Color Emoji, Noto Sans Mono CJK SC, monospace",
  scrollback: 5000, allowProposedApi: true,
  // OSC 8 hyperlinks: opened as plain URLs are (links.js), never a script or a file.
  linkHandler: { activate: (event, text) => openLink(window.open.bind(window), text) },
});
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
// The renderer is chosen before the terminal opens, so that xterm.js's DOM renderer, which
// writes its styles into inline <style> elements the page's policy forbids, never starts.
let renderer = null;
useRenderer(null);
term.open(terminalElement);
// Emoji and CJK are two cells wide, as the shell and every full-screen program count them.
term.loadAddon(new Unicode11Addon.Unicode11Addon());
term.unicode.activeVersion = "11";
term.loadAddon(new WebLinksAddon.WebLinksAddon((event, uri) => openLink(window.open.bind(window), uri)));
// Sixel and the iTerm image protocol.
term.loadAddon(new ImageAddon.ImageAddon());
const searchAddon = new SearchAddon.SearchAddon();
term.loadAddon(searchAddon);
fit.fit();
term.focus();

// The session this page shows: from a shared link (the fragment), else from this tab's
// earlier load, else a new one the server creates on the first connection.
const joined = joinedSession(location.hash, savedSession());
let session = joined.session;
// Out of the address bar and the history: the fragment holds a secret.
if (joined.fromLink) history.replaceState(null, "", location.pathname + location.search);
let decoder = new TextDecoder();
let socket = null;
// Input is sent only while attached: what is typed before the server says how much it has
// goes with the resume.
let isAttached = false;
const input = new InputStream(randomName());
let attempts = 0;
let ended = false;

function savedSession() {
  try {
    return JSON.parse(sessionStorage.getItem(storageKey) || "null");
  } catch (e) {
    return null;  // no storage, or not ours: start a new session
  }
}

// WebGL or canvas (renderer.js); a WebGL context the browser takes back (a GPU reset, too
// many contexts) falls back to canvas.
function useRenderer(preference) {
  const chosen = chooseRenderer(preference, preference === "canvas" ? { webgl2: false } : probeWebgl(document));
  if (renderer) renderer.addon.dispose();
  renderer = null;
  try {
    if (chosen === "webgl") {
      const addon = new WebglAddon.WebglAddon();
      addon.onContextLoss(() => useRenderer("canvas"));
      term.loadAddon(addon);
      renderer = { name: "webgl", addon };
    } else if (chosen === "canvas") {
      const addon = new CanvasAddon.CanvasAddon();
      term.loadAddon(addon);
      renderer = { name: "canvas", addon };
    }
  } catch (error) {
    console.warn("renderer " + chosen + " unavailable: " + error.message);
    if (chosen === "webgl") return useRenderer("canvas");
  }
  document.body.dataset.renderer = renderer ? renderer.name : "none";
}

// The directory the page is served from (the server's --base-path, and "/").
function basePath() {
  return location.pathname.replace(/[^/]*$/, "") || "/";
}

function showState(state, text) {
  document.body.dataset.state = state;
  stateLabel.textContent = text;
}

function randomName() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").slice(0, 31);
}

function isOpen() {
  return isAttached && socket && socket.readyState === WebSocket.OPEN;
}

function typed(bytes) {
  input.typed(bytes);
  if (isOpen()) socket.send(inputMessage(bytes));
}

function sendResize() {
  if (isOpen() && !session.readonly) socket.send(encoder.encode(Send.resize + JSON.stringify({ columns: term.cols, rows: term.rows })));
}

function connect() {
  showState(attempts ? "reconnecting" : "connecting", attempts ? "reconnecting…" : "connecting…");
  fetch("token", { credentials: "same-origin", cache: "no-store" })
    .then((response) => {
      if (response.status === 401) throw new Error("not logged in (reload to log in)");
      if (!response.ok) throw new Error("token: HTTP " + response.status);
      return response.json();
    })
    .then((body) => open(body.token || ""))
    .catch((error) => retry(error.message));
}

function open(token) {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  // The page's query goes along, as with ttyd (`?arg=` values for a server run with
  // --url-arg), and the session's id for a load balancer.
  url.search = webSocketQuery(location.search, session.id);
  const ws = new WebSocket(url.href, ["tty"]);
  ws.binaryType = "arraybuffer";
  socket = ws;
  ws.onopen = () => ws.send(hello(token, { columns: term.cols, rows: term.rows }, input.name, session));
  ws.onmessage = (event) => {
    const data = new Uint8Array(event.data);
    const payload = data.subarray(1);
    switch (String.fromCharCode(data[0])) {
      case Receive.output:
        session.offset += payload.length;
        term.write(decoder.decode(transfer.output(payload), { stream: true }));
        break;
      case Receive.title:
        document.title = new TextDecoder().decode(payload);
        break;
      case Receive.preferences:
        applyPreferences(JSON.parse(new TextDecoder().decode(payload) || "{}"));
        break;
      case Receive.sessionInfo:
        attached(JSON.parse(new TextDecoder().decode(payload)));
        break;
    }
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    socket = null;
    isAttached = false;
    const { retry: again, text } = closing(event.code, event.reason);
    if (again) retry(text); else end(text);
  };
}

function attached(info) {
  if (info.skipped > 0) {
    // A file transfer cannot go on over a gap in its stream: it is cancelled, and says so.
    transfer.interrupted(info.skipped + " bytes of output were lost while reconnecting");
    // A gap in the stream: a character cut at its edge must not join the next one.
    decoder = new TextDecoder();
    term.write("\r\n\x1b[7m[" + info.skipped + " bytes of output skipped]\x1b[0m\r\n");
  }
  session = attachedSession(session, info);
  window.cloister.session = session;
  attempts = 0;
  isAttached = true;
  if (typeof info.input_offset === "number" && !info.lagged) {
    // What the terminal has is let go; the rest goes again, before anything typed later.
    input.acknowledge(info.input_offset);
    if (input.length > 0 && !session.readonly) socket.send(inputMessage(input.pending()));
  }
  try {
    sessionStorage.setItem(storageKey, JSON.stringify(remembered(session)));
  } catch (e) { /* storage refused: a reload starts a new session */ }
  document.cookie = routeCookie(session.id, basePath(), location.protocol === "https:");
  showState(session.readonly ? "readonly" : "connected", session.readonly ? "read-only" : "connected");
  shareToggle.disabled = false;
  updateShareLinks();
  sendResize();
}

function end(reason) {
  ended = true;
  try { sessionStorage.removeItem(storageKey); } catch (e) { /* nothing stored */ }
  document.cookie = routeCookie(null, basePath(), location.protocol === "https:");
  showState("ended", "ended: " + reason);
  shareToggle.disabled = true;
  sharePanel.hidden = true;
}

function retry(reason) {
  if (ended) return;
  const delay = reconnectDelay(attempts, Math.random());
  attempts += 1;
  showState("reconnecting", reason + " — reconnecting in " + Math.ceil(delay / 1000) + " s (attempt " + attempts + ")");
  setTimeout(connect, delay);
}

function applyPreferences(preferences) {
  for (const key of terminalOptions) {
    if (!Object.prototype.hasOwnProperty.call(preferences, key)) continue;
    try {
      term.options[key] = preferences[key];
    } catch (error) {
      // An option this xterm.js does not take: the others still apply.
      console.warn("preference " + key + " not applied: " + error.message);
    }
  }
  // ttyd's rendererType: "webgl" or "canvas" ("dom" is canvas here: see renderer.js).
  if (typeof preferences.rendererType === "string") useRenderer(preferences.rendererType);
  fit.fit();
}

function updateShareLinks() {
  document.getElementById("share-writer-row").hidden = session.readonly;
  document.getElementById("share-writer").value = session.readonly ? "" : shareLink(location.href, session, session.secret, false);
  document.getElementById("share-reader").value = shareLink(location.href, session, session.readSecret || session.secret, true);
}

shareToggle.addEventListener("click", () => {
  sharePanel.hidden = !sharePanel.hidden;
  shareToggle.setAttribute("aria-expanded", String(!sharePanel.hidden));
  if (sharePanel.hidden) term.focus();
});
for (const field of sharePanel.querySelectorAll("input")) field.addEventListener("focus", () => field.select());

// trz, tsz, rz and sz in the shell (transfer.js): the protocols never reach the screen, the
// page's answers go as input.
const transfer = createTransfer({
  write: (bytes) => term.write(decoder.decode(bytes, { stream: true })),
  send: (bytes) => { if (!session.readonly) typed(bytes); },
  readonly: () => session.readonly,
  focus: () => term.focus(),
});
terminalElement.addEventListener("dragover", (event) => event.preventDefault());
terminalElement.addEventListener("drop", (event) => {
  event.preventDefault();
  transfer.drop(Array.from(event.dataTransfer.files));
});

// OSC 52 from a program (clipboard.js): the clipboard is set, never read.
term.parser.registerOscHandler(52, (data) => {
  const text = osc52Text(data);
  if (text !== null && navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  return true;
});

// The key bar, on touch screens (keybar.js): its modifiers apply to the next key typed too.
const modifiers = new Modifiers();
const keyBar = document.getElementById("keys");
if (matchMedia("(pointer: coarse)").matches) {
  mountKeyBar(keyBar, modifiers, {
    send: (text) => { if (!session.readonly) typed(encoder.encode(text)); },
    applicationCursor: () => term.modes.applicationCursorKeysMode,
    focus: () => term.focus(),
  });
  document.body.dataset.keys = "shown";
  fit.fit();
}

term.onData((data) => {
  if (transfer.key(data)) return;
  if (session.readonly) return;
  const held = modifiers.held;
  if (held.ctrl || held.alt) {
    data = withModifiers(data, held);
    modifiers.used();
    showModifiers(keyBar, modifiers);
  }
  typed(encoder.encode(data));
});
term.onResize(() => sendResize());

const search = mountSearch(document.getElementById("search"), searchAddon, () => term.focus());
// Ctrl+Shift+C copies, Ctrl+Shift+V pastes (bracketed when the program asked for it),
// Ctrl+Shift+F searches; Ctrl+C and Ctrl+V stay the terminal's.
term.attachCustomKeyEventHandler((event) => {
  if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
  if (event.code === "KeyC" && term.hasSelection()) {
    navigator.clipboard.writeText(term.getSelection()).catch(() => document.execCommand("copy"));
    return false;
  }
  if (event.code === "KeyV" && navigator.clipboard && navigator.clipboard.readText) {
    navigator.clipboard.readText().then((text) => { if (!session.readonly) term.paste(text); });
    return false;
  }
  if (event.code === "KeyF") {
    search.open();
    return false;
  }
  return true;
});
window.addEventListener("resize", () => fit.fit());

// For whoever inspects the page (and the browser tests): the terminal, the session, the renderer.
window.cloister = { terminal: term, session, get renderer() { return renderer ? renderer.name : "none"; } };

connect();
