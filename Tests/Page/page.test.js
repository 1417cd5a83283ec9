import { test } from "node:test";
import assert from "node:assert/strict";
import { chooseRenderer, isSoftware } from "../../web/renderer.js";
import { safeLink, openLink } from "../../web/links.js";
import { osc52Text, maxBase64 } from "../../web/clipboard.js";
import { keyBytes, withModifiers, Modifiers } from "../../web/keybar.js";

test("a software WebGL is passed over for canvas unless asked for", () => {
  assert.equal(isSoftware("ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero)), SwiftShader driver)"), true);
  assert.equal(isSoftware("llvmpipe (LLVM 15.0.6, 256 bits)"), true);
  assert.equal(isSoftware("ANGLE (Intel, Mesa Intel(R) UHD Graphics 620 (KBL GT2), OpenGL 4.6)"), false);
  const gpu = { webgl2: true, renderer: "NVIDIA GeForce RTX 3060" }, swiftshader = { webgl2: true, renderer: "SwiftShader" };
  assert.equal(chooseRenderer(null, gpu), "webgl");
  assert.equal(chooseRenderer(null, swiftshader), "canvas");
  assert.equal(chooseRenderer("webgl", swiftshader), "webgl");
  assert.equal(chooseRenderer("webgl", { webgl2: false }), "canvas");
  assert.equal(chooseRenderer("dom", gpu), "canvas", "the DOM renderer's inline styles are refused by the policy");
  assert.equal(chooseRenderer("canvas", gpu), "canvas");
});

test("only web and mail links open, in a tab without an opener", () => {
  assert.equal(safeLink("https://example.org/a b"), "https://example.org/a%20b");
  assert.equal(safeLink("mailto:a@example.org"), "mailto:a@example.org");
  for (const bad of ["javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", "file:///etc/passwd", "vbscript:x", "not a url", ""]) {
    assert.equal(safeLink(bad), null, bad);
  }
  const opened = [];
  assert.equal(openLink((...args) => opened.push(args), "http://example.org"), true);
  assert.equal(openLink((...args) => opened.push(args), "javascript:alert(1)"), false);
  assert.deepEqual(opened, [["http://example.org/", "_blank", "noopener,noreferrer"]]);
});

test("OSC 52 sets the clipboard, with tmux's empty target too, and is never a read", () => {
  const b64 = (s) => Buffer.from(s, "utf8").toString("base64");
  assert.equal(osc52Text("c;" + b64("copied text")), "copied text");
  assert.equal(osc52Text(";" + b64("from tmux")), "from tmux");
  assert.equal(osc52Text("pc;" + b64("ünïcode ✓")), "ünïcode ✓");
  assert.equal(osc52Text("c;"), "", "an empty payload clears");
  assert.equal(osc52Text("c;?"), null, "a query is refused");
  assert.equal(osc52Text("c;!!!"), null);
  assert.equal(osc52Text("x;" + b64("a")), null, "an unknown target");
  assert.equal(osc52Text("no separator"), null);
  assert.equal(osc52Text("c;" + Buffer.from([0xff, 0xfe]).toString("base64")), null, "not UTF-8");
  assert.equal(osc52Text("c;" + "A".repeat(maxBase64 + 4)), null, "too large");
});

test("the key bar's keys follow xterm's encodings", () => {
  const none = { ctrl: false, alt: false };
  assert.equal(keyBytes("ArrowUp", none, false), "\x1b[A");
  assert.equal(keyBytes("ArrowUp", none, true), "\x1bOA", "application cursor mode (vi, less)");
  assert.equal(keyBytes("ArrowLeft", { ctrl: true, alt: false }, true), "\x1b[1;5D");
  assert.equal(keyBytes("ArrowRight", { ctrl: true, alt: true }, false), "\x1b[1;7C");
  assert.equal(keyBytes("Escape", none, false), "\x1b");
  assert.equal(keyBytes("Tab", none, false), "\t");
  assert.equal(withModifiers("c", { ctrl: true, alt: false }), "\x03");
  assert.equal(withModifiers("C", { ctrl: true, alt: false }), "\x03");
  assert.equal(withModifiers("[", { ctrl: true, alt: false }), "\x1b");
  assert.equal(withModifiers("?", { ctrl: true, alt: false }), "\x7f");
  assert.equal(withModifiers("x", { ctrl: true, alt: true }), "\x1b\x18");
  assert.equal(withModifiers("hello", { ctrl: true, alt: false }), "hello", "a completed word takes no Ctrl");
  assert.equal(withModifiers("b", { ctrl: false, alt: true }), "\x1bb");
});

test("modifiers stick for one key, or until tapped again", () => {
  const m = new Modifiers();
  m.tap("ctrl");
  assert.deepEqual(m.held, { ctrl: true, alt: false });
  m.used();
  assert.deepEqual(m.held, { ctrl: false, alt: false });
  m.tap("alt");
  m.tap("alt");
  m.used();
  m.used();
  assert.deepEqual(m.held, { ctrl: false, alt: true }, "locked");
  m.tap("alt");
  assert.deepEqual(m.held, { ctrl: false, alt: false });
});
