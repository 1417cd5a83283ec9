// A session as the page keeps it, without the browser: ttyd's messages, the hello that
// attaches or resumes, the input stream's accounting, the share links and the reconnection
// delays. Everything here is pure; cloister.js wires it to the socket and the terminal.

// ttyd's message types: the first byte of each WebSocket message.
export const Send = Object.freeze({ input: "0", resize: "1" });
export const Receive = Object.freeze({ output: "0", title: "1", preferences: "2", sessionInfo: "S" });

// Input kept for a resume, at most.
export const inputLimit = 1 << 20;

// What was typed, kept until a resume says how much of it reached the terminal
// (`input_offset`, counted from the stream's start): the rest is sent again, so that a
// keystroke typed as a connection drops is neither lost nor doubled. Each keystroke is kept
// as the array it came in (no copy of what is already kept); past `limit` the oldest bytes
// are let go and counted in `base`.
export class InputStream {
  constructor(name, limit = inputLimit) {
    this.name = name;
    this.limit = limit;
    // Bytes let go before the first kept one.
    this.base = 0;
    this.length = 0;
    this.chunks = [];
    this.head = 0;
  }

  typed(bytes) {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.length += bytes.length;
    if (this.length > this.limit) this.drop(this.length - this.limit);
  }

  // The server's input_offset: what the terminal has is let go. An offset behind what was
  // already let go, or past what was typed, takes nothing or everything.
  acknowledge(offset) {
    this.drop(Math.min(Math.max(offset - this.base, 0), this.length));
  }

  // What is kept, in one array (made on a resume only).
  pending() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (let i = this.head; i < this.chunks.length; i++) {
      out.set(this.chunks[i], at);
      at += this.chunks[i].length;
    }
    return out;
  }

  drop(count) {
    this.base += count;
    this.length -= count;
    while (count > 0) {
      const first = this.chunks[this.head];
      if (first.length <= count) {
        count -= first.length;
        this.chunks[this.head++] = null;
      } else {
        this.chunks[this.head] = first.subarray(count);
        count = 0;
      }
    }
    // The array is compacted now and then, not on every keystroke.
    if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}

// One input message: the type byte, then the bytes.
export function inputMessage(bytes) {
  const message = new Uint8Array(bytes.length + 1);
  message[0] = Send.input.charCodeAt(0);
  message.set(bytes, 1);
  return message;
}

// The session a page shows: from a shared link's fragment, else from this tab's earlier
// load (`saved`, what `remembered` returned), else a new one. `fromLink` says the fragment
// held a secret, which the page then takes out of the address bar.
export function joinedSession(hash, saved) {
  const fragment = new URLSearchParams(hash.replace(/^#/, ""));
  if (fragment.get("session") && fragment.get("secret")) {
    return { fromLink: true, session: { id: fragment.get("session"), secret: fragment.get("secret"), readSecret: null,
      readonly: fragment.get("readonly") === "1", offset: null } };
  }
  if (saved && typeof saved.id === "string" && typeof saved.secret === "string" && saved.id && saved.secret) {
    return { fromLink: false, session: { id: saved.id, secret: saved.secret, readSecret: saved.readSecret || null,
      readonly: !!saved.readonly, offset: null } };
  }
  return { fromLink: false, session: { id: null, secret: null, readSecret: null, readonly: false, offset: null } };
}

// What a tab keeps of its session across reloads.
export function remembered(session) {
  return { id: session.id, secret: session.secret, readSecret: session.readSecret, readonly: session.readonly };
}

// The first message on a new connection: the credential, the size, the input stream, and
// the session to resume with the output offset the page has.
export function hello(token, size, inputName, session) {
  const message = { AuthToken: token, columns: size.columns, rows: size.rows, input: inputName };
  if (session.id) {
    message.session = session.id;
    message.secret = session.secret;
    if (session.readonly) message.readonly = true;
    if (session.offset !== null) message.offset = session.offset;
  }
  return JSON.stringify(message);
}

// The server's session message applied to the page's session: the ids, the secrets (none to
// write with: this page only watches) and the output offset.
export function attachedSession(session, info) {
  const next = { ...session, id: info.session, readSecret: info.read_secret, offset: info.offset };
  if (info.secret) {
    next.secret = info.secret;
  } else {
    next.readonly = true;
    next.secret = info.read_secret;
  }
  return next;
}

export function shareLink(href, session, secret, readonly) {
  const base = href.split("#")[0];
  return base + "#session=" + encodeURIComponent(session.id) + "&secret=" + encodeURIComponent(secret) + (readonly ? "&readonly=1" : "");
}

// Exponential backoff with jitter (`random` in [0, 1)), so that every page of a restarted
// server does not come back in the same instant: milliseconds before attempt `attempt` + 1.
export function reconnectDelay(attempt, random) {
  return Math.min(30000, 500 * Math.pow(2, attempt)) * (0.75 + random * 0.5);
}

// Why a connection closed, for the page: whether to try again, and what to say.
export function closing(code, reason) {
  if (code === 1000) return { retry: false, text: reason || "closed" };
  if (code === 1008) {
    return { retry: false, text: reason === "authentication failed" ? "refused: " + reason + " (reload to log in again)"
      : "refused: " + (reason || "policy") };
  }
  return { retry: true, text: reason || "connection lost" };
}

// The WebSocket's query: the page's own (ttyd's `?arg=` values for --url-arg) with the
// session's id, never a secret, where a load balancer can route a resume to the host that
// holds the session (deploy/haproxy-fleet.cfg).
export function webSocketQuery(search, sessionID) {
  const params = new URLSearchParams(search);
  params.delete("session");
  if (sessionID) params.set("session", sessionID);
  const text = params.toString();
  return text ? "?" + text : "";
}

// The cookie that routes the page's own requests (its files, /token) to the same host;
// nothing but the id, for this path, never sent to another site.
export function routeCookie(sessionID, path, secure) {
  const value = sessionID ? encodeURIComponent(sessionID) : "";
  return "cloister_session=" + value + "; Path=" + path + "; SameSite=Strict" + (secure ? "; Secure" : "")
    + (sessionID ? "" : "; Max-Age=0");
}
