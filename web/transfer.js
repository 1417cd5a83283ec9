// Files through the terminal: trzsz and ZMODEM, as the shell's `trz` and `rz` (upload) and
// `tsz` and `sz` (download) start them. Everything travels in the session's own streams: the shell's output brings the
// protocol's lines, the page's answers go as typed input (so they survive a resume like any
// keystroke), and the shell writes and reads the files with its own rights. Nothing here
// opens a file but the ones the user picks or drops.
//
// trzsz's lines are `#TYPE:VALUE\n`; strings and data are base64 of zlib; data goes one chunk
// at a time, each acknowledged (`#SUCC:LENGTH`), each file ends with its MD5.
// What `trz` and `tsz` print first: the cursor saved (their end restores it and clears what
// follows, so nothing of the protocol stays on the screen), then the mode and version.
const magic = "\x1b7::TRZSZ:TRANSFER:";
// The page's answers go as input in pieces a WebSocket frame holds (the worker takes 256 KiB).
const inputPiece = 60 * 1024;
// Bytes of a file per uploaded chunk, before compression.
const uploadChunk = 2 * 1024 * 1024;
const latin1 = new TextDecoder("latin1");
const utf8 = new TextEncoder();

// MD5 (RFC 1321), incremental: trzsz checks every file with it, and WebCrypto has none.
function MD5() {
  this.state = new Int32Array([0x67452301, -271733879, -1732584194, 271733878]);
  this.buffer = new Uint8Array(64);
  this.buffered = 0;
  this.length = 0;
}
const S = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
  4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21];
const K = new Int32Array(64);
for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 4294967296) | 0;
MD5.prototype.block = function (bytes, at) {
  const w = new Int32Array(16);
  for (let i = 0; i < 16; i++) {
    const j = at + i * 4;
    w[i] = bytes[j] | (bytes[j + 1] << 8) | (bytes[j + 2] << 16) | (bytes[j + 3] << 24);
  }
  let [a, b, c, d] = this.state;
  for (let i = 0; i < 64; i++) {
    let f, g;
    if (i < 16) { f = (b & c) | (~b & d); g = i; }
    else if (i < 32) { f = (d & b) | (~d & c); g = (5 * i + 1) % 16; }
    else if (i < 48) { f = b ^ c ^ d; g = (3 * i + 5) % 16; }
    else { f = c ^ (b | ~d); g = (7 * i) % 16; }
    const sum = (a + f + K[i] + w[g]) | 0;
    a = d; d = c; c = b;
    b = (b + ((sum << S[i]) | (sum >>> (32 - S[i])))) | 0;
  }
  this.state[0] += a; this.state[1] += b; this.state[2] += c; this.state[3] += d;
};
MD5.prototype.update = function (bytes) {
  this.length += bytes.length;
  let at = 0;
  if (this.buffered > 0) {
    const take = Math.min(64 - this.buffered, bytes.length);
    this.buffer.set(bytes.subarray(0, take), this.buffered);
    this.buffered += take;
    at = take;
    if (this.buffered < 64) return;
    this.block(this.buffer, 0);
    this.buffered = 0;
  }
  for (; at + 64 <= bytes.length; at += 64) this.block(bytes, at);
  this.buffer.set(bytes.subarray(at), 0);
  this.buffered = bytes.length - at;
};
MD5.prototype.digest = function () {
  const bits = this.length * 8;
  const tail = new Uint8Array(((this.buffered < 56) ? 64 : 128) - this.buffered);
  tail[0] = 0x80;
  for (let i = 0; i < 8; i++) tail[tail.length - 8 + i] = Math.floor(bits / Math.pow(2, 8 * i)) & 0xff;
  this.update(tail);
  const out = new Uint8Array(16);
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) out[i * 4 + j] = (this.state[i] >>> (8 * j)) & 0xff;
  return out;
};

async function through(stream, bytes) {
  const piped = new Blob([bytes]).stream().pipeThrough(stream);
  return new Uint8Array(await new Response(piped).arrayBuffer());
}
// trzsz's zlib (RFC 1950) is what the Compression Streams API calls "deflate".
const deflate = function (bytes) { return through(new CompressionStream("deflate"), bytes); };
const inflate = function (bytes) { return through(new DecompressionStream("deflate"), bytes); };

function base64(bytes) { return btoa(toBinary(bytes)); }
function unbase64(text) { return fromBinary(atob(text)); }
async function encodeValue(bytes) { return base64(await deflate(bytes)); }
async function decodeValue(text) { return inflate(unbase64(text)); }
const sameBytes = function (a, b) { return a.length === b.length && a.every(function (x, i) { return x === b[i]; }); };

class Cancelled extends Error {}

// Bytes as a binary string (a character each) and back: both protocols are read that way.
function toBinary(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return text;
}
function fromBinary(text) {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}
function mayStart(bytes) {
  for (let i = bytes.indexOf(0x1b); i >= 0; i = bytes.indexOf(0x1b, i + 1)) {
    if (i + 1 >= bytes.length || bytes[i + 1] === 0x37) return true;
  }
  return bytes.indexOf(0x18) >= 0 || (bytes.length > 0 && bytes[bytes.length - 1] === 0x2a);
}

// ZMODEM (Chuck Forsberg's, as lrzsz's rz and sz speak it): headers and data subpackets,
// ZDLE-escaped, with CRC-16 (the page never asks for CRC-32, so sz sends CRC-16 too).
const ZPAD = 0x2a, ZDLE = 0x18, ZBIN = 0x41, ZHEX = 0x42, ZBIN32 = 0x43;
const Z = { RQINIT: 0, RINIT: 1, SINIT: 2, ACK: 3, FILE: 4, SKIP: 5, NAK: 6, ABORT: 7, FIN: 8, RPOS: 9, DATA: 10, EOF: 11, FERR: 12, CAN: 16 };
const ZCRCE = 0x68, ZCRCG = 0x69, ZCRCQ = 0x6a, ZCRCW = 0x6b;
const zmodemStart = "**\x18B";
const crcTable = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
  let c = i << 8;
  for (let j = 0; j < 8; j++) c = (c & 0x8000) ? ((c << 1) ^ 0x1021) : (c << 1);
  crcTable[i] = c & 0xffff;
}
function crc16(bytes, crc) {
  crc = crc || 0;
  for (const b of bytes) crc = ((crc << 8) ^ crcTable[((crc >> 8) ^ b) & 0xff]) & 0xffff;
  return crc;
}
// ZDLE-escaped: ZDLE, DLE, XON, XOFF (with the high bit or not), and a CR after '@'.
function zescape(bytes) {
  const out = new Uint8Array(bytes.length * 2);
  let n = 0, last = 0;
  for (const b of bytes) {
    const low = b & 0x7f;
    if (low === 0x18 || low === 0x10 || low === 0x11 || low === 0x13 || (low === 0x0d && (last & 0x7f) === 0x40)) {
      out[n++] = ZDLE;
      out[n++] = b ^ 0x40;
    } else {
      out[n++] = b;
    }
    last = b;
  }
  return out.subarray(0, n);
}
const hex2 = function (b) { return b.toString(16).padStart(2, "0"); };
function hexHeader(type, p) {
  const body = [type, p[0], p[1], p[2], p[3]];
  const crc = crc16(body);
  let text = "**\x18B" + body.map(hex2).join("") + hex2(crc >> 8) + hex2(crc & 0xff) + "\r\x8a";
  if (type !== Z.FIN && type !== Z.ACK) text += "\x11";
  return fromBinary(text);
}
function binaryHeader(type, p) {
  const body = [type, p[0], p[1], p[2], p[3]];
  const crc = crc16(body);
  const escaped = zescape(new Uint8Array(body.concat([crc >> 8, crc & 0xff])));
  const out = new Uint8Array(3 + escaped.length);
  out.set([ZPAD, ZDLE, ZBIN]);
  out.set(escaped, 3);
  return out;
}
function subpacket(data, end) {
  const crc = crc16([end], crc16(data));
  const escaped = zescape(data), tail = zescape(new Uint8Array([crc >> 8, crc & 0xff]));
  const out = new Uint8Array(escaped.length + 2 + tail.length + (end === ZCRCW ? 1 : 0));
  out.set(escaped);
  out.set([ZDLE, end], escaped.length);
  out.set(tail, escaped.length + 2);
  if (end === ZCRCW) out[out.length - 1] = 0x11;
  return out;
}
const offsetOf = function (p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (p[3] * 16777216); };
const position = function (n) { return [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, Math.floor(n / 16777216) & 0xff]; };
const cancelBytes = new Uint8Array([24, 24, 24, 24, 24, 24, 24, 24, 8, 8, 8, 8, 8, 8, 8, 8]);
// What is left of a buffer for the screen once the program has stopped: its hex headers
// and cancel sequences taken out (the shell's prompt stays).
const visible = function (text) {
  return text.replace(/\*\*\x18B[0-9a-fA-F]{14}[\r\n\x8a\x11]*/g, "").replace(/\x18+\x08*/g, "");
};

// Reads ZMODEM from a binary string as it comes: headers (hex or binary), and the data
// subpackets that follow ZFILE and ZDATA. Calls back with each.
class ZReader {
  constructor() { this.buffer = ""; this.expectData = false; }
  push(text) { this.buffer += text; }
  // The next item, or null until more arrives: {header: {type, p}} | {data, end} | {oo: true}
  next() {
    const b = this.buffer;
    if (this.expectData) {
      const bytes = [];
      for (let i = 0; i < b.length; i++) {
        let c = b.charCodeAt(i);
        if (c === ZDLE) {
          if (i + 1 >= b.length) return null;
          const e = b.charCodeAt(++i);
          if (e >= ZCRCE && e <= ZCRCW) {
            // Two CRC bytes follow, each perhaps escaped.
            let j = i + 1, got = 0;
            while (got < 2) {
              if (j >= b.length) return null;
              if (b.charCodeAt(j) === ZDLE) j += 2; else j += 1;
              got++;
            }
            if (j > b.length) return null;
            if (e === ZCRCW && b.charCodeAt(j) === 0x11) j++;
            this.buffer = b.slice(j);
            if (e === ZCRCE || e === ZCRCW) this.expectData = false;
            return { data: new Uint8Array(bytes), end: e };
          }
          if (e === 0x6c) c = 0x7f; else if (e === 0x6d) c = 0xff; else c = e ^ 0x40;
        }
        bytes.push(c);
      }
      return null;
    }
    if (b.startsWith("OO")) {
      this.buffer = b.slice(2);
      return { oo: true };
    }
    const at = b.indexOf("*\x18");
    if (at < 0) {
      this.buffer = b.slice(Math.max(0, b.length - 1));
      return null;
    }
    const kind = b.charCodeAt(at + 2);
    if (Number.isNaN(kind)) return null;
    if (kind === ZHEX) {
      const end = at + 3 + 14;
      if (b.length < end) return null;
      const hex = b.slice(at + 3, end);
      const values = [];
      for (let i = 0; i < 14; i += 2) values.push(parseInt(hex.slice(i, i + 2), 16));
      let next = end;
      while (next < b.length && (b.charCodeAt(next) === 0x0d || b.charCodeAt(next) === 0x8a || b.charCodeAt(next) === 0x0a || b.charCodeAt(next) === 0x11)) next++;
      this.buffer = b.slice(next);
      return this.header(values[0], values.slice(1, 5));
    }
    if (kind === ZBIN || kind === ZBIN32) {
      const want = kind === ZBIN ? 7 : 9;
      const values = [];
      let i = at + 3;
      while (values.length < want) {
        if (i >= b.length) return null;
        let c = b.charCodeAt(i++);
        if (c === ZDLE) {
          if (i >= b.length) return null;
          const e = b.charCodeAt(i++);
          c = e === 0x6c ? 0x7f : e === 0x6d ? 0xff : e ^ 0x40;
        }
        values.push(c);
      }
      this.buffer = b.slice(i);
      return this.header(values[0], values.slice(1, 5));
    }
    this.buffer = b.slice(at + 2);
    return this.next();
  }
  header(type, p) {
    if (type === Z.FILE || type === Z.DATA || type === Z.SINIT) this.expectData = true;
    return { header: { type: type, p: p } };
  }
}


// One page's transfers. `host`: write(text) to the terminal, send(bytes) as input,
// readonly() whether this page only watches, focus() the terminal again.
export function createTransfer(host) {
  const ui = progressBar();
  let active = null;   // the transfer under way, or null
  let tail = "";       // the end of the output, for a magic line split across messages
  let dropped = null;  // files dropped on the terminal, for the next upload

  // Output from the shell, as a binary string (one character a byte): what is not a
  // protocol's goes on to the terminal. The end of an output that could begin a trzsz magic
  // line or a ZMODEM header is held back until the rest arrives.
  function output(text) {
    if (active) return active.take(text);
    const joined = tail + text;
    tail = "";
    const trzsz = joined.indexOf(magic);
    const zmodem = joined.indexOf(zmodemStart);
    if (trzsz < 0 && zmodem < 0) {
      let hold = 0;
      for (const start of [magic, zmodemStart]) {
        for (let n = Math.min(start.length - 1, joined.length); n > hold; n--) {
          if (start.startsWith(joined.slice(joined.length - n))) { hold = n; break; }
        }
      }
      tail = joined.slice(joined.length - hold);
      return joined.slice(0, joined.length - hold);
    }
    if (zmodem >= 0 && (trzsz < 0 || zmodem < trzsz)) {
      // "**", ZDLE, 'B', then the header's type: 00 (ZRQINIT, sz sends) or 01 (ZRINIT, rz receives).
      if (joined.length < zmodem + zmodemStart.length + 2) {
        tail = joined.slice(zmodem);
        return joined.slice(0, zmodem);
      }
      const type = joined.slice(zmodem + zmodemStart.length, zmodem + zmodemStart.length + 2);
      if (type !== "00" && type !== "01") {
        return joined.slice(0, zmodem + 1) + output(joined.slice(zmodem + 1));
      }
      active = type === "00" ? new ZReceive(host.readonly()) : host.readonly() ? new ZWatched() : new ZSend();
      active.begin();
      return joined.slice(0, zmodem) + active.take(joined.slice(zmodem));
    }
    const at = trzsz;
    const end = joined.indexOf("\n", at);
    if (end < 0) {
      // A magic line is short: one that does not end soon is not one.
      if (joined.length - at > 256) return joined;
      tail = joined.slice(at);
      return joined.slice(0, at);
    }
    const fields = joined.slice(at + magic.length, end).replace(/\r$/, "").split(":");
    const before = joined.slice(0, at) + "\x1b7";
    start(fields[0]);
    const after = joined.slice(end + 1);
    return before + (after ? output(after) : "");
  }

  // What the terminal gets: bytes in, bytes out; a quick look first, so that ordinary
  // output (no ESC 7, no ZDLE, not ending in a '*') costs no conversion.
  function outputBytes(bytes) {
    if (!active && tail === "" && !mayStart(bytes)) return bytes;
    return fromBinary(output(toBinary(bytes)));
  }

  function start(mode) {
    if (mode === "S") active = new Download(host.readonly());
    else if (mode === "R") active = host.readonly() ? new Watched("upload") : new Upload();
    else {
      host.write(utf8.encode("\r\ncloister: trzsz mode " + JSON.stringify(mode) + " (directories) is not supported by this page\r\n"));
      active = host.readonly() ? new Watched("upload") : new Refusal();
    }
    active.begin();
  }

  // The transfer is over: what the shell wrote after its last line goes to the terminal.
  function finished(message, failed) {
    const ended = active;
    active = null;
    ui.hide();
    host.focus();
    if (message) ui.flash(message, failed);
    if (ended) {
      const rest = ended.leftover();
      if (rest) host.write(fromBinary(output(rest)));
    }
  }

  // The protocol's side that reads lines. After a cancel (or for a page that watches an
  // upload), the protocol's lines are dropped until the shell writes something else: trzsz
  // then restores the cursor it saved and clears below it.
  class Lines {
    constructor() { this.partial = ""; this.waiters = []; this.queue = []; this.done = false; this.draining = false; }
    take(text) {
      this.partial += text;
      let at;
      while ((at = this.partial.indexOf("\n")) >= 0) {
        const line = this.partial.slice(0, at).replace(/\r$/, "");
        if (this.draining && !/#[A-Za-z]+:/.test(line)) return this.stopDraining();
        this.partial = this.partial.slice(at + 1);
        if (!this.draining) this.line(line);
      }
      if (this.draining && this.partial.length > 0 && this.partial.indexOf("#") < 0) return this.stopDraining();
      return "";
    }
    stopDraining() {
      const rest = this.partial;
      this.partial = "";
      active = null;
      ui.hide();
      host.focus();
      return output(rest);
    }
    // Lines read but not taken, and the start of the next: the shell's own output.
    leftover() {
      const lines = this.queue.filter(function (line) { return !/#[A-Za-z]+:/.test(line); });
      this.queue = [];
      const rest = lines.map(function (line) { return line + "\r\n"; }).join("") + this.partial;
      this.partial = "";
      return rest;
    }
    line(line) {
      const waiter = this.waiters.shift();
      if (waiter) waiter(line); else this.queue.push(line);
    }
    next() {
      const self = this;
      if (this.queue.length > 0) return Promise.resolve(this.queue.shift());
      return new Promise(function (resolve) { self.waiters.push(resolve); });
    }
    async expect(type) {
      for (;;) {
        const line = await this.next();
        if (this.cancelled) throw new Cancelled("cancelled");
        const at = line.indexOf("#" + type + ":");
        if (at >= 0) return line.slice(at + type.length + 2);
        const fail = line.match(/#(FAIL|fail):(.*)$/);
        if (fail) throw new Error(new TextDecoder().decode(await decodeValue(fail[2])));
        // Anything else between the lines (a terminal's junk) is skipped.
      }
    }
    async expectString(type) { return new TextDecoder().decode(await decodeValue(await this.expect(type))); }
    async expectInteger(type) { return parseInt(await this.expect(type), 10); }
    send(type, value) {
      // A line built before a cancel (compressing a chunk takes a while) is not sent after
      // it: trzsz has stopped, and the shell would take it for a command.
      if (this.cancelled) return;
      const bytes = utf8.encode("#" + type + ":" + value + "\n");
      for (let i = 0; i < bytes.length; i += inputPiece) host.send(bytes.subarray(i, i + inputPiece));
    }
    async sendString(type, text) { this.send(type, await encodeValue(utf8.encode(text))); }
    cancel() {
      if (this.cancelled) return;
      this.cancelled = true;
      // trzsz stops at a Ctrl+C in its input, and restores the terminal.
      host.send(new Uint8Array([3]));
      this.draining = true;
      this.queue = [];
      this.waiters.splice(0).forEach(function (w) { w(""); });
      ui.hide();
      ui.flash("transfer cancelled", true);
    }
    async action(confirm) {
      await this.sendString("ACT", JSON.stringify({ lang: "js", confirm: confirm, version: "1.1.7", support_dir: false, protocol: 1, binary: false }));
    }
    async fail(error) {
      if (this.done) return;
      this.done = true;
      const message = String(error.message || error);
      this.send("fail", await encodeValue(utf8.encode(message)));
      finished("transfer failed: " + message, true);
    }
  }

  class Upload extends Lines {
    begin() {
      const self = this;
      const files = dropped;
      dropped = null;
      if (files) return this.run(files);
      ui.ask("The shell asks for files (trz)", function (chosen) {
        if (chosen && chosen.length) self.run(Array.from(chosen)); else self.refuse();
      });
    }
    async refuse() {
      this.done = true;
      await this.action(false);
      finished("upload cancelled");
    }
    async run(files) {
      try {
        ui.show(this);
        await this.action(true);
        await this.expect("CFG");
        this.send("NUM", files.length);
        if (await this.expectInteger("SUCC") !== files.length) throw new Error("the shell disagrees on the number of files");
        for (const file of files) await this.file(file);
        this.done = true;
        this.send("EXIT", await encodeValue(utf8.encode("Saved " + files.map(function (f) { return f.name; }).join(", "))));
        finished("uploaded " + files.length + (files.length === 1 ? " file" : " files"));
      } catch (error) {
        if (!(error instanceof Cancelled)) this.fail(error);
      }
    }
    async file(file) {
      await this.sendString("NAME", file.name);
      const saved = await this.expectString("SUCC");
      this.send("SIZE", file.size);
      if (await this.expectInteger("SUCC") !== file.size) throw new Error("the shell disagrees on the size of " + file.name);
      ui.file(saved, file.size);
      const md5 = new MD5();
      for (let at = 0; at < file.size; ) {
        const chunk = new Uint8Array(await file.slice(at, at + uploadChunk).arrayBuffer());
        if (this.cancelled) throw new Cancelled("cancelled");
        md5.update(chunk);
        this.send("DATA", await encodeValue(chunk));
        if (await this.expectInteger("SUCC") !== chunk.length) throw new Error("the shell acknowledged a chunk of another length");
        at += chunk.length;
        ui.step(at);
      }
      const digest = md5.digest();
      this.send("MD5", await encodeValue(digest));
      if (!sameBytes(await decodeValue(await this.expect("SUCC")), digest)) throw new Error("MD5 differs for " + file.name);
    }
  }

  // A download: the shell sends, this page saves. A page that only watches cannot answer,
  // but reads the same lines as the writer's page and saves the same files.
  class Download extends Lines {
    constructor(watching) { super(); this.watching = watching; }
    begin() { this.run(); }
    reply(type, value) { if (!this.watching) this.send(type, value); }
    async run() {
      try {
        ui.show(this);
        if (!this.watching) await this.action(true);
        await this.expect("CFG");
        const count = await this.expectInteger("NUM");
        this.reply("SUCC", count);
        const names = [];
        for (let i = 0; i < count; i++) names.push(await this.file());
        this.done = true;
        if (!this.watching) this.send("EXIT", await encodeValue(utf8.encode("Saved " + names.join(", "))));
        finished("downloaded " + names.join(", "));
      } catch (error) {
        if (error instanceof Cancelled) return;
        if (this.watching) { this.done = true; finished("download failed: " + error.message, true); } else this.fail(error);
      }
    }
    async file() {
      const name = (await this.expectString("NAME")).split("/").pop();
      this.reply("SUCC", await encodeValue(utf8.encode(name)));
      const size = await this.expectInteger("SIZE");
      this.reply("SUCC", size);
      ui.file(name, size);
      const parts = [];
      const md5 = new MD5();
      let got = 0;
      while (got < size) {
        const chunk = await decodeValue(await this.expect("DATA"));
        md5.update(chunk);
        parts.push(chunk);
        got += chunk.length;
        this.reply("SUCC", chunk.length);
        ui.step(got);
        if (chunk.length === 0) break;
      }
      const expected = await decodeValue(await this.expect("MD5"));
      const digest = md5.digest();
      if (!sameBytes(expected, digest)) throw new Error("MD5 differs for " + name);
      this.reply("SUCC", await encodeValue(digest));
      save(name, parts);
      return name;
    }
  }

  // An upload the writer's page runs, seen from a page that only watches: its lines are
  // hidden, and the page says why it cannot upload.
  class Watched extends Lines {
    constructor(what) { super(); this.what = what; this.watching = true; this.draining = true; }
    begin() { ui.flash("the writer is uploading; this page only watches and cannot upload", false); }
  }

  // A mode the page does not speak: declined, so the shell stops at once.
  class Refusal extends Lines {
    async begin() {
      this.done = true;
      await this.action(false);
      finished("");
    }
  }

  // What both ZMODEM directions share: the reader, the end, and the end after a cancel.
  class ZTransfer {
    constructor() { this.reader = new ZReader(); }
    // Back to the terminal: what the program wrote after its last frame goes on to it.
    close() {
      const rest = this.reader.buffer;
      this.reader.buffer = "";
      clearTimeout(this.timer);
      active = null;
      ui.hide();
      host.focus();
      if (this.message) ui.flash(this.message, this.failed);
      return output(rest);
    }
    // After a cancel, once the program has had time to stop: its headers, cancel sequences
    // and any data up to its last escape are dropped, the shell's prompt kept.
    closeAfterCancel() {
      const self = this;
      this.timer = setTimeout(function () {
        if (active !== self) return;
        const kept = visible(self.reader.buffer);
        self.reader.buffer = kept.slice(kept.lastIndexOf("\x18") + 1);
        host.write(fromBinary(self.close()));
      }, 1500);
    }
  }

  // sz: the shell sends, this page saves (a page that only watches saves the same files
  // and answers nothing).
  class ZReceive extends ZTransfer {
    constructor(watching) { super(); this.watching = watching; this.file = null; this.names = []; }
    begin() { ui.show(this); }
    send(bytes) { if (!this.watching && !this.cancelled) host.send(bytes); }
    take(text) {
      this.reader.push(text);
      // Cancelled: kept as it comes, for the screen once sz has stopped.
      if (this.cancelled) return "";
      if (this.finishing) {
        // After ZFIN only sz's "OO" is left; what follows it is the shell's.
        const at = this.reader.buffer.indexOf("OO");
        if (at >= 0) {
          this.reader.buffer = this.reader.buffer.slice(at + 2);
          this.over = true;
        }
        return this.over ? this.close() : "";
      }
      let item;
      while (!this.over && !this.finishing && (item = this.reader.next())) this.handle(item);
      if (this.finishing) return this.take("");
      return this.over ? this.close() : "";
    }
    handle(item) {
      if (item.oo) { this.over = true; return; }
      if (item.data) {
        if (this.initialising) {
          this.initialising = false;
          this.send(hexHeader(Z.ACK, [0, 0, 0, 0]));
        } else if (this.announced) {
          this.announced = false;
          const info = toBinary(item.data).split("\0");
          const name = new TextDecoder().decode(fromBinary(info[0])).split("/").pop();
          const size = parseInt((info[1] || "").split(" ")[0], 10);
          this.file = { name: name, size: Number.isFinite(size) ? size : -1, parts: [], got: 0, md5: null };
          ui.file(name, Math.max(this.file.size, 0));
          this.send(hexHeader(Z.RPOS, position(0)));
        } else if (this.file) {
          this.file.parts.push(item.data);
          this.file.got += item.data.length;
          ui.step(this.file.got);
          if (item.end === ZCRCQ || item.end === ZCRCW) this.send(hexHeader(Z.ACK, position(this.file.got)));
        }
        return;
      }
      const { type, p } = item.header;
      if (type === Z.RQINIT) this.send(hexHeader(Z.RINIT, [0, 0, 0, 0x03]));
      else if (type === Z.SINIT) this.initialising = true;
      else if (type === Z.FILE) this.announced = true;
      else if (type === Z.EOF && this.file) {
        if (offsetOf(p) !== this.file.got) return this.fail("sz ended " + this.file.name + " at " + offsetOf(p) + " bytes, " + this.file.got + " arrived");
        save(this.file.name, this.file.parts);
        this.names.push(this.file.name);
        this.file = null;
        this.send(hexHeader(Z.RINIT, [0, 0, 0, 0x03]));
      } else if (type === Z.FIN) {
        this.send(hexHeader(Z.FIN, [0, 0, 0, 0]));
        this.finishing = true;
        this.message = "downloaded " + this.names.join(", ");
        // sz says "OO" and exits; the shell's prompt follows, whether or not "OO" comes.
        const self = this;
        this.timer = setTimeout(function () { if (active === self) host.write(fromBinary(self.close())); }, 1000);
      } else if (type === Z.CAN || type === Z.ABORT || type === Z.FERR) this.fail("sz stopped");
    }
    fail(message) {
      this.message = "download failed: " + message;
      this.failed = true;
      this.send(cancelBytes);
      this.over = true;
    }
    cancel() {
      host.send(cancelBytes);
      this.cancelled = true;
      this.message = "transfer cancelled";
      this.failed = true;
      this.closeAfterCancel();
    }
  }

  // rz: this page sends the files the user picks (or dropped), rz in the shell writes them.
  // Data goes in subpackets of 8 KiB, with an acknowledgement asked every 256 KiB, and no
  // more than 1 MiB ahead of what rz has acknowledged.
  class ZSend extends ZTransfer {
    constructor() { super(); this.files = null; this.index = 0; this.ready = false; this.waiters = []; }
    begin() {
      const self = this;
      ui.show(this);
      const files = dropped;
      dropped = null;
      if (files) { this.files = files; return; }
      ui.ask("The shell asks for files (rz)", function (chosen) {
        if (chosen && chosen.length) {
          self.files = Array.from(chosen);
          if (self.ready) self.nextFile();
        } else {
          self.message = "upload cancelled";
          self.cancel();
        }
      });
    }
    take(text) {
      this.reader.push(text);
      if (this.cancelled) return "";
      let item;
      while (!this.over && (item = this.reader.next())) this.handle(item);
      return this.over ? this.close() : "";
    }
    handle(item) {
      if (!item.header) return;
      const { type, p } = item.header;
      if (type === Z.RINIT) {
        this.ready = true;
        if (this.files && !this.sending) this.nextFile();
      } else if (type === Z.RPOS) {
        if (!this.sending) this.sendData(offsetOf(p));
      } else if (type === Z.ACK) {
        this.acked = offsetOf(p);
        this.waiters.splice(0).forEach(function (w) { w(); });
      } else if (type === Z.SKIP) {
        this.index++;
        this.nextFile();
      } else if (type === Z.FIN) {
        host.send(fromBinary("OO"));
        this.message = "uploaded " + this.files.map(function (f) { return f.name; }).join(", ");
        this.over = true;
      } else if (type === Z.CAN || type === Z.ABORT || type === Z.FERR || type === Z.NAK) {
        this.message = "upload failed: rz stopped";
        this.failed = true;
        this.over = true;
      }
    }
    nextFile() {
      this.ready = false;
      if (this.index >= this.files.length) {
        host.send(hexHeader(Z.FIN, [0, 0, 0, 0]));
        return;
      }
      const file = this.files[this.index];
      const left = this.files.slice(this.index).reduce(function (n, f) { return n + f.size; }, 0);
      const info = utf8.encode(file.name);
      const rest = fromBinary("\0" + file.size + " " + Math.floor(file.lastModified / 1000).toString(8) + " 100644 0 "
        + (this.files.length - this.index) + " " + left + "\0");
      const data = new Uint8Array(info.length + rest.length);
      data.set(info);
      data.set(rest, info.length);
      ui.file(file.name, file.size);
      host.send(binaryHeader(Z.FILE, [0, 0, 0, 0]));
      host.send(subpacket(data, ZCRCW));
    }
    async sendData(from) {
      this.sending = true;
      const file = this.files[this.index];
      try {
        host.send(binaryHeader(Z.DATA, position(from)));
        this.acked = from;
        let at = from;
        while (at < file.size) {
          const piece = new Uint8Array(await file.slice(at, at + 256 * 1024).arrayBuffer());
          for (let i = 0; i < piece.length; i += 8192) {
            if (this.cancelled) return;
            const data = piece.subarray(i, i + 8192);
            const last = at + i + data.length >= file.size;
            const askAck = !last && i + 8192 >= piece.length;
            host.send(subpacket(data, last ? ZCRCE : askAck ? ZCRCQ : ZCRCG));
          }
          at += piece.length;
          ui.step(Math.max(this.acked, 0));
          while (at - this.acked > 1024 * 1024 && !this.cancelled) {
            const self = this;
            await new Promise(function (resolve) { self.waiters.push(resolve); });
            ui.step(this.acked);
          }
        }
        if (file.size === 0) host.send(subpacket(new Uint8Array(0), ZCRCE));
        host.send(binaryHeader(Z.EOF, position(file.size)));
        ui.step(file.size);
        this.index++;
      } finally {
        this.sending = false;
      }
    }
    cancel() {
      this.cancelled = true;
      host.send(cancelBytes);
      this.message = this.message || "transfer cancelled";
      this.failed = true;
      this.waiters.splice(0).forEach(function (w) { w(); });
      this.closeAfterCancel();
    }
  }

  // rz started by the writer, seen from a page that only watches: rz's headers are hidden
  // (the data it takes is the writer's input, which this page does not see), and the page
  // goes back to the terminal after rz's ZFIN, or once rz has been quiet for 2 s.
  class ZWatched {
    constructor() { this.watching = true; this.reader = new ZReader(); }
    begin() { ui.flash("the writer is uploading; this page only watches and cannot upload", false); }
    take(text) {
      this.reader.push(text);
      // rz's ZFIN: a hex header of type 08.
      const finished = /\*\*\x18B08/.test(this.reader.buffer);
      const self = this;
      clearTimeout(this.timer);
      this.timer = setTimeout(function () {
        if (active !== self) return;
        active = null;
        const rest = visible(self.reader.buffer);
        self.reader.buffer = "";
        host.write(fromBinary(output(rest)));
      }, finished ? 500 : 2000);
      return "";
    }
  }

  function save(name, parts) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob(parts));
    link.download = name;
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 60000);
  }

  // The bar over the terminal: the file, bytes, rate and time left, a cancel button; and
  // the file picker an upload opens.
  function progressBar() {
    const bar = document.getElementById("transfer");
    const label = bar.querySelector(".transfer-file");
    const meter = bar.querySelector("progress");
    const figures = bar.querySelector(".transfer-figures");
    const cancel = bar.querySelector("button");
    const picker = document.getElementById("transfer-picker");
    let current = null, size = 0, started = 0, timer = null;
    cancel.addEventListener("click", function () {
      if (current) current.cancel();
      host.focus();
    });
    const human = function (n) {
      const units = ["B", "KiB", "MiB", "GiB"];
      let u = 0;
      while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
      return (u === 0 ? n : n.toFixed(1)) + " " + units[u];
    };
    return {
      show: function (transfer) {
        current = transfer;
        bar.hidden = false;
        bar.dataset.state = "running";
        cancel.hidden = transfer.watching === true;
        label.textContent = "starting…";
        meter.value = 0;
        figures.textContent = "";
      },
      file: function (name, bytes) {
        label.textContent = name;
        size = bytes;
        started = performance.now();
        meter.max = Math.max(bytes, 1);
        meter.value = 0;
      },
      step: function (done) {
        meter.value = done;
        const seconds = (performance.now() - started) / 1000;
        const rate = seconds > 0 ? done / seconds : 0;
        const left = rate > 0 ? Math.max(0, (size - done) / rate) : 0;
        figures.textContent = human(done) + " of " + human(size) + " · " + human(rate) + "/s · " + Math.ceil(left) + " s left";
      },
      hide: function () {
        current = null;
        bar.hidden = true;
        bar.dataset.state = "idle";
      },
      flash: function (message, failed) {
        const note = document.getElementById("transfer-note");
        note.textContent = message;
        note.hidden = false;
        note.dataset.failed = failed ? "1" : "0";
        clearTimeout(timer);
        timer = setTimeout(function () { note.hidden = true; }, 8000);
      },
      ask: function (title, chosen) {
        picker.value = "";
        picker.onchange = function () { chosen(picker.files); };
        picker.oncancel = function () { chosen(null); };
        picker.title = title;
        picker.click();
      },
    };
  }

  // Files dropped on the terminal: an upload asked for takes them; otherwise `trz` is typed
  // for them (a page that only watches says it cannot).
  function drop(files) {
    if (host.readonly()) return ui.flash("this page only watches: it cannot upload", true);
    if (!files.length) return;
    dropped = files;
    if (!active) host.send(utf8.encode("trz\r"));
  }

  return {
    output: outputBytes,
    drop: drop,
    // Ctrl+C while a transfer runs cancels it; keys go nowhere else meanwhile.
    key: function (data) {
      if (!active) return false;
      if (data === "\x03" && !active.watching) active.cancel();
      return true;
    },
    get active() { return active !== null; },
    // The session's output has a gap (the ring no longer held what a resume asked for):
    // the transfer under way is cancelled, and the page says why.
    interrupted: function (why) {
      if (!active || active.watching) {
        if (active) { active = null; ui.hide(); }
        return;
      }
      active.message = "transfer cancelled: " + why;
      active.cancel();
      ui.flash("transfer cancelled: " + why, true);
    },
  };
}
