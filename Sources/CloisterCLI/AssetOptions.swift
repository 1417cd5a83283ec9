import ArgumentParser
import FoundationEssentials
import SystemPackage
import WebAssets

#if canImport(Glibc)
import Glibc
#endif

/// Where the page's files come from: given to `cloister serve` (and `policy learn`), read
/// once there and handed to the workers.
struct AssetOptions: ParsableArguments {
    @Option(help: "Directory with Cloister's page (index.html, cloister.js, …). Default: web, else /usr/share/cloister/web.")
    var webDir: String?
    @Option(help: "xterm.js 5's directory (Debian 13's libjs-xterm). Default: the xterm directory beside the page's, else .build/xterm beside it (make fetches it there), else /usr/share/javascript/xterm.")
    var xtermDir: String?
    @Option(help: "A page to serve at / instead of Cloister's (ttyd's --index), e.g. ttyd's own web client.")
    var index: String?

    static let defaultWebDirectories = ["web", "/usr/share/cloister/web"]

    struct Problem: Error {
        var option: String
        var problem: String
    }

    /// The assets, read and checked now, in the sealed file the workers read.
    func sealedFile() throws(Problem) -> FileDescriptor {
        let web = webDir ?? Self.defaultWebDirectories.first {
            FileManager.default.fileExists(atPath: "\($0)/index.html")
        } ?? Self.defaultWebDirectories[0]
        let xterm: String
        if let xtermDir {
            xterm = xtermDir
        } else {
            let candidates = Self.xtermCandidates(web: web)
            let exists = { (path: String) in FileManager.default.fileExists(atPath: path) }
            // A page directory that is not one is the first thing to say.
            let found = XtermFiles.find(in: candidates, exists: exists) ?? (exists(web + "/index.html") ? nil : candidates[0])
            guard let found else {
                throw Problem(option: "--xterm-dir", problem: "not given, and no xterm.js 5 (\(XtermFiles.marker)) in \(candidates.joined(separator: ", "))"
                              + " (make fetches Debian 13's libjs-xterm into .build/xterm)")
            }
            xterm = found
        }
        var sources = AssetSources(webDirectory: web, xtermDirectory: xterm)
        sources.index = index
        let bundle: AssetBundle
        do {
            bundle = try AssetLoader.load(sources)
        } catch {
            let option = error.path == index ? "--index" : error.path == xterm || error.path.hasPrefix(xterm + "/") ? "--xterm-dir" : "--web-dir"
            throw Problem(option: option, problem: "\(error)")
        }
        do {
            return try AssetLoader.sealedFile(bundle)
        } catch {
            throw Problem(option: "--web-dir", problem: "\(error)")
        }
    }

    /// An installed page's xterm.js is beside it (PREFIX/share/cloister/xterm); a checkout's
    /// is where make fetched it; a Debian 13 host has it in its own package.
    static func xtermCandidates(web: String) -> [String] {
        let trimmed = web.hasSuffix("/") && web.count > 1 ? String(web.dropLast()) : web
        let base = trimmed.lastIndex(of: "/").map { String(trimmed[...$0]) } ?? ""
        return [base + "xterm", base + ".build/xterm", "/usr/share/javascript/xterm"]
    }
}
