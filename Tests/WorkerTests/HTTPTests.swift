import NIOHTTP1
import WebAssets
import XCTest
@testable import Worker

/// The worker's HTTP side under an in-memory channel: routes, the credential check (the
/// vault's answer), refusals, limits.
final class HTTPTests: XCTestCase {
    func testThePageAndTheTokenNeedTheCredential() async throws {
        let w = try await WorkerUnderTest()
        try await w.send(Requests.get("/"))
        var text = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), text)
        XCTAssertTrue(text.contains("WWW-Authenticate: Basic realm=\"cloister\""), text)
        w.consume()
        try await w.send(Requests.get("/", ["Authorization": Requests.basic]))
        text = try await w.text(until: "</html>")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 200 OK\r\n"), text)
        XCTAssertTrue(text.contains("Content-Type: text/html; charset=utf-8"), text)
        XCTAssertTrue(text.contains("X-Frame-Options: DENY"), text)
        XCTAssertTrue(text.contains("Content-Security-Policy: \(AssetLoader.pagePolicy)"), text)
        w.consume()
        try await w.send(Requests.get("/token", ["Authorization": Requests.basic]))
        text = try await w.text(until: "}")
        XCTAssertTrue(text.contains("{\"token\": \"dXNlcjpwYXNz\"}"), text)
        await w.finish()
    }

    /// Without a vault to ask (it is restarting), the credential is not called wrong: 503 with
    /// Retry-After, which the page retries, instead of 401, which says to log in again.
    func testNoVaultIsAServiceUnavailableNotAWrongCredential() async throws {
        let vault = FakeVault()
        vault.gone.withLock { $0 = true }
        let w = try await WorkerUnderTest(vault: vault)
        try await w.send(Requests.get("/token", ["Authorization": Requests.basic]))
        let text = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), text)
        XCTAssertTrue(text.contains("Retry-After: 1"), text)
        XCTAssertFalse(text.contains("WWW-Authenticate"), text)
        await w.finish()
    }

    func testRefusalsNameTheirCause() async throws {
        let cases: [(String, String)] = [
            (Requests.get("/", method: "POST"), "HTTP/1.1 405 Method Not Allowed"),
            (Requests.get("/missing"), "HTTP/1.1 404 Not Found"),
            (Requests.get("/ws"), "HTTP/1.1 400 Bad Request"),
            (Requests.upgrade(origin: "http://evil.example"), "HTTP/1.1 403 Forbidden"),
            (Requests.upgrade(protocols: nil), "HTTP/1.1 400 Bad Request"),
            (Requests.upgrade(path: "/other"), "HTTP/1.1 404 Not Found"),
            (Requests.upgrade(extra: ["Sec-WebSocket-Key": ""]).replacingOccurrences(of: "Sec-WebSocket-Key: \r\n", with: ""),
             "HTTP/1.1 400 Bad Request"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 20_000))\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"),
            ("NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        ]
        for (request, status) in cases {
            let w = try await WorkerUnderTest()
            try await w.send(request)
            let text = try await w.text(until: "\r\n\r\n")
            XCTAssertTrue(text.hasPrefix(status + "\r\n"), "\(request.prefix(60)): \(text)")
            await w.finish()
        }
    }

    func testHeadHasNoBodyAndAllowsOnlyGetAndHead() async throws {
        let w = try await WorkerUnderTest()
        try await w.send(Requests.get("/missing", method: "HEAD"))
        let text = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 404 Not Found"), text)
        XCTAssertTrue(text.hasSuffix("\r\n\r\n"), "no body: \(text)")
        w.consume()
        try await w.send(Requests.get("/", method: "DELETE"))
        let allow = try await w.text(until: "Allow")
        XCTAssertTrue(allow.contains("Allow: GET, HEAD"), allow)
        await w.finish()
    }

    func testEveryAssetNeedsTheCredentialAndHasItsType() async throws {
        let types = ["/xterm.js": "text/javascript", "/cloister.js": "text/javascript", "/xterm.css": "text/css",
                     "/cloister.css": "text/css", "/index.html": "text/html"]
        for (path, type) in types {
            let w = try await WorkerUnderTest()
            try await w.send(Requests.get(path))
            let refused = try await w.text(until: "\r\n\r\n")
            XCTAssertTrue(refused.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), "\(path): \(refused)")
            w.consume()
            try await w.send(Requests.get(path, ["Authorization": Requests.basic]))
            let head = try await w.text(until: "\r\n\r\n")
            XCTAssertTrue(head.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(path): \(head)")
            XCTAssertTrue(head.contains("Content-Type: \(type); charset=utf-8\r\n"), "\(path): \(head)")
            XCTAssertTrue(head.contains("X-Content-Type-Options: nosniff\r\n"), "\(path): \(head)")
            XCTAssertFalse(head.contains("Content-Encoding"), "not gzipped unless asked: \(head)")
            await w.finish()
        }
    }

    /// An asset is sent whole once; then If-None-Match with its validator gets 304 and no body.
    func testTheValidatorSavesTheTransfer() async throws {
        let asset = try XCTUnwrap(try WorkerUnderTest.assets.get()["/xterm.js"])
        let w = try await WorkerUnderTest()
        try await w.send(Requests.get("/xterm.js", ["Authorization": Requests.basic]))
        let bytes = try await w.output { $0.count >= asset.body.count }
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(text.contains("ETag: \(asset.etag)\r\n"), String(text.prefix(400)))
        XCTAssertTrue(text.contains("Content-Length: \(asset.body.count)\r\n"), String(text.prefix(400)))
        XCTAssertTrue(bytes.suffix(asset.body.count).elementsEqual(asset.body), "the body is the asset's bytes")
        w.consume()
        try await w.send(Requests.get("/xterm.js", ["Authorization": Requests.basic, "If-None-Match": "\"other\", \(asset.etag)"]))
        let again = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(again.hasPrefix("HTTP/1.1 304 Not Modified\r\n"), again)
        XCTAssertTrue(again.hasSuffix("\r\n\r\n") && !again.contains("Content-Length"), "no body: \(again)")
        XCTAssertTrue(again.contains("ETag: \(asset.etag)\r\n"), again)
        w.consume()
        try await w.send(Requests.get("/xterm.js", ["Authorization": Requests.basic, "If-None-Match": "\"stale-1\""]))
        let stale = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(stale.hasPrefix("HTTP/1.1 200 OK\r\n"), stale)
        await w.finish()
    }

    func testGzipOnlyWhenTheClientTakesIt() async throws {
        let asset = try XCTUnwrap(try WorkerUnderTest.assets.get()["/xterm.js"])
        let gzipped = try XCTUnwrap(asset.gzipped, "xterm.js compresses")
        XCTAssertLessThan(gzipped.count, asset.body.count / 3)
        let w = try await WorkerUnderTest()
        try await w.send(Requests.get("/xterm.js", ["Authorization": Requests.basic, "Accept-Encoding": "br, gzip;q=0.8"]))
        let bytes = try await w.output { $0.count >= gzipped.count }
        let text = String(decoding: bytes.prefix(600), as: UTF8.self)
        XCTAssertTrue(text.contains("Content-Encoding: gzip\r\n"), text)
        XCTAssertTrue(text.contains("Content-Length: \(gzipped.count)\r\n"), text)
        XCTAssertTrue(text.contains("ETag: \(asset.gzippedETag)\r\n"), text)
        XCTAssertTrue(bytes.suffix(gzipped.count).elementsEqual(gzipped))
        await w.finish()
        for refusing in ["gzip;q=0", "identity", "br, *;q=0", ""] {
            XCTAssertFalse(HTTPHandler.acceptsGzip(HTTPHeaders([("Accept-Encoding", refusing)])), refusing)
        }
        for taking in ["GZIP", "deflate, gzip", "*", "x-gzip;q=0.5", "gzip;q=1.0, *;q=0"] {
            XCTAssertTrue(HTTPHandler.acceptsGzip(HTTPHeaders([("Accept-Encoding", taking)])), taking)
        }
    }
}
