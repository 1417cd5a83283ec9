// Files through the terminal: trzsz, as the shell's `trz` (upload) and `tsz` (download)
// start it. Everything travels in the session's own streams: the shell's output brings the
// protocol's lines, the page's answers go as typed input (so they survive a resume like any
// keystroke), and the shell writes and reads the files with its own rights. Nothing here
// opens a file but the ones the user picks or drops.
//
// trzsz's lines are `#TYPE:VALUE\n`; strings and data are base64 of zlib; data goes one chunk
// at a time, each acknowledged (`#SUCC:LENGTH`), each file ends with its MD5.
(function () {
  "use strict";

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

  function base64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }
  function unbase64(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }
  async function encodeValue(bytes) { return base64(await deflate(bytes)); }
  async function decodeValue(text) { return inflate(unbase64(text)); }
  const sameBytes = function (a, b) { return a.length === b.length && a.every(function (x, i) { return x === b[i]; }); };

  class Cancelled extends Error {}

  // One page's transfers. `host`: write(text) to the terminal, send(bytes) as input,
  // readonly() whether this page only watches, focus() the terminal again.
  window.CloisterTransfer = function (host) {
    const ui = progressBar();
    let active = null;   // the transfer under way, or null
    let tail = "";       // the end of the output, for a magic line split across messages
    let dropped = null;  // files dropped on the terminal, for the next upload

    // Output from the shell: what is not the protocol goes on to the terminal. The end of an
    // output that could begin a magic line is held back until the rest arrives.
    function output(text) {
      if (active) return active.take(text);
      const joined = tail + text;
      tail = "";
      const at = joined.indexOf(magic);
      if (at < 0) {
        let hold = 0;
        for (let n = Math.min(magic.length - 1, joined.length); n > 0 && hold === 0; n--) {
          if (magic.startsWith(joined.slice(joined.length - n))) hold = n;
        }
        tail = joined.slice(joined.length - hold);
        return joined.slice(0, joined.length - hold);
      }
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

    function start(mode) {
      if (mode === "S") active = new Download(host.readonly());
      else if (mode === "R") active = host.readonly() ? new Watched("upload") : new Upload();
      else {
        host.write("\r\ncloister: trzsz mode " + JSON.stringify(mode) + " (directories) is not supported by this page\r\n");
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
        if (rest) host.write(output(rest));
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
      output: output,
      drop: drop,
      // Ctrl+C while a transfer runs cancels it; keys go nowhere else meanwhile.
      key: function (data) {
        if (!active) return false;
        if (data === "\x03" && !active.watching) active.cancel();
        return true;
      },
      get active() { return active !== null; },
    };
  };
})();
