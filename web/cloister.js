// Cloister's page: xterm.js on ttyd's protocol (/token, then /ws with subprotocol "tty"),
// plus Cloister's sessions: the page counts the output bytes it has been given, so after a
// dropped connection it resumes its session at exactly that offset and the screen goes on
// where it was. Its input is a stream of its own too: what was typed is kept until a resume
// says how much of it reached the terminal (input_offset), and the rest is sent again, so a
// keystroke typed as a connection drops is neither lost nor doubled.
(function () {
  "use strict";

  const Input = "0", Resize = "1";
  const Output = "0", Title = "1", Preferences = "2", SessionInfo = "S";
  // xterm.js options a server may set through ttyd's preferences message (ttyd's -t).
  const terminalOptions = ["fontSize", "fontFamily", "fontWeight", "fontWeightBold", "lineHeight", "letterSpacing",
    "theme", "cursorStyle", "cursorBlink", "scrollback", "bellStyle", "macOptionIsMeta", "rightClickSelectsWord"];
  const storageKey = "cloister.session";

  const encoder = new TextEncoder();
  const stateLabel = document.getElementById("state");
  const shareToggle = document.getElementById("share-toggle");
  const sharePanel = document.getElementById("share");

  const term = new Terminal({ cursorBlink: true, fontSize: 15, fontFamily: "DejaVu Sans Mono, monospace", scrollback: 5000 });
  term.open(document.getElementById("terminal"));
  term.fit();
  term.focus();

  // The session this page shows: from a shared link (the fragment), else from this tab's
  // earlier load, else a new one the server creates on the first connection.
  const session = joinedSession();
  let decoder = new TextDecoder();
  let socket = null;
  // Input is sent only while attached: what is typed before the server says how much it has
  // goes with the resume.
  let isAttached = false;
  const input = { stream: randomName(), base: 0, pending: new Uint8Array(0) };
  // Input kept for a resume, at most.
  const inputLimit = 1 << 20;
  let attempts = 0;
  let ended = false;

  function joinedSession() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("session") && fragment.get("secret")) {
      // Out of the address bar and the history: the fragment holds a secret.
      history.replaceState(null, "", location.pathname + location.search);
      return { id: fragment.get("session"), secret: fragment.get("secret"), readSecret: null,
        readonly: fragment.get("readonly") === "1", offset: null };
    }
    try {
      const saved = JSON.parse(sessionStorage.getItem(storageKey) || "null");
      if (saved && saved.id && saved.secret) {
        return { id: saved.id, secret: saved.secret, readSecret: saved.readSecret, readonly: !!saved.readonly, offset: null };
      }
    } catch (e) { /* no storage, or not ours: start a new session */ }
    return { id: null, secret: null, readSecret: null, readonly: false, offset: null };
  }

  function showState(state, text) {
    document.body.dataset.state = state;
    stateLabel.textContent = text;
  }

  function randomName() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("").slice(0, 31);
  }

  function send(type, text) {
    if (type === Input) return typed(encoder.encode(text));
    if (isAttached && socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(type + text));
  }

  function typed(bytes) {
    const kept = new Uint8Array(input.pending.length + bytes.length);
    kept.set(input.pending);
    kept.set(bytes, input.pending.length);
    const over = Math.max(0, kept.length - inputLimit);
    input.pending = kept.subarray(over);
    input.base += over;
    if (isAttached && socket && socket.readyState === WebSocket.OPEN) sendInput(bytes);
  }

  function sendInput(bytes) {
    const message = new Uint8Array(bytes.length + 1);
    message[0] = Input.charCodeAt(0);
    message.set(bytes, 1);
    socket.send(message);
  }

  function connect() {
    showState(attempts ? "reconnecting" : "connecting", attempts ? "reconnecting…" : "connecting…");
    fetch("token", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) throw new Error("not logged in (reload to log in)");
        if (!response.ok) throw new Error("token: HTTP " + response.status);
        return response.json();
      })
      .then(function (body) { open(body.token || ""); })
      .catch(function (error) { retry(error.message); });
  }

  function open(token) {
    const url = new URL("ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    // The page's query goes along, as with ttyd: `?arg=` values for a server run with --url-arg.
    url.search = location.search;
    const ws = new WebSocket(url.href, ["tty"]);
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onopen = function () {
      const hello = { AuthToken: token, columns: term.cols, rows: term.rows, input: input.stream };
      if (session.id) {
        hello.session = session.id;
        hello.secret = session.secret;
        if (session.readonly) hello.readonly = true;
        if (session.offset !== null) hello.offset = session.offset;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (event) {
      const data = new Uint8Array(event.data);
      const payload = data.subarray(1);
      switch (String.fromCharCode(data[0])) {
        case Output:
          session.offset += payload.length;
          term.write(decoder.decode(transfer.output(payload), { stream: true }));
          break;
        case Title:
          document.title = new TextDecoder().decode(payload);
          break;
        case Preferences:
          applyPreferences(JSON.parse(new TextDecoder().decode(payload) || "{}"));
          break;
        case SessionInfo:
          attached(JSON.parse(new TextDecoder().decode(payload)));
          break;
      }
    };
    ws.onclose = function (event) {
      if (socket !== ws) return;
      socket = null;
      isAttached = false;
      closed(event);
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
    session.id = info.session;
    session.readSecret = info.read_secret;
    if (info.secret) {
      session.secret = info.secret;
    } else {
      // No writing secret: this client only watches (a read-only link, or a read-only server).
      session.readonly = true;
      session.secret = info.read_secret;
    }
    session.offset = info.offset;
    attempts = 0;
    isAttached = true;
    if (typeof info.input_offset === "number" && !info.lagged) {
      // What the terminal has is let go; the rest goes again, before anything typed later.
      const taken = Math.min(Math.max(info.input_offset - input.base, 0), input.pending.length);
      input.pending = input.pending.subarray(taken);
      input.base += taken;
      if (input.pending.length > 0 && !session.readonly) sendInput(input.pending);
    }
    try {
      sessionStorage.setItem(storageKey, JSON.stringify({ id: session.id, secret: session.secret,
        readSecret: session.readSecret, readonly: session.readonly }));
    } catch (e) { /* storage refused: a reload starts a new session */ }
    showState(session.readonly ? "readonly" : "connected", session.readonly ? "read-only" : "connected");
    shareToggle.disabled = false;
    updateShareLinks();
    if (!session.readonly) send(Resize, JSON.stringify({ columns: term.cols, rows: term.rows }));
  }

  function closed(event) {
    if (event.code === 1000) {
      // The shell exited (the reason is its status) or the operator ended this client.
      return end(event.reason || "closed");
    }
    if (event.code === 1008) {
      return end(event.reason === "authentication failed" ? "refused: " + event.reason + " (reload to log in again)"
        : "refused: " + (event.reason || "policy"));
    }
    retry(event.reason || "connection lost");
  }

  function end(reason) {
    ended = true;
    try { sessionStorage.removeItem(storageKey); } catch (e) { /* nothing stored */ }
    showState("ended", "ended: " + reason);
    shareToggle.disabled = true;
    sharePanel.hidden = true;
  }

  // Exponential backoff with jitter, so that every page of a restarted server does not come
  // back in the same instant.
  function retry(reason) {
    if (ended) return;
    const delay = Math.min(30000, 500 * Math.pow(2, attempts)) * (0.75 + Math.random() * 0.5);
    attempts += 1;
    showState("reconnecting", reason + " — reconnecting in " + Math.ceil(delay / 1000) + " s (attempt " + attempts + ")");
    setTimeout(connect, delay);
  }

  function applyPreferences(preferences) {
    for (const key of terminalOptions) {
      if (!Object.prototype.hasOwnProperty.call(preferences, key)) continue;
      try {
        term.setOption(key, preferences[key]);
      } catch (error) {
        // An option this xterm.js does not have: the others still apply.
        console.warn("preference " + key + " not applied: " + error.message);
      }
    }
    term.fit();
  }

  function shareLink(secret, readonly) {
    const base = location.href.split("#")[0];
    return base + "#session=" + encodeURIComponent(session.id) + "&secret=" + encodeURIComponent(secret) + (readonly ? "&readonly=1" : "");
  }

  function updateShareLinks() {
    const writerRow = document.getElementById("share-writer-row");
    writerRow.hidden = session.readonly;
    document.getElementById("share-writer").value = session.readonly ? "" : shareLink(session.secret, false);
    document.getElementById("share-reader").value = shareLink(session.readSecret || session.secret, true);
  }

  shareToggle.addEventListener("click", function () {
    sharePanel.hidden = !sharePanel.hidden;
    shareToggle.setAttribute("aria-expanded", String(!sharePanel.hidden));
    if (sharePanel.hidden) term.focus();
  });
  for (const input of sharePanel.querySelectorAll("input")) {
    input.addEventListener("focus", function () { input.select(); });
  }

  // trz, tsz, rz and sz in the shell (transfer.js): the protocols never reach the screen, the
  // page's answers go as input.
  const transfer = window.CloisterTransfer({
    write: function (bytes) { term.write(decoder.decode(bytes, { stream: true })); },
    send: function (bytes) { if (!session.readonly) typed(bytes); },
    readonly: function () { return session.readonly; },
    focus: function () { term.focus(); },
  });
  const terminalElement = document.getElementById("terminal");
  terminalElement.addEventListener("dragover", function (event) { event.preventDefault(); });
  terminalElement.addEventListener("drop", function (event) {
    event.preventDefault();
    transfer.drop(Array.from(event.dataTransfer.files));
  });

  term.on("data", function (data) {
    if (transfer.key(data)) return;
    if (!session.readonly) send(Input, data);
  });
  term.on("resize", function (size) {
    if (!session.readonly) send(Resize, JSON.stringify({ columns: size.cols, rows: size.rows }));
  });
  // Ctrl+Shift+C and Ctrl+Shift+V copy and paste; Ctrl+C and Ctrl+V stay the terminal's.
  term.attachCustomKeyEventHandler(function (event) {
    if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
    if (event.code === "KeyC" && term.hasSelection()) {
      navigator.clipboard.writeText(term.getSelection()).catch(function () { document.execCommand("copy"); });
      return false;
    }
    if (event.code === "KeyV" && navigator.clipboard && navigator.clipboard.readText) {
      navigator.clipboard.readText().then(function (text) { if (!session.readonly) send(Input, text); });
      return false;
    }
    return true;
  });
  window.addEventListener("resize", function () { term.fit(); });

  // For whoever inspects the page (and the browser tests): the terminal and the session.
  window.cloister = { terminal: term, session: session };

  connect();
})();
