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
    @Option(help: "Directory with Cloister's page (index.html, cloister.js, cloister.css, transfer.js). Default: web, else /usr/share/cloister/web.")
    var webDir: String?
    @Option(help: "xterm.js as CommonJS modules (Debian's node-xterm).") var xtermLib = AssetSources(webDirectory: "").xtermLibrary
    @Option(help: "xterm.js's addons, for fit/fit.js (Debian's libjs-xterm).") var xtermAddons = AssetSources(webDirectory: "").xtermAddons
    @Option(help: "A page to serve at / instead of Cloister's (ttyd's --index), e.g. ttyd's own web client.")
    var index: String?

    static let defaultWebDirectories = ["web", "/usr/share/cloister/web"]

    struct Problem: Error {
        var option: String
        var problem: String
    }

    /// The assets, read and checked now, in the sealed file the workers read.
    func sealedFile() throws(Problem) -> FileDescriptor {
        var sources = AssetSources(webDirectory: webDir ?? Self.defaultWebDirectories.first {
            FileManager.default.fileExists(atPath: "\($0)/index.html")
        } ?? Self.defaultWebDirectories[0])
        sources.xtermLibrary = xtermLib
        sources.xtermAddons = xtermAddons
        sources.index = index
        let bundle: AssetBundle
        do {
            bundle = try AssetLoader.load(sources)
        } catch {
            let option = error.path == index ? "--index"
                : error.path.hasPrefix(xtermLib) ? "--xterm-lib"
                : error.path.hasPrefix(xtermAddons) ? "--xterm-addons" : "--web-dir"
            throw Problem(option: option, problem: "\(error)")
        }
        do {
            return try AssetLoader.sealedFile(bundle)
        } catch {
            throw Problem(option: "--web-dir", problem: "\(error)")
        }
    }
}
