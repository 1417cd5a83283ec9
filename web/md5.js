// MD5 (RFC 1321), incremental: trzsz checks every file with it, and WebCrypto has none.
export function MD5() {
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
