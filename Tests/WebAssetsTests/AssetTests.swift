import Foundation
import TestSupport
import WebAssets
import XCTest

/// The bundle the supervisor builds and the workers decode, and what the loader refuses.
final class AssetTests: XCTestCase {
    private func loaded(_ change: (inout AssetSources) -> Void = { _ in }) throws(AssetError) -> AssetBundle {
        var sources = AssetSources(webDirectory: packageRoot + "/web", xtermDirectory: xtermDirectory)
        change(&sources)
        return try AssetLoader.load(sources)
    }

    func testTheLoadedBundleHasThePageAndXtermAndSurvivesEncoding() throws {
        let bundle = try loaded()
        let page = Set(AssetLoader.ownFiles.map { "/" + $0 } + ["/"])
        let xterm = Set(XtermFiles.scripts.map(\.served) + [XtermFiles.styles.served])
        XCTAssertEqual(Set(bundle.assets.keys), page.union(xterm))
        XCTAssertEqual(xterm.count, 9, "xterm.js, its style and seven addons")
        XCTAssertEqual(bundle["/"], bundle["/index.html"])
        XCTAssertEqual(bundle["/"]?.securityPolicy, AssetLoader.pagePolicy)
        XCTAssertNil(bundle["/xterm.js"]?.securityPolicy)
        let library = String(decoding: try XCTUnwrap(bundle["/xterm.js"]).body, as: UTF8.self)
        XCTAssertTrue(library.contains("Terminal"))
        for path in xterm {
            XCTAssertFalse(String(decoding: try XCTUnwrap(bundle[path]).body, as: UTF8.self).contains("sourceMappingURL"),
                           "\(path): no reference to a map that is not served")
        }
        XCTAssertEqual(try AssetBundle(decoding: bundle.encoded), bundle)
    }

    /// The page's modules import each other: one that is not served breaks the page, and
    /// make install installs what web/ holds.
    func testEveryFileOfThePageIsServed() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/web")
            .filter { $0.hasSuffix(".js") || $0.hasSuffix(".html") || $0.hasSuffix(".css") }
        XCTAssertEqual(Set(files), Set(AssetLoader.ownFiles))
    }

    func testTheValidatorFollowsTheBytes() {
        let a = Asset(contentType: "text/plain", body: Array("one".utf8), gzipped: nil)
        let b = Asset(contentType: "text/plain", body: Array("two".utf8), gzipped: nil)
        XCTAssertNotEqual(a.etag, b.etag)
        XCTAssertEqual(a.etag, Asset(contentType: "text/css", body: Array("one".utf8), gzipped: nil).etag)
        XCTAssertTrue(a.etag.hasPrefix("\"") && a.etag.hasSuffix("-3\""), a.etag)
        XCTAssertNotEqual(a.etag, a.gzippedETag)
    }

    /// Every prefix and every one-byte change of an encoded bundle decodes or is refused
    /// with an error; none traps.
    func testADamagedBundleIsRefused() throws {
        var bundle = AssetBundle()
        bundle.assets["/a"] = Asset(contentType: "text/plain", securityPolicy: "x", body: Array("hello".utf8), gzipped: [1, 2])
        bundle.assets["/b.js"] = Asset(contentType: "text/javascript", body: [], gzipped: nil)
        let encoded = bundle.encoded
        for length in 0..<encoded.count {
            XCTAssertThrowsError(try AssetBundle(decoding: Array(encoded.prefix(length))), "prefix \(length)")
        }
        XCTAssertThrowsError(try AssetBundle(decoding: encoded + [0]))
        for index in encoded.indices {
            var changed = encoded
            changed[index] ^= 0xff
            _ = try? AssetBundle(decoding: changed)
        }
    }

    func testAMissingSourceNamesItsPath() {
        let cases: [(String, (inout AssetSources) -> Void)] = [
            ("/nonexistent/web/index.html", { $0.webDirectory = "/nonexistent/web" }),
            ("/nonexistent/xterm/xterm.js", { $0.xtermDirectory = "/nonexistent/xterm" }),
            ("/nonexistent/index.html", { $0.index = "/nonexistent/index.html" }),
        ]
        for (path, change) in cases {
            XCTAssertThrowsError(try loaded(change), path) { error in
                XCTAssertEqual((error as? AssetError)?.path, path, "\(error)")
                XCTAssertTrue("\(error)".contains("ENOENT") || "\(error)".contains("No such file"), "\(error)")
            }
        }
        XCTAssertThrowsError(try loaded { $0.index = "/tmp" }) { error in
            XCTAssertEqual("\(error)", "/tmp: not a regular file")
        }
        XCTAssertThrowsError(try loaded { $0.xtermDirectory = packageRoot + "/web" }) { error in
            XCTAssertEqual((error as? AssetError)?.path, packageRoot + "/web/xterm.js", "\(error)")
        }
    }

    func testACustomIndexReplacesThePageWithItsOwnPolicy() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("index-\(getpid()).html").path
        try Data("<html>custom</html>".utf8).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let bundle = try loaded { $0.index = file }
        XCTAssertEqual(bundle["/"]?.body, Array("<html>custom</html>".utf8))
        XCTAssertEqual(bundle["/index.html"], bundle["/"])
        XCTAssertEqual(bundle["/"]?.securityPolicy, AssetLoader.customPagePolicy)
    }
}
