// Which renderer draws the terminal. WebGL is the fastest where the browser has a GPU
// behind it; a software WebGL (SwiftShader, llvmpipe: what a headless or GPU-less browser
// offers) is slower than the canvas renderer, so it is not taken. ttyd's `rendererType`
// client option picks one outright: "webgl" or "canvas"; "dom" is taken as canvas, since
// xterm.js's DOM renderer writes its styles into inline <style> elements, which the page's
// Content-Security-Policy (style-src 'self') refuses.

const software = /swiftshader|llvmpipe|softpipe|software|basic render|mesa offscreen/i;

export function isSoftware(rendererName) {
  return software.test(rendererName || "");
}

// `probe`: { webgl2: whether a WebGL 2 context can be made, renderer: its unmasked name }.
export function chooseRenderer(preference, probe) {
  if (preference === "dom" || preference === "canvas") return "canvas";
  if (!probe.webgl2) return "canvas";
  if (preference === "webgl") return "webgl";
  return isSoftware(probe.renderer) ? "canvas" : "webgl";
}

// What the browser has: a throwaway WebGL 2 context, asked for the GPU's name and let go.
export function probeWebgl(document) {
  const canvas = document.createElement("canvas");
  let gl = null;
  try {
    gl = canvas.getContext("webgl2");
  } catch (error) { /* no WebGL at all */ }
  if (!gl) return { webgl2: false, renderer: "" };
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER) || "");
  const lose = gl.getExtension("WEBGL_lose_context");
  if (lose) lose.loseContext();
  return { webgl2: true, renderer };
}
