import XCTest
@testable import Worker

/// ttyd's --base-path: every route under the prefix, the bare prefix redirected, nothing
/// served outside it.
final class BasePathTests: XCTestCase {
    func testPrefixesAreCheckedAndNormalised() throws {
        XCTAssertEqual(try BasePath("").prefix, "")
        XCTAssertEqual(try BasePath("/").prefix, "")
        XCTAssertEqual(try BasePath("/term/").prefix, "/term")
        XCTAssertEqual(try BasePath("/a/b-c.d_e~f").prefix, "/a/b-c.d_e~f")
        for bad in ["term", "/a//b", "/a/../b", "/./a", "/a b", "/a?b", "/a%2F", "/é", "/" + String(repeating: "a", count: 300)] {
            XCTAssertThrowsError(try BasePath(bad), bad)
        }
    }

    func testRoutes() throws {
        let base = try BasePath("/term")
        XCTAssertEqual(base.route("/term"), .redirect(location: "/term/"))
        XCTAssertEqual(base.route("/term?arg=1"), .redirect(location: "/term/?arg=1"))
        XCTAssertEqual(base.route("/term/"), .path("/"))
        XCTAssertEqual(base.route("/term/ws?x"), .path("/ws"))
        XCTAssertEqual(base.route("/terminal"), .outside)
        XCTAssertEqual(base.route("/"), .outside)
        XCTAssertEqual(BasePath.root.route("/ws"), .path("/ws"))
        XCTAssertEqual(BasePath.root.route("*"), .outside)
    }

    private func worker() async throws -> WorkerUnderTest {
        var settings = WebWorker.Settings()
        settings.basePath = try BasePath("/term")
        return try await WorkerUnderTest(settings: settings)
    }

    func testTheServerAnswersUnderThePrefixOnly() async throws {
        let cases: [(String, String)] = [
            (Requests.get("/term"), "HTTP/1.1 301 Moved Permanently"),
            (Requests.get("/term/", ["Authorization": Requests.basic]), "HTTP/1.1 200 OK"),
            (Requests.get("/term/xterm.js", ["Authorization": Requests.basic]), "HTTP/1.1 200 OK"),
            (Requests.get("/term/token", ["Authorization": Requests.basic]), "HTTP/1.1 200 OK"),
            (Requests.get("/", ["Authorization": Requests.basic]), "HTTP/1.1 404 Not Found"),
            (Requests.get("/token", ["Authorization": Requests.basic]), "HTTP/1.1 404 Not Found"),
            (Requests.upgrade(path: "/term/ws"), "HTTP/1.1 101 Switching Protocols"),
            (Requests.upgrade(path: "/ws"), "HTTP/1.1 404 Not Found"),
        ]
        for (request, status) in cases {
            let w = try await worker()
            try await w.send(request)
            let text = try await w.text(until: "\r\n\r\n")
            XCTAssertTrue(text.hasPrefix(status + "\r\n"), "\(request.prefix(40)): \(text)")
            if status.contains("301") { XCTAssertTrue(text.contains("Location: /term/\r\n"), text) }
            await w.finish()
        }
    }
}
