import { test } from "node:test";
import assert from "node:assert/strict";
import { InputStream, inputMessage, joinedSession, hello, attachedSession, shareLink, reconnectDelay, closing, remembered } from "../../web/session.js";

const bytes = (text) => new TextEncoder().encode(text);
const text = (array) => new TextDecoder().decode(array);

test("typed input is kept until acknowledged, then only the rest is pending", () => {
  const input = new InputStream("s", 1024);
  for (const key of ["e", "c", "h", "o", " ", "h", "i"]) input.typed(bytes(key));
  assert.equal(text(input.pending()), "echo hi");
  input.acknowledge(5);
  assert.equal(text(input.pending()), "hi");
  assert.equal(input.base, 5);
  // An offset inside a keystroke's array cuts it; one behind what is let go takes nothing.
  input.typed(bytes("\r"));
  input.acknowledge(6);
  assert.equal(text(input.pending()), "i\r");
  input.acknowledge(2);
  assert.equal(text(input.pending()), "i\r");
  input.acknowledge(1000);
  assert.equal(input.length, 0);
  assert.equal(input.base, 8, "past what was typed: everything, and no further");
});

test("past the limit the oldest input is let go and counted", () => {
  const input = new InputStream("s", 10);
  input.typed(bytes("0123456"));
  input.typed(bytes("789abc"));
  assert.equal(text(input.pending()), "3456789abc");
  assert.equal(input.base, 3);
  input.acknowledge(5);
  assert.equal(text(input.pending()), "56789abc");
});

test("a keystroke is kept without copying what is already kept", () => {
  const input = new InputStream("s", 1 << 20);
  const first = bytes("a".repeat(1000));
  input.typed(first);
  for (let i = 0; i < 100000; i++) input.typed(bytes("x"));
  assert.equal(input.chunks[input.head], first, "the first array is the one typed, not a copy");
  input.acknowledge(1000 + 99990);
  assert.equal(text(input.pending()), "x".repeat(10));
  assert.ok(input.chunks.length - input.head <= 10);
  assert.ok(input.chunks.length < 100001, "the list is compacted as input is let go");
});

test("an input message is the type byte then the bytes", () => {
  assert.deepEqual([...inputMessage(bytes("ab"))], [0x30, 0x61, 0x62]);
});

test("a shared link's fragment wins over the saved session, and a bad saved one is ignored", () => {
  const saved = { id: "saved", secret: "s1", readSecret: "r1", readonly: false };
  const linked = joinedSession("#session=abc&secret=def&readonly=1", saved);
  assert.equal(linked.fromLink, true);
  assert.deepEqual(linked.session, { id: "abc", secret: "def", readSecret: null, readonly: true, offset: null });
  assert.equal(joinedSession("", saved).session.id, "saved");
  assert.equal(joinedSession("#session=abc", saved).session.id, "saved", "no secret: not a link");
  assert.equal(joinedSession("", { id: 3, secret: "x" }).session.id, null);
  assert.equal(joinedSession("", null).session.id, null);
  assert.deepEqual(remembered(linked.session), { id: "abc", secret: "def", readSecret: null, readonly: true });
});

test("the hello resumes at the page's offset", () => {
  assert.deepEqual(JSON.parse(hello("tok", { columns: 80, rows: 24 }, "in", { id: null, offset: null })),
    { AuthToken: "tok", columns: 80, rows: 24, input: "in" });
  assert.deepEqual(JSON.parse(hello("tok", { columns: 80, rows: 24 }, "in", { id: "s", secret: "w", readonly: true, offset: 0 })),
    { AuthToken: "tok", columns: 80, rows: 24, input: "in", session: "s", secret: "w", readonly: true, offset: 0 });
});

test("an attachment without a writing secret makes the page a watcher", () => {
  const writer = attachedSession({ id: null, readonly: false }, { session: "s", secret: "w", read_secret: "r", offset: 7 });
  assert.deepEqual(writer, { id: "s", secret: "w", readSecret: "r", readonly: false, offset: 7 });
  const reader = attachedSession({ id: "s", readonly: false }, { session: "s", read_secret: "r", offset: 0 });
  assert.equal(reader.readonly, true);
  assert.equal(reader.secret, "r");
});

test("share links carry the secret in the fragment only", () => {
  const link = shareLink("https://h/t/?arg=1#old", { id: "a b" }, "s&t", true);
  assert.equal(link, "https://h/t/?arg=1#session=a%20b&secret=s%26t&readonly=1");
});

test("reconnection backs off to 30 s with jitter", () => {
  assert.equal(reconnectDelay(0, 0.5), 500);
  assert.equal(reconnectDelay(3, 0), 3000);
  assert.equal(reconnectDelay(20, 0.999999), 30000 * (0.75 + 0.999999 * 0.5));
});

test("closing codes: an exit or a refusal ends, anything else retries", () => {
  assert.deepEqual(closing(1000, "exit status 3"), { retry: false, text: "exit status 3" });
  assert.deepEqual(closing(1008, "authentication failed"), { retry: false, text: "refused: authentication failed (reload to log in again)" });
  assert.deepEqual(closing(1008, ""), { retry: false, text: "refused: policy" });
  assert.deepEqual(closing(1006, ""), { retry: true, text: "connection lost" });
});

test("the WebSocket's query carries the session's id beside the page's own arguments", async () => {
  const { webSocketQuery, routeCookie } = await import("../../web/session.js");
  assert.equal(webSocketQuery("", null), "");
  assert.equal(webSocketQuery("?arg=-l&arg=two+words", null), "?arg=-l&arg=two+words");
  assert.equal(webSocketQuery("?arg=x&session=forged", "h1.abc_-9"), "?arg=x&session=h1.abc_-9");
  assert.equal(webSocketQuery("", "h1.abc"), "?session=h1.abc");
  assert.equal(routeCookie("h1.abc", "/term/", true), "cloister_session=h1.abc; Path=/term/; SameSite=Strict; Secure");
  assert.equal(routeCookie(null, "/", false), "cloister_session=; Path=/; SameSite=Strict; Max-Age=0");
});
