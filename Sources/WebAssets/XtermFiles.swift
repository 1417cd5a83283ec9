/// xterm.js 5 as Debian 13 packages it (`libjs-xterm`): each file a UMD script that defines
/// one global (`Terminal`, `FitAddon`, …) when loaded as a classic script, so the page loads
/// them from its own origin as they are, under a policy that allows no `eval`. Their source
/// maps are not served; the reference to one is cut so that it is not a 404 in the console.
public enum XtermFiles {
    /// Each served file by the path it is served at and its path in the package's directory.
    public static let scripts: [(served: String, file: String)] = [
        ("/xterm.js", "xterm.js"),
        ("/xterm-addon-fit.js", "addons/fit/xterm-addon-fit.js"),
        ("/xterm-addon-webgl.js", "addons/webgl/xterm-addon-webgl.js"),
        ("/xterm-addon-canvas.js", "addons/canvas/xterm-addon-canvas.js"),
        ("/xterm-addon-unicode11.js", "addons/unicode11/xterm-addon-unicode11.js"),
        ("/xterm-addon-web-links.js", "addons/webLinks/xterm-addon-web-links.js"),
        ("/xterm-addon-search.js", "addons/search/xterm-addon-search.js"),
        ("/xterm-addon-image.js", "addons/image/xterm-addon-image.js"),
    ]
    public static let styles = (served: "/xterm.css", file: "xterm.css")

    /// The file whose presence tells xterm.js 5 from older packages (3.x has no WebGL addon).
    public static let marker = "addons/webgl/xterm-addon-webgl.js"

    /// The first of `candidates` that holds xterm.js 5, or nil.
    public static func find(in candidates: [String], exists: (String) -> Bool) -> String? {
        candidates.first { exists($0 + "/xterm.js") && exists($0 + "/" + marker) }
    }

    static func withoutSourceMap(_ source: [UInt8]) -> [UInt8] {
        let marker = Array("//# sourceMappingURL=".utf8)
        guard let start = source.indices.last(where: { source[$0...].starts(with: marker) }) else { return source }
        return Array(source[..<start])
    }
}
