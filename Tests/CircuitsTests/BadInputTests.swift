import XCTest
import SystemPackage
@testable import Circuits
import TestSupport

/// Every kind of bad input yields its own error, closes the transport and leaks nothing.
final class BadInputTests: XCTestCase {
    /// Runs `inject` against a fresh transport and returns the error the transport closed with,
    /// checking that no descriptor (including any the injection sent) outlives it.
    private func failure(config: TransportConfiguration<UInt16> = configuration(.opener),
                         _ inject: (RawPeer, _ pipeWrite: FileDescriptor) throws -> Void,
                         file: StaticString = #filePath, line: UInt = #line) async throws -> CircuitError {
        let before = openDescriptorCount()
        let error: CircuitError
        do {
            let pipe = try makePipe()
            let (transport, peer) = try await transportWithRawPeer(config: config)
            try inject(peer, pipe.write)
            try pipe.write.close()
            error = await transport.closed()
            // Every descriptor the transport received is closed: the pipe reads EOF.
            peer.close()
            transport.close()
            XCTAssertEqual(try readAll(pipe.read), [], "a received descriptor is still open", file: file, line: line)
            try pipe.read.close()
        }
        XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked", file: file, line: line)
        return error
    }

    func testShortHeader() async throws {
        let error = try await failure { peer, _ in try peer.raw([2, 0, 0]) }
        XCTAssertEqual(error, .truncatedHeader(received: 3, required: 9))
    }

    func testCircuitIdOutOfRange() async throws {
        do {
            let error = try await failure { peer, _ in try peer.raw(peer.header(kind: 2, length: 0, circuit: 2000)) }
            XCTAssertEqual(error, .circuitOutOfRange(id: 2000, maxCircuits: 1024))
        }
    }

    func testUnknownKind() async throws {
        do {
            let error = try await failure { peer, _ in try peer.raw(peer.header(kind: 7, length: 0, circuit: 3)) }
            XCTAssertEqual(error, .unknownKind(7))
        }
    }

    func testOversizedDeclared() async throws {
        let config = configuration(.opener, maxPayload: 1000)
        do {
            let error = try await failure(config: config) { peer, _ in
                try peer.raw(peer.header(kind: 2, length: 1001, circuit: 3) + [UInt8](repeating: 0, count: 1001))
            }
            XCTAssertEqual(error, .oversized(length: 1001, limit: 1000))
        }
    }

    func testOversizedPacketWithLyingHeader() async throws {
        let error = try await failure(config: configuration(.opener, maxPayload: 1000)) { peer, _ in
            try peer.raw(peer.header(kind: 2, length: 10, circuit: 3) + [UInt8](repeating: 0, count: 5000))
        }
        XCTAssertEqual(error, .oversized(length: 5000, limit: 1000))
    }

    func testLengthMismatch() async throws {
        let error = try await failure { peer, _ in try peer.raw(peer.header(kind: 2, length: 10, circuit: 3) + [1, 2]) }
        XCTAssertEqual(error, .lengthMismatch(declared: 10, actual: 2))
    }

    func testDescriptorsOnCreditFrame() async throws {
        do {
            let error = try await failure { peer, fd in
                try peer.frame(.credit, circuit: 3, payload: [UInt8](repeating: 0, count: 8), descriptors: [fd])
            }
            XCTAssertEqual(error, .unexpectedDescriptors(count: 1, context: "on a credit frame"))
        }
    }

    func testDescriptorsWhereTransportAcceptsNone() async throws {
        do {
            let error = try await failure(config: configuration(.opener, maxDescriptors: 0)) { peer, fd in
                try peer.frame(.data, circuit: 3, payload: [1], descriptors: [fd])
            }
            XCTAssertEqual(error, .unexpectedDescriptors(count: 1, context: "more than the 0 per message this transport accepts"))
        }
    }

    func testTruncatedControlDataClosesWhatArrived() async throws {
        do {
            // A packet may carry the descriptors of several messages (16 when each may carry 2).
            let room = FrameLimits.packetDescriptors(2)
            let error = try await failure(config: configuration(.opener, maxDescriptors: 2)) { peer, fd in
                try peer.frame(.data, circuit: 3, payload: [1], descriptors: [FileDescriptor](repeating: fd, count: room + 1))
            }
            XCTAssertEqual(error, .truncatedControlData(receivedDescriptors: room))
        }
    }

    func testDescriptorCountMismatch() async throws {
        do {
            let error = try await failure { peer, fd in
                try peer.raw(peer.header(kind: 2, descriptors: 2, length: 0, circuit: 3), descriptors: [fd])
            }
            XCTAssertEqual(error, .descriptorCountMismatch(declared: 2, received: 1))
        }
    }

    func testDescriptorsOnFrameDeclaringNone() async throws {
        do {
            let error = try await failure { peer, fd in
                try peer.raw(peer.header(kind: 2, length: 1, circuit: 3) + [9], descriptors: [fd])
                // On a stream the unclaimed set shows once the next frame is parsed; a packet
                // transport may already have closed by then.
                try? peer.frame(.data, circuit: 3, payload: [1])
            }
            XCTAssertEqual(error, .descriptorCountMismatch(declared: 0, received: 1))
        }
    }

    func testUnagreedReservedCircuit() async throws {
        do {
            let error = try await failure { peer, _ in try peer.frame(.data, circuit: 1, payload: [1]) }
            XCTAssertEqual(error, .unagreedReservedCircuit(id: 1))
        }
    }

    func testMessageOnIdleCircuitOfOurs() async throws {
        let error = try await failure { peer, _ in try peer.frame(.data, circuit: 4, payload: [1]) }
        XCTAssertEqual(error, .messageOnIdleCircuit(id: 4))
    }

    func testMessageAfterEnd() async throws {
        let error = try await failure { peer, _ in
            try peer.frame(.data, circuit: 3, end: true, payload: [1])
            try peer.frame(.data, circuit: 3, payload: [2])
        }
        XCTAssertEqual(error, .messageAfterEnd(id: 3))
    }

    func testCreditExceeded() async throws {
        let config = configuration(.opener, window: 8192, maxPayload: 4000, maxDescriptors: 0)
        let error = try await failure(config: config) { peer, _ in
            for _ in 0..<3 { try peer.frame(.data, circuit: 3, payload: [UInt8](repeating: 0, count: 4000)) }
        }
        XCTAssertEqual(error, .creditExceeded(id: 3, received: 12192, granted: 8192))
    }

    func testPeerEndingReservedCircuit() async throws {
        let error = try await failure { peer, _ in try peer.frame(.data, circuit: 0, end: true, payload: []) }
        XCTAssertEqual(error, .peerEndedReservedCircuit(id: 0))
    }

    func testMalformedCredit() async throws {
        let error = try await failure { peer, _ in try peer.frame(.credit, circuit: 3, payload: [1, 2, 3]) }
        XCTAssertEqual(error, .malformedCredit(id: 3))
    }

    func testSecondHandshake() async throws {
        let error = try await failure { peer, _ in try peer.sendHandshake() }
        XCTAssertEqual(error, .malformedHandshake("second handshake"))
    }

    func testFrameBeforeHandshake() async throws {
        let (a, b) = try SocketCalls.socketPair(.seqpacket)
        let peer = RawPeer(fd: b)
        try peer.frame(.data, circuit: 3, payload: [1])
        do {
            _ = try await Transport<UInt16>.start(socket: a, configuration: configuration(.opener))
            XCTFail("started although the peer sent data first")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .malformedHandshake("a data frame arrived before the handshake"))
        }
    }
}
