import RoleProtocol
import XCTest
@testable import Worker

/// RFC 6455 §4.2.1–4.2.2, one requirement at a time, against the worker's pipeline in memory:
/// each malformed opening handshake gets the status the RFC names, and the variations the
/// RFC allows are upgraded.
final class HandshakeTests: XCTestCase {
    /// A handshake that is upgraded, as lines, for the cases below to change one field of.
    static let valid: [(String, String)] = [
        ("Host", "worker.test"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", "tty"),
    ]

    static func request(method: String = "GET", path: String = "/ws", version: String = "HTTP/1.1",
                        replacing: [String: String] = [:], removing: Set<String> = [], adding: [(String, String)] = []) -> String {
        var text = "\(method) \(path) \(version)\r\n"
        for (name, value) in valid where !removing.contains(name) {
            text += "\(name): \(replacing[name] ?? value)\r\n"
        }
        for (name, value) in adding { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }

    private func answer(_ request: String) async throws -> String {
        let w = try await WorkerUnderTest()
        try await w.send(request)
        let text = try await w.text(until: "\r\n\r\n")
        await w.finish()
        return text
    }

    private func assertRefused(_ request: String, _ status: String, header: String? = nil, _ why: String,
                               file: StaticString = #filePath, line: UInt = #line) async throws {
        let text = try await answer(request)
        // The status line answers in the request's version (HTTP/1.0 for the HTTP/1.0 case).
        let statusLine = text.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        XCTAssertEqual(statusLine.split(separator: " ", maxSplits: 1).last.map(String.init), status, "\(why): \(text)", file: file, line: line)
        if let header { XCTAssertTrue(text.contains(header + "\r\n"), "\(why): \(text)", file: file, line: line) }
        XCTAssertTrue(text.contains("Connection: close\r\n"), "\(why): \(text)", file: file, line: line)
    }

    func testTheValidHandshakeAndWhatTheRFCAllowsAreUpgraded() async throws {
        let allowed: [(String, String)] = [
            ("as is", Self.request()),
            ("tokens are case-insensitive", Self.request(replacing: ["Upgrade": "WebSocket", "Connection": "upgrade"])),
            ("Connection may list other tokens", Self.request(replacing: ["Connection": "keep-alive, Upgrade"])),
            ("other subprotocols may be offered", Self.request(replacing: ["Sec-WebSocket-Protocol": "chat, tty"])),
            ("a query string", Self.request(path: "/ws?arg=1")),
            ("extensions are offered and not taken", Self.request(adding: [("Sec-WebSocket-Extensions", "permessage-deflate")])),
        ]
        for (why, request) in allowed {
            let text = try await answer(request)
            XCTAssertTrue(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), "\(why): \(text)")
            XCTAssertTrue(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "\(why): \(text)")
            XCTAssertFalse(text.lowercased().contains("sec-websocket-extensions"), "\(why): no extension taken: \(text)")
        }
    }

    /// §4.2.1 1: an HTTP/1.1 or later GET.
    func testTheMethodAndTheVersion() async throws {
        try await assertRefused(Self.request(method: "POST"), "405 Method Not Allowed", header: "Allow: GET", "POST")
        try await assertRefused(Self.request(version: "HTTP/1.0"), "400 Bad Request", "HTTP/1.0")
    }

    /// 2: Host.
    func testHost() async throws {
        try await assertRefused(Self.request(removing: ["Host"]), "400 Bad Request", "no Host")
        try await assertRefused(Self.request(adding: [("Host", "other.test")]), "400 Bad Request", "two Host fields")
    }

    /// 3 and 4: Upgrade: websocket and Connection: Upgrade.
    func testUpgradeAndConnection() async throws {
        try await assertRefused(Self.request(replacing: ["Upgrade": "h2c"]), "400 Bad Request", "another protocol")
        try await assertRefused(Self.request(removing: ["Upgrade"]), "400 Bad Request", "no Upgrade")
        try await assertRefused(Self.request(replacing: ["Connection": "keep-alive"]), "400 Bad Request", "no Upgrade token")
    }

    /// 5: Sec-WebSocket-Key, a base64 nonce of 16 bytes.
    func testTheKey() async throws {
        let bad: [(String, String?)] = [
            ("missing", nil), ("not base64", "this is not base64!!!!!!"), ("15 bytes", "AAAAAAAAAAAAAAAAAAAA"),
            ("17 bytes", "AAAAAAAAAAAAAAAAAAAAAAA="), ("stray bits", "dGhlIHNhbXBsZSBub25jZR=="), ("empty", ""),
        ]
        for (why, key) in bad {
            let request = key.map { Self.request(replacing: ["Sec-WebSocket-Key": $0]) } ?? Self.request(removing: ["Sec-WebSocket-Key"])
            try await assertRefused(request, "400 Bad Request", "key \(why)")
        }
        try await assertRefused(Self.request(adding: [("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]), "400 Bad Request", "two keys")
    }

    /// 6 and §4.2.2: version 13; another gets 426 with the version this server speaks.
    func testTheVersion() async throws {
        for version in ["8", "12", "14", "13, 8"] {
            try await assertRefused(Self.request(replacing: ["Sec-WebSocket-Version": version]), "426 Upgrade Required",
                                    header: "Sec-WebSocket-Version: 13", "version \(version)")
        }
        try await assertRefused(Self.request(removing: ["Sec-WebSocket-Version"]), "400 Bad Request",
                                header: "Sec-WebSocket-Version: 13", "no version")
    }

    /// 7 and 8: Origin (ttyd's --check-origin) and the subprotocol tty; the endpoint.
    func testOriginSubprotocolAndPath() async throws {
        try await assertRefused(Self.request(adding: [("Origin", "http://evil.test")]), "403 Forbidden", "another origin")
        try await assertRefused(Self.request(replacing: ["Sec-WebSocket-Protocol": "chat"]), "400 Bad Request", "no tty")
        try await assertRefused(Self.request(path: "/other"), "404 Not Found", "another path")
        let sameOrigin = try await answer(Self.request(adding: [("Origin", "http://worker.test")]))
        XCTAssertTrue(sameOrigin.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), sameOrigin)
    }

    func testTheNonceCheck() {
        XCTAssertTrue(OpeningHandshake.isNonce("dGhlIHNhbXBsZSBub25jZQ=="))
        XCTAssertTrue(OpeningHandshake.isNonce("AAAAAAAAAAAAAAAAAAAAAA=="))
        XCTAssertFalse(OpeningHandshake.isNonce("AAAAAAAAAAAAAAAAAAAAAB=="), "bits beyond the 16 bytes")
        XCTAssertFalse(OpeningHandshake.isNonce("AAAAAAAAAAAAAAAAAAAAAA="))
        XCTAssertFalse(OpeningHandshake.isNonce("AAAAAAAAAAAAAAAAAAAAA-=="))
    }

    /// Optional whitespace and list items are HTTP's octets: spaces and tabs only, commas as
    /// separators, ASCII letters folded; anything else (UTF-8 included) is kept as sent.
    func testFieldValuesAreTrimmedAndSplitAsOctets() {
        XCTAssertEqual(" \t13\t ".trimmingOptionalWhitespace(), "13")
        XCTAssertEqual("13".trimmingOptionalWhitespace(), "13")
        XCTAssertEqual(" \t ".trimmingOptionalWhitespace(), "")
        XCTAssertEqual("".trimmingOptionalWhitespace(), "")
        XCTAssertEqual(" a b ".trimmingOptionalWhitespace(), "a b", "whitespace inside stays")
        XCTAssertEqual("\u{a0}é ü\n ".trimmingOptionalWhitespace(), "\u{a0}é ü\n", "only spaces and tabs are OWS")
        XCTAssertEqual(" keep-alive, Upgrade ,,\t ,WebSocket".lowercasedListItems(), ["keep-alive", "upgrade", "websocket"])
        XCTAssertEqual("TTY, Ä".lowercasedListItems(), ["tty", "Ä"], "only ASCII letters are folded")
        XCTAssertEqual(" , ".lowercasedListItems(), [])
        let tokens = OpeningHandshake.tokens(["Connection": "keep-alive, Upgrade", "connection": " close "], "connection")
        XCTAssertEqual(tokens, ["keep-alive", "upgrade", "close"], "every field of that name, in order")
    }

    /// Found by FuzzWorker: frames sent in the same packet as the handshake reached the gate
    /// as raw bytes after the upgrade and trapped the worker. They are the session's now.
    func testFramesInTheSamePacketAsTheHandshake() async throws {
        let w = try await WorkerUnderTest()
        let hello = Array(#"{"AuthToken": "dXNlcjpwYXNz", "columns": 80, "rows": 24}"#.utf8)
        try await w.send(Array(Self.request().utf8) + Frames.text(String(decoding: hello, as: UTF8.self)) + Frames.binary(Array("0ls\r".utf8)))
        let text = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), text)
        let input = try await eventuallyInput(w)
        XCTAssertEqual(input, .input(Array("ls\r".utf8)), "the frame after the hello reached the session")
        await w.finish()
    }

    private func eventuallyInput(_ w: WorkerUnderTest) async throws -> WorkerToVault? {
        for _ in 0..<500 {
            if let sent = w.vault.last?.sent.withLock({ $0 }), sent.count >= 2 { return sent[1] }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }
}
