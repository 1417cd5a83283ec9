import { test } from "node:test";
import assert from "node:assert/strict";
import { toBinary, fromBinary } from "../../web/bytes.js";
import { MD5 } from "../../web/md5.js";
import { encodeValue, decodeValue, action, valueOf, clientVersion } from "../../web/trzsz.js";
import { downloadRefusal, maxDownloadBytes } from "../../web/downloads.js";
import { Z, ZBIN32, ZDLE, ZPAD, ZCRCE, ZCRCG, ZCRCW, crc16, crc32, zescape, hexHeader, binaryHeader, subpacket, position, ZReader,
  maxSubpacket } from "../../web/zmodem.js";

const bytes = (text) => new TextEncoder().encode(text);
const hex = (array) => Array.from(array, (b) => b.toString(16).padStart(2, "0")).join("");

function items(reader) {
  const out = [];
  for (let item; (item = reader.next()); ) out.push(item);
  return out;
}

function feed(chunks) {
  const reader = new ZReader();
  const out = [];
  for (const chunk of chunks) {
    reader.push(toBinary(chunk));
    out.push(...items(reader));
  }
  return out;
}

function concat(...arrays) {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

// What sz sends for a file: ZFILE with its name and size, then ZDATA and two subpackets.
function session(data) {
  return concat(binaryHeader(Z.FILE, [0, 0, 0, 0]), subpacket(bytes("name.bin\0" + data.length + " 0 644"), ZCRCW),
    binaryHeader(Z.DATA, position(0)), subpacket(data.subarray(0, 100), ZCRCG), subpacket(data.subarray(100), ZCRCE),
    hexHeader(Z.EOF, position(data.length)));
}

test("the CRCs are ZMODEM's", () => {
  assert.equal(crc16(bytes("123456789")), 0x31c3, "CRC-16/XMODEM's check value");
  assert.equal((~crc32(bytes("123456789"))) >>> 0, 0xcbf43926, "CRC-32's check value");
});

test("a file's frames are read back, whole or a byte at a time", () => {
  const data = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);  // every byte value, ZDLE included
  const stream = session(data);
  for (const chunks of [[stream], Array.from(stream, (b) => new Uint8Array([b]))]) {
    const got = feed(chunks);
    assert.deepEqual(got.map((i) => i.header ? "h" + i.header.type : i.data ? "d" + i.end.toString(16) : JSON.stringify(i)),
      ["h4", "d6b", "h10", "d69", "d68", "h11"]);
    assert.equal(new TextDecoder().decode(got[1].data).split("\0")[0], "name.bin");
    assert.deepEqual(concat(got[3].data, got[4].data), data);
    assert.deepEqual(got[5].header.p, position(3000));
  }
});

test("a subpacket that arrives in pieces is decoded as it comes, not scanned again", () => {
  const data = new Uint8Array(40000).fill(0x41);
  const stream = concat(binaryHeader(Z.DATA, position(0)), subpacket(data, ZCRCE));
  const reader = new ZReader();
  reader.push(toBinary(stream.subarray(0, 20000)));
  assert.ok(reader.next().header);
  assert.equal(reader.next(), null);
  const decoded = reader.length;
  assert.ok(decoded > 19000, "what arrived is decoded: " + decoded);
  reader.push(toBinary(stream.subarray(20000, 20001)));
  assert.equal(reader.next(), null);
  assert.equal(reader.length, decoded + 1, "one more byte, one more step");
  reader.push(toBinary(stream.subarray(20001)));
  assert.deepEqual(reader.next().data, data);
});

test("a corrupted subpacket or header is reported and never taken", () => {
  const data = new Uint8Array(200).fill(0x55);
  const stream = session(data);
  // A byte of the second data subpacket changed (0x55 -> 0x56): its CRC no longer matches.
  const changed = stream.slice();
  const at = changed.lastIndexOf(0x55);
  changed[at] = 0x56;
  const got = feed([changed]);
  assert.deepEqual(got.map((i) => i.bad || (i.header ? "h" + i.header.type : "d")), ["h4", "d", "h10", "d", "data", "h11"]);
  assert.match(got[4].why, /CRC/);
  // A hex header with a wrong CRC.
  const header = hexHeader(Z.RINIT, [0, 0, 0, 3]);
  header[14] = header[14] === 0x30 ? 0x31 : 0x30;
  assert.deepEqual(feed([header]).map((i) => i.bad), ["header"]);
  // A binary header with a wrong CRC.
  const binary = binaryHeader(Z.ACK, [1, 2, 3, 4]);
  binary[4] ^= 1;
  assert.deepEqual(feed([binary]).map((i) => i.bad), ["header"]);
});

test("32-bit frames are checked with CRC-32", () => {
  const body = [Z.DATA, 0, 0, 0, 0];
  const headerCrc = ~crc32(body);
  const le = (n) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
  const header = concat(new Uint8Array([ZPAD, ZDLE, ZBIN32]), zescape(new Uint8Array(body.concat(le(headerCrc)))));
  const data = bytes("thirty-two bit data");
  const dataCrc = ~crc32([ZCRCE], crc32(data));
  const packet = concat(zescape(data), new Uint8Array([ZDLE, ZCRCE]), zescape(new Uint8Array(le(dataCrc))));
  const good = feed([concat(header, packet)]);
  assert.equal(good[0].header.type, Z.DATA);
  assert.deepEqual(good[1].data, data);
  const bad = packet.slice();
  bad[0] ^= 2;
  assert.deepEqual(feed([concat(header, bad)]).map((i) => i.bad || "ok"), ["ok", "data"]);
});

test("a subpacket without an end is cut at the limit", () => {
  const stream = concat(binaryHeader(Z.DATA, position(0)), new Uint8Array(maxSubpacket + 10).fill(0x41));
  const got = feed([stream]);
  assert.equal(got[1].bad, "data");
});

test("sz's OO and what follows it", () => {
  const reader = new ZReader();
  reader.push("OOprompt$ ");
  assert.deepEqual(reader.next(), { oo: true });
  assert.equal(reader.takeRest(), "prompt$ ");
});

test("MD5 as RFC 1321 gives it, in one piece or many", () => {
  const digest = (...parts) => { const m = new MD5(); for (const p of parts) m.update(p); return hex(m.digest()); };
  assert.equal(digest(bytes("")), "d41d8cd98f00b204e9800998ecf8427e");
  assert.equal(digest(bytes("abc")), "900150983cd24fb0d6963f7d28e17f72");
  const long = new Uint8Array(1000).map((_, i) => i & 0xff);
  assert.equal(digest(long), digest(long.subarray(0, 63), long.subarray(63, 64), long.subarray(64, 500), long.subarray(500)));
});

test("trzsz values are base64 of zlib", async () => {
  const data = new Uint8Array(5000).map((_, i) => (i * 31) & 0xff);
  const encoded = await encodeValue(data);
  assert.match(encoded, /^[A-Za-z0-9+/]+=*$/);
  assert.deepEqual(await decodeValue(encoded), data);
  await assert.rejects(decodeValue(btoa("not zlib")));
  assert.equal(JSON.parse(action(true)).version, clientVersion);
  assert.equal(JSON.parse(action(false)).confirm, false);
  assert.equal(valueOf("junk#SUCC:12", "SUCC"), "12");
  assert.equal(valueOf("#FAIL:x", "SUCC"), null);
});

test("a download over the limit is refused with the reason and what to use", () => {
  assert.equal(downloadRefusal("a", maxDownloadBytes), null);
  assert.equal(downloadRefusal("a", -1), null, "an unknown size is checked as it arrives");
  const why = downloadRefusal("big.iso", 4 * 1024 * 1024 * 1024);
  assert.match(why, /^big\.iso is 4096 MiB, over the page's limit of 512 MiB/);
  assert.match(why, /scp/);
});

test("a binary string and bytes round-trip", () => {
  const all = new Uint8Array(256).map((_, i) => i);
  assert.deepEqual(fromBinary(toBinary(all)), all);
});
