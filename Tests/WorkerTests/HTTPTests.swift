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
        XCTAssertTrue(text.contains("Content-Type: text/html;charset=utf-8"), text)
        XCTAssertTrue(text.contains("X-Frame-Options: DENY"), text)
        w.consume()
        try await w.send(Requests.get("/token", ["Authorization": Requests.basic]))
        text = try await w.text(until: "}")
        XCTAssertTrue(text.contains("{\"token\": \"dXNlcjpwYXNz\"}"), text)
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
}
