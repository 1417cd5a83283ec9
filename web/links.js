// Links in the terminal, OSC 8 hyperlinks (`ls --hyperlink`, gcc, systemctl) and plain URLs
// alike: only web and mail addresses open, in a new tab that cannot reach back to this page
// (`noopener`) and is not told where it came from (`noreferrer`). A `javascript:`, `data:` or
// `file:` link a program prints does nothing.

const allowed = new Set(["http:", "https:", "mailto:"]);

// The address to open, or null when the text is not a link that may be opened.
export function safeLink(text) {
  let url;
  try {
    url = new URL(text);
  } catch (error) {
    return null;
  }
  return allowed.has(url.protocol) ? url.href : null;
}

// Opens `text` through `open` (window.open) when it is a link that may be; says whether.
export function openLink(open, text) {
  const href = safeLink(text);
  if (!href) return false;
  open(href, "_blank", "noopener,noreferrer");
  return true;
}
