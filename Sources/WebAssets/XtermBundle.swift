import FoundationEssentials
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Debian packages xterm.js as CommonJS modules (`node-xterm`), and its browser build
/// (`libjs-xterm`'s `xterm.js`) is only a stub that `require`s them. This joins the modules
/// into one classic script, each wrapped in a function that gets its own `require`,
/// `module` and `exports`, behind a loader of a few lines: the page then loads xterm.js
/// from its own origin under a policy that allows no `eval` and no inline script.
enum XtermBundle {
    /// Module ids the page needs, relative to the library (addons prefixed `addons/`).
    static let entry = "public/Terminal", fit = "addons/fit/fit"

    static func script(library: String, addons: String) throws(AssetError) -> [UInt8] {
        var modules: [(id: String, source: [UInt8])] = []
        var info = stat()
        guard stat(library, &info) == 0 else {
            throw AssetError(path: library, problem: "\(SystemCallError(call: "stat", errno: Errno(rawValue: errno))) (install node-xterm)")
        }
        guard info.st_mode & S_IFMT == S_IFDIR, let files = try? FileManager.default.subpathsOfDirectory(atPath: library) else {
            throw AssetError(path: library, problem: "not a readable directory")
        }
        for file in files.sorted() where file.hasSuffix(".js") && !file.hasSuffix(".test.js") {
            modules.append((String(file.dropLast(3)), try AssetLoader.read(library + "/" + file)))
        }
        guard modules.contains(where: { $0.id == entry }) else {
            throw AssetError(path: library + "/" + entry + ".js", problem: "missing: not xterm.js's lib directory (install node-xterm)")
        }
        modules.append((fit, try AssetLoader.read(addons + "/fit/fit.js")))
        var out = Array(loader.utf8)
        for (id, source) in modules {
            out += Array("modules[\"\(id)\"] = function (require, module, exports) {\n".utf8)
            out += withoutSourceMap(source)
            out += Array("\n};\n".utf8)
        }
        out += Array("window.Terminal = load(\"\(entry)\").Terminal;\nload(\"\(fit)\").apply(window.Terminal);\n})();\n".utf8)
        return out
    }

    /// Resolves `require` relative to the requiring module, as Node does for relative ids.
    static let loader = """
    (function () {
    "use strict";
    var modules = Object.create(null), loaded = Object.create(null);
    function resolve(from, name) {
      var parts = from.split("/");
      parts.pop();
      name.split("/").forEach(function (part) {
        if (part === "..") parts.pop(); else if (part !== ".") parts.push(part);
      });
      var id = parts.join("/").replace(/\\.js$/, "");
      return id in modules ? id : id + "/index";
    }
    function load(id) {
      if (id in loaded) return loaded[id].exports;
      if (!(id in modules)) throw new Error("xterm.js module not bundled: " + id);
      var module = loaded[id] = { exports: {} };
      modules[id](function (name) { return load(resolve(id, name)); }, module, module.exports);
      return module.exports;
    }

    """

    /// The maps are not served; a reference to one would only be a 404 in the console.
    static func withoutSourceMap(_ source: [UInt8]) -> [UInt8] {
        let marker = Array("//# sourceMappingURL=".utf8)
        guard let start = source.indices.last(where: { source[$0...].starts(with: marker) }) else { return source }
        return Array(source[..<start])
    }
}
