import XCTest
@testable import Circuits

final class CodecTests: XCTestCase {
    private func decode(_ bytes: [UInt8], maxCircuits: UInt64 = 100, maxPayload: Int = 1000) throws -> FrameHeader {
        try bytes.withUnsafeBytes {
            try FrameHeader.decode($0, idBytes: 2, maxCircuits: maxCircuits, maxPayload: maxPayload)
        }
    }

    func testHeaderRoundTrip() throws {
        let header = FrameHeader(kind: .data, end: true, descriptorCount: 3, length: 999, circuit: 77)
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size(idBytes: 2))
        bytes.withUnsafeMutableBytes { header.encode(into: $0, idBytes: 2) }
        XCTAssertEqual(try decode(bytes), header)
    }

    func testShortHeader() {
        XCTAssertThrowsError(try decode([2, 0, 0, 0])) {
            XCTAssertEqual($0 as? CircuitError, .truncatedHeader(received: 4, required: 9))
        }
    }

    func testUnknownKind() {
        XCTAssertThrowsError(try decode([9, 0, 0, 0, 0, 0, 0, 1, 0])) {
            XCTAssertEqual($0 as? CircuitError, .unknownKind(9))
        }
    }

    func testUnknownFlags() {
        XCTAssertThrowsError(try decode([2, 0x82, 0, 0, 0, 0, 0, 1, 0])) {
            XCTAssertEqual($0 as? CircuitError, .unknownFlags(0x82))
        }
    }

    func testCircuitOutOfRange() {
        XCTAssertThrowsError(try decode([2, 0, 0, 0, 0, 0, 0, 100, 0])) {
            XCTAssertEqual($0 as? CircuitError, .circuitOutOfRange(id: 100, maxCircuits: 100))
        }
    }

    func testOversizedDeclaredLength() {
        XCTAssertThrowsError(try decode([2, 0, 0, 0xe9, 0x03, 0, 0, 1, 0])) {
            XCTAssertEqual($0 as? CircuitError, .oversized(length: 1001, limit: 1000))
        }
    }

    private func handshake(_ side: TransportSide = .opener) -> Handshake {
        Handshake(intent: "x/1", build: "b1", side: side, idBytes: 2, maxCircuits: 64, reservedBand: 2,
                  reserved: [0: "health"], window: 4096, maxPayload: 1024, maxDescriptors: 2)
    }

    func testHandshakeRoundTrip() throws {
        XCTAssertEqual(try Handshake.decode(handshake().encode()), handshake())
    }

    func testHandshakeMismatchesNameBothSides() {
        var other = handshake(.acceptor)
        other.intent = "y/2"
        XCTAssertThrowsError(try handshake().check(peer: other)) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "intent", ours: "x/1", theirs: "y/2"))
        }
        other = handshake(.acceptor)
        other.build = "b2"
        XCTAssertThrowsError(try handshake().check(peer: other)) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "build", ours: "b1", theirs: "b2"))
        }
        XCTAssertThrowsError(try handshake().check(peer: handshake(.opener))) {
            guard case .handshakeMismatch(field: "side", _, _) = $0 as? CircuitError else { return XCTFail("\($0)") }
        }
        other = handshake(.acceptor)
        other.reserved = [0: "health", 1: "extra"]
        XCTAssertThrowsError(try handshake().check(peer: other)) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "reserved circuits", ours: "[0=health]", theirs: "[0=health, 1=extra]"))
        }
        other = handshake(.acceptor)
        other.idBytes = 4
        XCTAssertThrowsError(try handshake().check(peer: other)) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "circuit id width", ours: "16 bits", theirs: "32 bits"))
        }
        // Limits may differ.
        other = handshake(.acceptor)
        other.window = 1 << 20
        XCTAssertNoThrow(try handshake().check(peer: other))
    }

    func testMalformedHandshake() {
        XCTAssertThrowsError(try Handshake.decode(Array("HTTP/1.1 200 OK".utf8))) {
            XCTAssertEqual($0 as? CircuitError, .malformedHandshake("not a circuits handshake (bad magic)"))
        }
        let truncated = Array(handshake().encode().dropLast(3))
        XCTAssertThrowsError(try Handshake.decode(truncated)) {
            guard case .malformedHandshake = $0 as? CircuitError else { return XCTFail("\($0)") }
        }
        var future = handshake().encode()
        future[Handshake.magic.count] = 9
        XCTAssertThrowsError(try Handshake.decode(future)) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "protocol version", ours: "1", theirs: "9"))
        }
    }

    func testConfigurationValidation() {
        func invalid(_ c: TransportConfiguration<UInt8>) -> String? {
            do { try c.validate(); return nil } catch { return "\(error)" }
        }
        XCTAssertNil(invalid(.init(intent: "a", side: .opener)))
        XCTAssertNotNil(invalid(.init(intent: "", side: .opener)))
        XCTAssertNotNil(invalid(.init(intent: "a", side: .opener, maxCircuits: 257)))
        XCTAssertNotNil(invalid(.init(intent: "a", side: .opener, reservedBand: 1, reserved: [1: "x"])))
        XCTAssertNotNil(invalid(.init(intent: "a", side: .opener, window: 1000, maxPayload: 4096)))
        XCTAssertNotNil(invalid(.init(intent: "a", side: .opener, maxDescriptorsPerMessage: 300)))
        XCTAssertEqual(invalid(.init(intent: "a", side: .opener, handshakeTimeoutMilliseconds: 0)).map { $0.contains("handshake timeout 0 ms") }, true)
        XCTAssertEqual(invalid(.init(intent: "a", side: .opener, closeLingerMilliseconds: -1)).map { $0.contains("close linger -1 ms") }, true)
        XCTAssertNil(invalid(.init(intent: "a", side: .opener, closeLingerMilliseconds: 0)), "no linger is allowed")
        XCTAssertEqual(invalid(.init(intent: "a", side: .opener, receiveBufferBytes: 0)).map { $0.contains("receive buffer of 0 bytes") }, true)
        XCTAssertNil(invalid(.init(intent: "a", side: .opener, receiveBufferBytes: 1)), "one packet at a time")
    }

    func testBuildIDIsStableAndHex() {
        XCTAssertEqual(BuildID.current, BuildID.current)
        XCTAssertGreaterThanOrEqual(BuildID.current.count, 16)
        XCTAssertTrue(BuildID.current.allSatisfy { $0.isHexDigit })
    }
}
