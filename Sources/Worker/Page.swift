/// A minimal terminal page speaking ttyd's protocol: enough to use a shell from a browser.
/// ttyd's own web client speaks the same protocol against `/token` and `/ws`.
enum Page {
    static let html = """
    <!doctype html>
    <html><head><meta charset="utf-8"><title>cloister</title>
    <style>body{margin:0;background:#111;color:#ddd}pre{margin:0;padding:8px;font:14px monospace;white-space:pre-wrap;outline:none;min-height:100vh}</style>
    </head><body><pre id="t" tabindex="0"></pre>
    <script>
    const t = document.getElementById('t'), enc = new TextEncoder(), dec = new TextDecoder();
    fetch('token').then(r => r.json()).then(({token}) => {
      const ws = new WebSocket(location.href.replace(/^http/, 'ws').replace(/[^/]*$/, 'ws'), ['tty']);
      ws.binaryType = 'arraybuffer';
      const send = (type, text) => ws.send(enc.encode(type + text));
      ws.onopen = () => ws.send(JSON.stringify({AuthToken: token, columns: 100, rows: 30}));
      ws.onmessage = e => {
        const d = new Uint8Array(e.data), type = String.fromCharCode(d[0]);
        if (type === '0') { t.textContent += dec.decode(d.slice(1)).replace(/\\x1b\\[[0-9;?]*[A-Za-z]/g, ''); scrollTo(0, document.body.scrollHeight); }
        if (type === '1') document.title = dec.decode(d.slice(1));
      };
      ws.onclose = e => { t.textContent += '\\n[closed: ' + (e.reason || e.code) + ']\\n'; };
      t.onkeydown = e => {
        const keys = {Enter: '\\r', Backspace: '\\x7f', Tab: '\\t', Escape: '\\x1b', ArrowUp: '\\x1b[A', ArrowDown: '\\x1b[B', ArrowRight: '\\x1b[C', ArrowLeft: '\\x1b[D'};
        let s = keys[e.key] || (e.key.length === 1 ? e.key : '');
        if (e.ctrlKey && e.key.length === 1) s = String.fromCharCode(e.key.toUpperCase().charCodeAt(0) - 64);
        if (s) { send('0', s); e.preventDefault(); }
      };
      t.focus();
    });
    </script></body></html>
    """
}
