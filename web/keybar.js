// The key bar on touch screens: the keys a phone's keyboard lacks (Esc, Tab, arrows, and
// Ctrl and Alt as sticky modifiers: tapped, they apply to the next key, tapped twice they
// stay until tapped again). What the keys send is pure (`withModifiers`, `keyBytes`); the
// bar itself is a row of buttons that never take the focus from the terminal.

export const keys = [
  { label: "Esc", key: "Escape" },
  { label: "Ctrl", modifier: "ctrl" },
  { label: "Alt", modifier: "alt" },
  { label: "Tab", key: "Tab" },
  { label: "←", key: "ArrowLeft", title: "left" },
  { label: "↑", key: "ArrowUp", title: "up" },
  { label: "↓", key: "ArrowDown", title: "down" },
  { label: "→", key: "ArrowRight", title: "right" },
  { label: "|", text: "|" },
  { label: "~", text: "~" },
  { label: "/", text: "/" },
  { label: "-", text: "-" },
];

const arrows = { ArrowUp: "A", ArrowDown: "B", ArrowRight: "C", ArrowLeft: "D" };

// What a named key sends, with the modifiers held and the terminal's cursor key mode
// (`applicationCursor`: DECCKM, which vi and less set) as xterm does.
export function keyBytes(key, modifiers, applicationCursor) {
  if (key in arrows) {
    const code = 1 + (modifiers.alt ? 2 : 0) + (modifiers.ctrl ? 4 : 0);
    if (code > 1) return "\x1b[1;" + code + arrows[key];
    return (applicationCursor ? "\x1bO" : "\x1b[") + arrows[key];
  }
  if (key === "Escape") return modifiers.alt ? "\x1b\x1b" : "\x1b";
  if (key === "Tab") return modifiers.ctrl ? "\t" : modifiers.alt ? "\x1b\t" : "\t";
  return "";
}

// Text typed while modifiers are held: Ctrl makes a letter (and @ [ \ ] ^ _ ?) its control
// character, Alt puts ESC before it. Only a single character takes Ctrl; longer text (a
// word the phone's keyboard completed) goes as it is, after ESC with Alt.
export function withModifiers(text, modifiers) {
  let out = text;
  if (modifiers.ctrl && [...text].length === 1) {
    const c = text.toUpperCase().charCodeAt(0);
    if (c >= 0x40 && c <= 0x5f) out = String.fromCharCode(c & 0x1f);
    else if (text === "?") out = "\x7f";
    else if (text === " ") out = "\x00";
  }
  return modifiers.alt ? "\x1b" + out : out;
}

// Sticky modifiers: off, then once (the next key), then locked, then off.
export class Modifiers {
  constructor() {
    this.state = { ctrl: "off", alt: "off" };
  }
  tap(name) {
    const next = { off: "once", once: "locked", locked: "off" };
    this.state[name] = next[this.state[name]];
  }
  get held() {
    return { ctrl: this.state.ctrl !== "off", alt: this.state.alt !== "off" };
  }
  // After a key: what was held once is let go.
  used() {
    for (const name of ["ctrl", "alt"]) if (this.state[name] === "once") this.state[name] = "off";
  }
}

// The bar in `element`: `send(text)` sends to the terminal, `applicationCursor()` reads its
// mode, `changed()` is called when a modifier changes (the page shows it).
export function mountKeyBar(element, modifiers, { send, applicationCursor, focus }) {
  for (const entry of keys) {
    const button = element.ownerDocument.createElement("button");
    button.type = "button";
    button.textContent = entry.label;
    button.setAttribute("aria-label", entry.title || entry.label);
    if (entry.modifier) {
      button.dataset.modifier = entry.modifier;
      button.setAttribute("aria-pressed", "false");
    }
    // The terminal keeps the focus (and the phone its keyboard): the button never takes it.
    button.addEventListener("pointerdown", (event) => event.preventDefault());
    button.addEventListener("click", () => {
      if (entry.modifier) {
        modifiers.tap(entry.modifier);
      } else {
        send(entry.key ? keyBytes(entry.key, modifiers.held, applicationCursor()) : withModifiers(entry.text, modifiers.held));
        modifiers.used();
      }
      showModifiers(element, modifiers);
      focus();
    });
    element.appendChild(button);
  }
  element.hidden = false;
}

export function showModifiers(element, modifiers) {
  for (const button of element.querySelectorAll("button[data-modifier]")) {
    const state = modifiers.state[button.dataset.modifier];
    button.setAttribute("aria-pressed", String(state !== "off"));
    button.dataset.state = state;
  }
}
