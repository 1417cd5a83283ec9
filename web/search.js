// Search in the scrollback (Ctrl+Shift+F): xterm.js's search addon behind a small box; every
// hit is highlighted, the current one more, and the count shown. Enter finds the next,
// Shift+Enter the previous, Escape closes the box and gives the terminal its focus back.

const decorations = {
  matchBackground: "#6b5a00", matchBorder: "#c8a800", matchOverviewRuler: "#c8a800",
  activeMatchBackground: "#c85a00", activeMatchBorder: "#ffb000", activeMatchColorOverviewRuler: "#ff8000",
};

export function mountSearch(form, addon, focusTerminal) {
  const text = form.querySelector("input");
  const count = form.querySelector("output");
  const options = { decorations };
  const find = (forward) => {
    if (!text.value) return;
    if (forward) addon.findNext(text.value, options); else addon.findPrevious(text.value, options);
  };
  addon.onDidChangeResults(({ resultIndex, resultCount }) => {
    count.value = resultCount === 0 ? "no match" : (resultIndex + 1) + " of " + resultCount;
  });
  text.addEventListener("input", () => find(true));
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      find(!event.shiftKey);
    } else if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  form.querySelector("[data-search=previous]").addEventListener("click", () => find(false));
  form.querySelector("[data-search=next]").addEventListener("click", () => find(true));
  form.querySelector("[data-search=close]").addEventListener("click", () => close());
  form.addEventListener("submit", (event) => event.preventDefault());

  function close() {
    form.hidden = true;
    addon.clearDecorations();
    count.value = "";
    focusTerminal();
  }
  return {
    open() {
      form.hidden = false;
      text.select();
      text.focus();
    },
  };
}
