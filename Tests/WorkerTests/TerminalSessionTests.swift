import RoleProtocol
import XCTest
@testable import Worker

/// ttyd's messages on an upgraded connection, against a vault the test plays.
final class TerminalSessionTests: XCTestCase {
    private func attached(token: String = "dXNlcjpwYXNz") async throws -> WorkerUnderTest {
        let w = try await WorkerUnderTest()
        try await w.send(Requests.upgrade())
        _ = try await w.text(until: "\r\n\r\n")
        w.consume()
        try await w.send(Frames.text(#"{"AuthToken": "\#(token)", "columns": 132, "rows": 43}"#))
        return w
    }

    /// A connection accepted while the server drains: a handshake that names no session is
    /// answered 503 (a balancer tries another host); one that names a session is upgraded, and
    /// its first message must resume or join one.
    func testADrainingWorkerTakesNoNewSession() async throws {
        let draining = WebWorker.ConnectionTerms(newSessions: false)
        let refused = try await WorkerUnderTest(terms: draining)
        try await refused.send(Requests.upgrade())
        let answer = try await refused.text(until: "\r\n\r\n")
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), answer)
        XCTAssertTrue(answer.contains("Retry-After: 1\r\n"), answer)
        await refused.finish()

        let named = try await WorkerUnderTest(terms: draining)
        try await named.send(Requests.upgrade(path: "/ws?session=h1.sid"))
        let upgraded = try await named.text(until: "\r\n\r\n")
        XCTAssertTrue(upgraded.hasPrefix("HTTP/1.1 101 "), upgraded)
        named.consume()
        try await named.send(Frames.text(#"{"AuthToken": "dXNlcjpwYXNz", "columns": 80, "rows": 24}"#))
        let closed = try await named.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(closed), 1013)
        XCTAssertEqual(Frames.closeReason(closed), "this host is draining: it takes no new session")
        XCTAssertNil(named.vault.last, "the vault is not asked")
        await named.finish()

        let resuming = try await WorkerUnderTest(terms: draining)
        try await resuming.send(Requests.upgrade(path: "/ws?session=sid"))
        _ = try await resuming.text(until: "\r\n\r\n")
        try await resuming.send(Frames.text(#"{"AuthToken": "dXNlcjpwYXNz", "columns": 80, "rows": 24, "session": "sid", "secret": "wsecret"}"#))
        _ = try await resuming.output { Frames.server($0).count >= 1 }
        XCTAssertNotNil(resuming.vault.last, "a resume reaches the vault")
        await resuming.finish()
    }

    /// The last `X-Forwarded-For` entry goes to the vault only from a connection the supervisor
    /// said came from a trusted proxy, and only when it is a numeric address.
    func testAForwardedAddressReachesTheVaultOnlyFromATrustedProxy() async throws {
        let cases: [(terms: WebWorker.ConnectionTerms, header: String, expected: String?)] = [
            (.init(fromTrustedProxy: true), "198.51.100.1, 203.0.113.7", "203.0.113.7"),
            (.init(fromTrustedProxy: true), "2001:db8::1", "2001:db8::1"),
            (.init(fromTrustedProxy: true), "203.0.113.7, proxy.example", nil),
            (.init(fromTrustedProxy: true), "203.0.113.7, 10.0.0.1; rm -rf", nil),
            (.init(), "203.0.113.7", nil),
        ]
        for (terms, header, expected) in cases {
            let w = try await WorkerUnderTest(terms: terms)
            try await w.send(Requests.upgrade(extra: ["X-Forwarded-For": header]))
            _ = try await w.text(until: "\r\n\r\n")
            try await w.send(Frames.text(#"{"AuthToken": "dXNlcjpwYXNz", "columns": 80, "rows": 24}"#))
            _ = try await w.output { Frames.server($0).count >= 1 }
            guard case .attach(let request)? = w.vault.last?.sent.withLock({ $0.first }) else { return XCTFail("no attach for \(header)") }
            XCTAssertEqual(request.forwardedFor.map { String(decoding: $0, as: UTF8.self) }, expected, "\(header), \(terms)")
            await w.finish()
        }
    }

    func testHelloAttachesWithTheWindowSizeAndGetsTitleAndPreferences() async throws {
        let w = try await attached()
        let frames = Frames.server(try await w.output { Frames.server($0).count >= 3 })
        XCTAssertEqual(frames.map(\.opcode), [0x2, 0x2, 0x2])
        XCTAssertEqual(frames[0].payload, Array("1fake-title".utf8))
        XCTAssertEqual(frames[1].payload, Array("2{}".utf8))
        XCTAssertEqual(String(decoding: frames[2].payload, as: UTF8.self),
                       #"S{"offset":0,"read_secret":"rsecret","secret":"wsecret","session":"sid","skipped":0}"#)
        XCTAssertEqual(w.vault.last?.sent.withLock { $0 }, [.attach(AttachRequest(columns: 132, rows: 43, token: FakeVault.token))])
        await w.finish()
    }

    func testCommandsReachTheVaultAndOutputReachesTheClient() async throws {
        let w = try await attached()
        _ = try await w.output { Frames.server($0).count >= 3 }
        w.consume()
        try await w.send(Frames.binary(Array("0ls -l\r".utf8)))
        try await w.send(Frames.text(#"1{"columns": 90, "rows": 20}"#))
        try await w.send(Frames.text(#"1{"columns": 0, "rows": 20}"#))  // out of bounds: ignored
        try await w.send(Frames.binary(Array("2".utf8)))
        try await w.send(Frames.binary(Array("3".utf8)))
        try await w.send(Frames.binary(Array("9unknown".utf8)))  // ignored, as ttyd does
        try await w.send(Frames.binary(Array("0!".utf8)))
        let attachment = try XCTUnwrap(w.vault.last)
        let deadline = ContinuousClock.now + .seconds(5)
        while attachment.sent.withLock({ $0.count }) < 6 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        XCTAssertEqual(attachment.sent.withLock { Array($0.dropFirst()) },
                       [.input(Array("ls -l\r".utf8)), .resize(columns: 90, rows: 20), .pause, .resume, .input(Array("!".utf8))])
        attachment.say(.output(Array("total 0\r\n".utf8)))
        let out = Frames.server(try await w.output { !Frames.server($0).isEmpty })
        XCTAssertEqual(out.first?.opcode, 0x2)
        XCTAssertEqual(out.first?.payload, Array("0total 0\r\n".utf8))
        w.consume()
        attachment.say(.exited(.status(3)))
        let closed = try await w.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(closed), 1000)
        XCTAssertEqual(Frames.closeReason(closed), "exit status 3")
        await w.finish()
    }

    func testAWrongCredentialOrAFirstMessageThatIsNotTtydsIsAPolicyClose() async throws {
        let wrong = try await attached(token: "bm9wZTpub3Bl")
        let out = try await wrong.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(out), 1008)
        XCTAssertEqual(Frames.closeReason(out), "authentication failed")
        await wrong.finish()

        let w = try await WorkerUnderTest()
        try await w.send(Requests.upgrade())
        _ = try await w.text(until: "\r\n\r\n")
        w.consume()
        try await w.send(Frames.text("hello"))
        let notJSON = try await w.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(notJSON), 1008)
        XCTAssertEqual(w.vault.conversations.withLock { $0.count }, 0, "nothing was asked of the vault")
        await w.finish()
    }

    func testTheClientLeavingEndsTheAttachment() async throws {
        let w = try await attached()
        _ = try await w.output { Frames.server($0).count >= 3 }
        let attachment = try XCTUnwrap(w.vault.last)
        try await w.channel.close()
        let deadline = ContinuousClock.now + .seconds(5)
        while !attachment.ended.withLock({ $0 }) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        XCTAssertTrue(attachment.ended.withLock { $0 }, "the vault is told, so it hangs up the shell")
        await w.finish()
    }

    func testCommandParsing() {
        XCTAssertEqual(TtydProtocol.command(Array("0abc".utf8)), .input(Array("abc".utf8)))
        XCTAssertEqual(TtydProtocol.command(Array(#"1{"columns": 9999, "rows": 1}"#.utf8)), .resize(columns: 9999, rows: 1))
        XCTAssertNil(TtydProtocol.command(Array(#"1{"columns": 10000, "rows": 1}"#.utf8)))
        XCTAssertNil(TtydProtocol.command(Array("1not json".utf8)))
        XCTAssertNil(TtydProtocol.command([]))
        XCTAssertEqual(TtydProtocol.hello(Array(#"{"AuthToken": "x", "columns": 5}"#.utf8)), .init(AuthToken: "x", columns: 5, rows: nil))
        XCTAssertEqual(TtydProtocol.bounded(nil, default: 80), 80)
        XCTAssertEqual(TtydProtocol.bounded(-5, default: 80), 1)
        XCTAssertEqual(TtydProtocol.bounded(100_000, default: 80), 9999)
    }
}
