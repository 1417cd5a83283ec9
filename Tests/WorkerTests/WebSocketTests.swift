import RoleProtocol
import XCTest
@testable import Worker

/// The opening handshake and every RFC 6455 rule the worker enforces, frame bytes in, close
/// codes out, on an in-memory channel.
final class WebSocketTests: XCTestCase {
    /// Upgraded and past ttyd's hello, ready for frames.
    private func upgraded(_ settings: WebWorker.Settings = .init()) async throws -> WorkerUnderTest {
        let w = try await WorkerUnderTest(settings: settings)
        try await w.send(Requests.upgrade())
        let text = try await w.text(until: "\r\n\r\n")
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), text)
        XCTAssertTrue(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's own example key: \(text)")
        XCTAssertTrue(text.lowercased().contains("sec-websocket-protocol: tty"), text)
        w.consume()
        return w
    }

    func testFramesThatBreakTheProtocolCloseWithTheCodeTheRFCNames() async throws {
        let cases: [([[UInt8]], UInt16, String)] = [
            ([Frames.client(0x2, [1], masked: false)], 1002, "unmasked client frame"),
            ([Frames.client(0x2, [1], rsv: 0x4)], 1002, "reserved bits set"),
            ([Frames.client(0x3, [1])], 1002, "reserved opcode"),
            ([Frames.client(0xb, [])], 1002, "reserved opcode"),
            ([Frames.continuation([1])], 1002, "continuation without a message"),
            ([Frames.binary([1], fin: false), Frames.binary([2])], 1002, "new message inside a fragmented one"),
            ([Frames.client(0x1, [0xff, 0xfe])], 1007, "text message is not UTF-8"),
            ([Frames.client(0x1, [0xc3], fin: false), Frames.continuation([0x28])], 1007, "text message is not UTF-8"),
            ([Frames.client(0x8, [0x03, 0xed])], 1002, "invalid close code"),  // 1005
            ([Frames.client(0x8, [0x03, 0xe8, 0xff])], 1007, "close reason is not UTF-8"),
            ([Frames.client(0x8, [0x03])], 1002, "close payload of one byte"),
            ([Frames.client(0x9, [UInt8](repeating: 0, count: 126))], 1002, ""),  // control frame too long (NIO's decoder)
        ]
        for (frames, code, reason) in cases {
            let w = try await upgraded()
            for frame in frames { try await w.send(frame) }
            let out = try await w.output { Frames.closeCode($0) != nil }
            XCTAssertEqual(Frames.closeCode(out), code, "\(reason)")
            if !reason.isEmpty { XCTAssertEqual(Frames.closeReason(out), reason) }
            await w.finish()
        }
    }

    func testMessagesOverTheBoundsAreTooLarge() async throws {
        var settings = WebWorker.Settings()
        settings.maxMessageBytes = 1000
        settings.maxFragments = 8
        for frames in [[Frames.binary([UInt8](repeating: 1, count: 600), fin: false), Frames.continuation([UInt8](repeating: 2, count: 600))],
                       (0..<9).map { _ in Frames.binary([1], fin: false) }.enumerated().map { $0.offset == 0 ? $0.element : Frames.continuation([1], fin: false) }] {
            let w = try await upgraded(settings)
            for frame in frames { try await w.send(frame) }
            let out = try await w.output { Frames.closeCode($0) != nil }
            XCTAssertEqual(Frames.closeCode(out), 1009)
            await w.finish()
        }
        settings.maxFrameBytes = 100
        let w = try await upgraded(settings)
        try await w.send(Frames.binary([UInt8](repeating: 1, count: 200)))
        let tooLong = try await w.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(tooLong), 1009, "a frame over the limit (NIO's decoder)")
        await w.finish()
    }

    func testPingIsAnsweredCloseIsEchoedAndFragmentsAreJoinedAroundAPing() async throws {
        let w = try await upgraded()
        try await w.send(Frames.client(0x9, Array("are you there".utf8)))
        let pong = Frames.server(try await w.output { !Frames.server($0).isEmpty })
        XCTAssertEqual(pong.first?.opcode, 0xa)
        XCTAssertEqual(pong.first?.payload, Array("are you there".utf8))
        w.consume()
        // ttyd's hello in three fragments with a ping among them reaches the session whole.
        let hello = Array(#"{"AuthToken": "dXNlcjpwYXNz", "columns": 100, "rows": 30}"#.utf8)
        try await w.send(Frames.client(0x1, Array(hello[..<10]), fin: false))
        try await w.send(Frames.client(0x9, [7]))
        try await w.send(Frames.continuation(Array(hello[10..<20]), fin: false))
        try await w.send(Frames.continuation(Array(hello[20...])))
        let attached = try await w.output { Frames.server($0).contains { $0.opcode == 0x2 } }
        XCTAssertTrue(Frames.server(attached).contains { $0.opcode == 0xa && $0.payload == [7] })
        XCTAssertEqual(w.vault.last?.sent.withLock { $0.first }, .attach(AttachRequest(columns: 100, rows: 30, token: FakeVault.token)))
        w.consume()
        try await w.send(Frames.client(0x8, [0x03, 0xe8] + Array("bye".utf8)))
        let echoed = try await w.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(echoed), 1000, "a close is echoed")
        await w.finish()
    }

    /// ttyd's -P: a ping every interval; a connection whose ping is unanswered when the next is
    /// due is closed with 1001, one that answers stays.
    func testPingsAndTheClientThatDoesNotAnswer() async throws {
        var settings = WebWorker.Settings()
        settings.pingInterval = .seconds(10)
        let silent = try await upgraded(settings)
        await silent.channel.testingEventLoop.advanceTime(by: .seconds(10))
        let first = try await silent.output { !Frames.server($0).isEmpty }
        XCTAssertEqual(Frames.server(first).map(\.opcode), [0x9], "a ping after one interval")
        XCTAssertNil(Frames.closeCode(first))
        await silent.channel.testingEventLoop.advanceTime(by: .seconds(10))
        let out = try await silent.output { Frames.closeCode($0) != nil }
        XCTAssertEqual(Frames.closeCode(out), 1001)
        XCTAssertEqual(Frames.closeReason(out), "ping not answered")
        await silent.finish()

        let answering = try await upgraded(settings)
        for round in 1...3 {
            await answering.channel.testingEventLoop.advanceTime(by: .seconds(10))
            let bytes = try await answering.output { Frames.server($0).count >= round }
            let ping = try XCTUnwrap(Frames.server(bytes).last)
            XCTAssertEqual(ping.opcode, 0x9, "round \(round)")
            try await answering.send(Frames.client(0xA, ping.payload))
        }
        await answering.channel.testingEventLoop.advanceTime(by: .seconds(10))
        let later = try await answering.output { Frames.server($0).count >= 4 }
        XCTAssertNil(Frames.closeCode(later), "answered pings keep the connection")
        await answering.finish()
    }
}
