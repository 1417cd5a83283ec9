// ZMODEM (Chuck Forsberg's, as lrzsz's rz and sz speak it): headers and data subpackets,
// ZDLE-escaped, each with its CRC. What the page sends uses CRC-16 (it never offers CRC-32,
// so sz answers in CRC-16); what it reads is checked with the CRC its frame names (CRC-32
// after a ZBIN32 header), and a header or subpacket whose CRC is wrong is reported, never
// taken. Pure: binary strings (a character a byte) in, items out.
import { fromBinary } from "./bytes.js";

export const ZPAD = 0x2a, ZDLE = 0x18, ZBIN = 0x41, ZHEX = 0x42, ZBIN32 = 0x43;
export const Z = { RQINIT: 0, RINIT: 1, SINIT: 2, ACK: 3, FILE: 4, SKIP: 5, NAK: 6, ABORT: 7, FIN: 8, RPOS: 9, DATA: 10, EOF: 11,
  FERR: 12, CAN: 16 };
export const ZCRCE = 0x68, ZCRCG = 0x69, ZCRCQ = 0x6a, ZCRCW = 0x6b;
export const zmodemStart = "**\x18B";
// The largest data subpacket the reader takes (lrzsz sends at most 8 KiB, 1 KiB by default).
export const maxSubpacket = 64 * 1024;

const crc16Table = new Uint16Array(256);
const crc32Table = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  let c = i << 8;
  for (let j = 0; j < 8; j++) c = (c & 0x8000) ? ((c << 1) ^ 0x1021) : (c << 1);
  crc16Table[i] = c & 0xffff;
  let d = i;
  for (let j = 0; j < 8; j++) d = (d & 1) ? (0xedb88320 ^ (d >>> 1)) : (d >>> 1);
  crc32Table[i] = d;
}

// CRC-16/XMODEM, continued from `crc`.
export function crc16(bytes, crc = 0) {
  for (const b of bytes) crc = ((crc << 8) ^ crc16Table[((crc >> 8) ^ b) & 0xff]) & 0xffff;
  return crc;
}

// CRC-32 as ZMODEM's 32-bit frames carry it (IEEE 802.3; the register starts at all ones and
// is sent inverted, low byte first). `crc` is the running register, not inverted.
export function crc32(bytes, crc = -1) {
  for (const b of bytes) crc = crc32Table[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return crc;
}

// ZDLE-escaped: ZDLE, DLE, XON, XOFF (with the high bit or not), and a CR after '@'.
export function zescape(bytes) {
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

const hex2 = (b) => b.toString(16).padStart(2, "0");

export function hexHeader(type, p) {
  const body = [type, p[0], p[1], p[2], p[3]];
  const crc = crc16(body);
  let text = zmodemStart + body.map(hex2).join("") + hex2(crc >> 8) + hex2(crc & 0xff) + "\r\x8a";
  if (type !== Z.FIN && type !== Z.ACK) text += "\x11";
  return fromBinary(text);
}

export function binaryHeader(type, p) {
  const body = [type, p[0], p[1], p[2], p[3]];
  const crc = crc16(body);
  const escaped = zescape(new Uint8Array(body.concat([crc >> 8, crc & 0xff])));
  const out = new Uint8Array(3 + escaped.length);
  out.set([ZPAD, ZDLE, ZBIN]);
  out.set(escaped, 3);
  return out;
}

export function subpacket(data, end) {
  const crc = crc16([end], crc16(data));
  const escaped = zescape(data), tail = zescape(new Uint8Array([crc >> 8, crc & 0xff]));
  const out = new Uint8Array(escaped.length + 2 + tail.length + (end === ZCRCW ? 1 : 0));
  out.set(escaped);
  out.set([ZDLE, end], escaped.length);
  out.set(tail, escaped.length + 2);
  if (end === ZCRCW) out[out.length - 1] = 0x11;
  return out;
}

export const offsetOf = (p) => p[0] | (p[1] << 8) | (p[2] << 16) | (p[3] * 16777216);
export const position = (n) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, Math.floor(n / 16777216) & 0xff];
export const cancelBytes = new Uint8Array([24, 24, 24, 24, 24, 24, 24, 24, 8, 8, 8, 8, 8, 8, 8, 8]);

// What is left of a buffer for the screen once the program has stopped: its hex headers
// and cancel sequences taken out (the shell's prompt stays).
export function visible(text) {
  return text.replace(/\*\*\x18B[0-9a-fA-F]{14}[\r\n\x8a\x11]*/g, "").replace(/\x18+\x08*/g, "");
}

// ZDLE's escapes: ZRUB0 and ZRUB1 stand for DEL and 0xff, any other byte for itself ^ 0x40.
const unescape = (e) => (e === 0x6c ? 0x7f : e === 0x6d ? 0xff : e ^ 0x40);

// Reads ZMODEM as it arrives. `next()` gives the next item, or null until more arrives:
//   { header: { type, p } }        a header whose CRC is right
//   { data, end }                   a data subpacket whose CRC is right (after ZFILE, ZDATA, ZSINIT)
//   { bad: "header" | "data", why } a header or subpacket that failed its check: dropped
//   { oo: true }                    sz's "OO" at the very end
// Every byte is looked at once: a subpacket that arrives in pieces is decoded as they come,
// not scanned again from its start.
export class ZReader {
  constructor() {
    this.buffer = "";
    this.expectData = false;
    // The frame kind of the last header: its subpackets carry a CRC of the same width.
    this.wide = false;
    // A subpacket being decoded: its bytes so far, and where decoding stopped.
    this.data = new Uint8Array(1024);
    this.length = 0;
    this.at = 0;
  }

  push(text) { this.buffer += text; }

  // What arrived after the last item, for the screen; the reader starts over.
  takeRest() {
    const rest = this.buffer;
    this.buffer = "";
    this.expectData = false;
    this.length = 0;
    this.at = 0;
    return rest;
  }

  next() {
    return this.expectData ? this.nextData() : this.nextHeader();
  }

  nextData() {
    const b = this.buffer;
    let i = this.at;
    while (i < b.length) {
      let c = b.charCodeAt(i);
      if (c === ZDLE) {
        if (i + 1 >= b.length) break;
        const e = b.charCodeAt(i + 1);
        if (e >= ZCRCE && e <= ZCRCW) {
          const item = this.endOfSubpacket(b, i + 2, e);
          if (item === null) break;  // the CRC has not all arrived
          return item;
        }
        c = unescape(e);
        i += 2;
      } else {
        i += 1;
      }
      if (this.length === maxSubpacket) return this.badData(b, i, "a data subpacket longer than " + maxSubpacket + " bytes");
      if (this.length === this.data.length) {
        const grown = new Uint8Array(this.data.length * 2);
        grown.set(this.data);
        this.data = grown;
      }
      this.data[this.length++] = c;
    }
    this.at = i;
    return null;
  }

  // The CRC after the frame end at `from`; null until all of it has arrived.
  endOfSubpacket(b, from, end) {
    const want = this.wide ? 4 : 2, crc = [];
    let j = from;
    while (crc.length < want) {
      if (j >= b.length) return null;
      if (b.charCodeAt(j) === ZDLE) {
        if (j + 1 >= b.length) return null;
        crc.push(unescape(b.charCodeAt(j + 1)));
        j += 2;
      } else {
        crc.push(b.charCodeAt(j++));
      }
    }
    if (end === ZCRCW && j < b.length && b.charCodeAt(j) === 0x11) j++;
    const data = this.data.slice(0, this.length);
    if (!checks(data, end, crc, this.wide)) return this.badData(b, j, "a data subpacket's CRC is wrong");
    this.consume(b, j);
    if (end === ZCRCE || end === ZCRCW) this.expectData = false;
    return { data, end };
  }

  // A subpacket that failed: what it held is dropped, and the reader looks for a header
  // again (the sender resends from the position the receiver asks for).
  badData(b, upTo, why) {
    this.consume(b, upTo);
    this.expectData = false;
    return { bad: "data", why };
  }

  consume(b, upTo) {
    this.buffer = b.slice(upTo);
    this.length = 0;
    this.at = 0;
  }

  nextHeader() {
    const b = this.buffer;
    if (b.startsWith("OO")) {
      this.buffer = b.slice(2);
      return { oo: true };
    }
    const at = b.indexOf("*\x18");
    if (at < 0) {
      // Only a last '*' can begin a header still to come.
      this.buffer = b.endsWith("*") ? "*" : "";
      return null;
    }
    if (at + 2 >= b.length) {
      this.buffer = b.slice(at);
      return null;
    }
    const kind = b.charCodeAt(at + 2);
    if (kind === ZHEX) {
      const end = at + 3 + 14;
      if (b.length < end) return this.wait(b, at);
      const hex = b.slice(at + 3, end);
      if (!/^[0-9a-fA-F]{14}$/.test(hex)) return this.badHeader(b, at + 3, "a hex header that is not hex");
      const values = [];
      for (let i = 0; i < 14; i += 2) values.push(parseInt(hex.slice(i, i + 2), 16));
      let next = end;
      while (next < b.length && [0x0d, 0x8a, 0x0a, 0x11].includes(b.charCodeAt(next))) next++;
      if (crc16(values.slice(0, 5)) !== ((values[5] << 8) | values[6])) return this.badHeader(b, next, "a hex header's CRC is wrong");
      this.buffer = b.slice(next);
      return this.header(values, false);
    }
    if (kind === ZBIN || kind === ZBIN32) {
      const wide = kind === ZBIN32, want = wide ? 9 : 7, values = [];
      let i = at + 3;
      while (values.length < want) {
        if (i >= b.length) return this.wait(b, at);
        let c = b.charCodeAt(i++);
        if (c === ZDLE) {
          if (i >= b.length) return this.wait(b, at);
          c = unescape(b.charCodeAt(i++));
        }
        values.push(c);
      }
      if (!checks(values.slice(0, 5), null, values.slice(5), wide)) return this.badHeader(b, i, "a binary header's CRC is wrong");
      this.buffer = b.slice(i);
      return this.header(values, wide);
    }
    // "*" ZDLE followed by something else: not a header; look past it.
    this.buffer = b.slice(at + 2);
    return this.nextHeader();
  }

  wait(b, at) {
    this.buffer = b.slice(at);
    return null;
  }

  badHeader(b, upTo, why) {
    this.buffer = b.slice(upTo);
    return { bad: "header", why };
  }

  header(values, wide) {
    const type = values[0];
    this.wide = wide;
    if (type === Z.FILE || type === Z.DATA || type === Z.SINIT) this.expectData = true;
    return { header: { type, p: values.slice(1, 5) } };
  }
}

// Whether `crc` (as received) is the CRC of `data` and the frame end `end` (none for a header).
function checks(data, end, crc, wide) {
  if (wide) {
    let r = crc32(data);
    if (end !== null) r = crc32([end], r);
    const sent = (crc[0] | (crc[1] << 8) | (crc[2] << 16) | (crc[3] << 24));
    return (~r | 0) === (sent | 0);
  }
  let r = crc16(data);
  if (end !== null) r = crc16([end], r);
  return r === ((crc[0] << 8) | crc[1]);
}
