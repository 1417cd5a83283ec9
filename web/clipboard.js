// OSC 52: a program in the terminal (vim, tmux with `set-clipboard on`, a remote shell's
// yank) sets the clipboard: `ESC ] 52 ; TARGETS ; BASE64 BEL`. TARGETS may be empty, which is
// what tmux sends; "c", "p", "s" and the cut buffers 0-7 all mean the one clipboard a page
// has. A query ("?") asks to read the clipboard: refused, a program in the terminal never
// reads what the user copied elsewhere.

export const maxBase64 = 1 << 20;

// The text to copy, or null (a query, a malformed or oversized payload, text that is not
// UTF-8). `data`: what follows "52;".
export function osc52Text(data) {
  const split = data.indexOf(";");
  if (split < 0) return null;
  const targets = data.slice(0, split), payload = data.slice(split + 1);
  if (!/^[cpqs0-7]*$/.test(targets)) return null;
  if (payload === "?" || payload.length > maxBase64 || !/^[A-Za-z0-9+/]*={0,2}$/.test(payload)) return null;
  let binary;
  try {
    binary = atob(payload);
  } catch (error) {
    return null;
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    return null;
  }
}
