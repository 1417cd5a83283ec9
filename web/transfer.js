// Files through the terminal: trzsz and ZMODEM, as the shell's `trz` and `rz` (upload) and
// `tsz` and `sz` (download) start them. Everything travels in the session's own streams: the shell's output brings the
// protocol's lines, the page's answers go as typed input (so they survive a resume like any
// keystroke), and the shell writes and reads the files with its own rights. Nothing here
// opens a file but the ones the user picks or drops.
//
// trzsz (trzsz.js): data goes one chunk at a time, each acknowledged (`#SUCC:LENGTH`), each
// file ends with its MD5. ZMODEM (zmodem.js): CRC-checked headers and subpackets.
import { toBinary, fromBinary, sameBytes } from "./bytes.js";
import { MD5 } from "./md5.js";
import { magic, encodeValue, decodeValue, action, valueOf } from "./trzsz.js";
import { Z, ZCRCQ, ZCRCW, ZCRCG, ZCRCE, zmodemStart, ZReader, hexHeader, binaryHeader, subpacket, offsetOf, position, cancelBytes,
  visible } from "./zmodem.js";
import { downloadRefusal } from "./downloads.js";

// The page's answers go as input in pieces a WebSocket frame holds (the worker takes 256 KiB).
const inputPiece = 60 * 1024;
// Bytes of a file per uploaded chunk, before compression.
const uploadChunk = 2 * 1024 * 1024;
const latin1 = new TextDecoder("latin1");
const utf8 = new TextEncoder();

class Cancelled extends Error {}

function mayStart(bytes) {
  for (let i = bytes.indexOf(0x1b); i >= 0; i = bytes.indexOf(0x1b, i + 1)) {
    if (i + 1 >= bytes.length || bytes[i + 1] === 0x37) return true;
  }
  return bytes.indexOf(0x18) >= 0 || (bytes.length > 0 && bytes[bytes.length - 1] === 0x2a);
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
        const value = valueOf(line, type);
        if (value !== null) return value;
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
      await this.sendString("ACT", action(confirm));
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
      const refusal = downloadRefusal(name, size);
      if (refusal) throw new Error(refusal);
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
      const rest = this.reader.takeRest();
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
      if (item.bad === "header") {
        // A header that failed its CRC: sz sends it again when asked.
        this.send(hexHeader(Z.NAK, [0, 0, 0, 0]));
        return;
      }
      if (item.bad === "data") {
        // Data that failed its CRC: sz goes back to the last byte taken, and what it sends
        // until its ZDATA header for that position is dropped.
        if (this.file) {
          this.skipping = true;
          this.send(hexHeader(Z.RPOS, position(this.file.got)));
        } else {
          this.send(hexHeader(Z.NAK, [0, 0, 0, 0]));
        }
        return;
      }
      if (item.data) {
        if (this.initialising) {
          this.initialising = false;
          this.send(hexHeader(Z.ACK, [0, 0, 0, 0]));
        } else if (this.announced) {
          this.announced = false;
          const info = toBinary(item.data).split("\0");
          const name = new TextDecoder().decode(fromBinary(info[0])).split("/").pop();
          const size = parseInt((info[1] || "").split(" ")[0], 10);
          const refusal = downloadRefusal(name, Number.isFinite(size) ? size : -1);
          if (refusal) return this.fail(refusal);
          this.file = { name: name, size: Number.isFinite(size) ? size : -1, parts: [], got: 0, md5: null };
          ui.file(name, Math.max(this.file.size, 0));
          this.send(hexHeader(Z.RPOS, position(0)));
        } else if (this.file && !this.skipping) {
          const refusal = downloadRefusal(this.file.name, this.file.got + item.data.length);
          if (refusal) return this.fail(refusal);
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
      else if (type === Z.DATA && this.file) {
        // Data from another position than the page has (sz resending, or a subpacket lost):
        // asked again from where the page is, and dropped until it comes from there.
        this.skipping = offsetOf(p) !== this.file.got;
        if (this.skipping) this.send(hexHeader(Z.RPOS, position(this.file.got)));
      }
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
