// trzsz (https://trzsz.github.io/) as the shell's `trz` and `tsz` speak it: lines
// `#TYPE:VALUE\n`; strings and data are base64 of zlib (RFC 1950, what the Compression
// Streams API calls "deflate"). Pure: bytes in, bytes out.
import { toBinary, fromBinary } from "./bytes.js";

// What `trz` and `tsz` print first: the cursor saved (their end restores it and clears what
// follows, so nothing of the protocol stays on the screen), then the mode and version.
export const magic = "\x1b7::TRZSZ:TRANSFER:";

// The trzsz release whose protocol (number 1, text mode, no directories) this page speaks:
// trz and tsz read it from the page's first answer to decide what they may send.
export const clientVersion = "1.1.7";
export const protocol = 1;

async function through(stream, bytes) {
  const piped = new Blob([bytes]).stream().pipeThrough(stream);
  return new Uint8Array(await new Response(piped).arrayBuffer());
}

export async function encodeValue(bytes) {
  return btoa(toBinary(await through(new CompressionStream("deflate"), bytes)));
}

// Throws on text that is not base64 or bytes that are not zlib.
export async function decodeValue(text) {
  return through(new DecompressionStream("deflate"), fromBinary(atob(text)));
}

// The page's first answer: whether it takes the transfer, and what it is.
export function action(confirm) {
  return JSON.stringify({ lang: "js", confirm, version: clientVersion, support_dir: false, protocol, binary: false });
}

// A line's value for `type` ("#TYPE:VALUE", anywhere in the line: a terminal may put junk
// before it), or null.
export function valueOf(line, type) {
  const at = line.indexOf("#" + type + ":");
  return at < 0 ? null : line.slice(at + type.length + 2);
}
