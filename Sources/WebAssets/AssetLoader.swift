import CShim
import CompressNIO
import FoundationEssentials
import NIOCore
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Where the page's files come from: Cloister's page (a directory of its own files) and the
/// terminal emulator, xterm.js 5 and its addons as Debian 13's `libjs-xterm` has them.
public struct AssetSources: Sendable, Equatable {
    /// Cloister's page: `ownFiles`.
    public var webDirectory: String
    /// xterm.js 5's directory (`xterm.js`, `xterm.css`, `addons/…`; `XtermFiles`).
    public var xtermDirectory: String
    /// A page served at `/` instead of Cloister's (ttyd's `--index`), with its own scripts inline.
    public var index: String?

    public init(webDirectory: String, xtermDirectory: String) {
        self.webDirectory = webDirectory
        self.xtermDirectory = xtermDirectory
    }
}

/// A file or directory the page needs that cannot be used, and why.
public struct AssetError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var problem: String
    public var description: String { "\(path): \(problem)" }
}

/// Reads every asset once, before any worker starts, so a missing file is a start-up error
/// naming it, and workers serve from memory.
public enum AssetLoader {
    /// Cloister's page runs only its own scripts and styles, connects only to its own origin,
    /// and may not be framed. `'wasm-unsafe-eval'` lets the image addon compile its sixel
    /// decoder, WebAssembly carried inside its script: it allows compiling WebAssembly, not
    /// `eval` or `Function` on strings. Decoded images are drawn as `blob:` and `data:` URLs.
    public static let pagePolicy = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; "
        + "img-src 'self' data: blob:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    /// A custom index page brings its own inline scripts and styles (ttyd's does): only
    /// framing is forbidden.
    public static let customPagePolicy = "frame-ancestors 'none'"

    /// Cloister's page: the document, its style, and its scripts (ES modules).
    public static let ownFiles = ["index.html", "cloister.css", "cloister.js", "session.js", "renderer.js", "links.js", "clipboard.js",
                                  "keybar.js", "search.js", "transfer.js", "trzsz.js", "zmodem.js", "md5.js", "bytes.js", "downloads.js"]

    public static func load(_ sources: AssetSources) throws(AssetError) -> AssetBundle {
        var bundle = AssetBundle()
        for name in ownFiles {
            let path = sources.webDirectory + "/" + name
            bundle.assets["/" + name] = try asset(contentType(of: name), try read(path),
                                                  policy: name.hasSuffix(".html") ? pagePolicy : nil)
        }
        bundle.assets["/"] = bundle.assets["/index.html"]
        if let index = sources.index {
            let page = try asset(contentType(of: "index.html"), try read(index), policy: customPagePolicy)
            bundle.assets["/"] = page
            bundle.assets["/index.html"] = page
        }
        // xterm.js 3 (Debian 12's package) has an xterm.js too, and none of the addons; a
        // directory without an xterm.js is reported by the read below.
        if access(sources.xtermDirectory + "/" + XtermFiles.scripts[0].file, F_OK) == 0,
           access(sources.xtermDirectory + "/" + XtermFiles.marker, F_OK) != 0 {
            throw AssetError(path: sources.xtermDirectory, problem: "not xterm.js 5 (no \(XtermFiles.marker); Debian 13's libjs-xterm has it)")
        }
        for (served, file) in XtermFiles.scripts {
            bundle.assets[served] = try asset(contentType(of: file), XtermFiles.withoutSourceMap(try read(sources.xtermDirectory + "/" + file)))
        }
        bundle.assets[XtermFiles.styles.served] = try asset(contentType(of: XtermFiles.styles.file),
                                                            try read(sources.xtermDirectory + "/" + XtermFiles.styles.file))
        return bundle
    }

    static func contentType(of name: String) -> String {
        if name.hasSuffix(".html") { return "text/html; charset=utf-8" }
        if name.hasSuffix(".js") { return "text/javascript; charset=utf-8" }
        if name.hasSuffix(".css") { return "text/css; charset=utf-8" }
        return "application/octet-stream"
    }

    static func asset(_ type: String, _ body: [UInt8], policy: String? = nil) throws(AssetError) -> Asset {
        Asset(contentType: type, securityPolicy: policy, body: body, gzipped: try gzip(body))
    }

    /// The gzip form, or nil when it is not smaller.
    static func gzip(_ bytes: [UInt8]) throws(AssetError) -> [UInt8]? {
        var buffer = ByteBuffer(bytes: bytes)
        do {
            let compressed = try buffer.compress(with: .gzip(configuration: .init(compressionLevel: .bestCompression)))
            return compressed.readableBytes < bytes.count ? Array(compressed.readableBytesView) : nil
        } catch {
            throw AssetError(path: "(gzip)", problem: "\(error)")
        }
    }

    /// A whole regular file, at most `AssetBundle.maxBytes`.
    static func read(_ path: String) throws(AssetError) -> [UInt8] {
        let fd: SystemPackage.FileDescriptor
        do {
            fd = try SystemPackage.FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch {
            throw AssetError(path: path, problem: "\(SystemCallError(call: "open", errno: error as? Errno ?? .ioError))")
        }
        defer { try? fd.close() }
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else {
            throw AssetError(path: path, problem: "\(SystemCallError(call: "fstat", errno: Errno(rawValue: errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw AssetError(path: path, problem: "not a regular file") }
        do {
            return try fd.readToEnd(limit: AssetBundle.maxBytes)
        } catch {
            throw AssetError(path: path, problem: "\(error)")
        }
    }

    /// The bundle in a sealed memory file, for the workers to read. Close-on-exec: the
    /// supervisor gives each worker a read-only descriptor of its own.
    public static func sealedFile(_ bundle: AssetBundle) throws(SystemCallError) -> SystemPackage.FileDescriptor {
        let bytes = bundle.encoded
        var failed: UnsafePointer<CChar>?
        let fd = bytes.withUnsafeBytes { cloister_sealed_memfd("cloister-assets", $0.baseAddress, $0.count, &failed) }
        guard fd >= 0 else {
            throw SystemCallError(call: failed.map { String(cString: $0) } ?? "memfd_create", errno: Errno(rawValue: errno))
        }
        return SystemPackage.FileDescriptor(rawValue: fd)
    }

    /// Reads a bundle from the descriptor a worker was given, to its end, and closes it.
    public static func receive(_ file: SystemPackage.FileDescriptor) throws -> AssetBundle {
        defer { try? file.close() }
        return try AssetBundle(decoding: try file.readToEnd(limit: AssetBundle.maxBytes))
    }
}
