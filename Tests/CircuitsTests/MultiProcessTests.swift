import XCTest
import SystemPackage
import Processes
@testable import Circuits
import TestSupport

#if canImport(Glibc)
import Glibc
/// Glibc imports RLIMIT_NOFILE as an enum case; the calls take its raw value.
private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#endif

/// The circuits layer between two real processes: this one and `cloister role circuits-peer`.
final class MultiProcessTests: XCTestCase {
    static var cloister: String { cloisterExecutable }

    private func startPeer(intent: String = "cloister.test-peer/1") throws -> (ChildProcess, FileDescriptor) {
        let (mine, theirs) = try SocketCalls.socketPair(.seqpacket)
        defer { try? theirs.close() }
        let child = try ChildProcess.spawn(Self.cloister, arguments: ["role", "circuits-peer", "--intent", intent],
                                           descriptors: [theirs])
        return (child, mine)
    }

    static var cloisterBuild: String { cloisterBuildID }

    private func peerConfiguration() -> TransportConfiguration<UInt16> {
        TransportConfiguration(intent: "cloister.test-peer/1", side: .opener, reservedBand: 2, reserved: [0: "health"],
                               build: Self.cloisterBuild)
    }

    /// Starts the peer, runs `body` with a transport to it, then checks how the peer ended
    /// and that this process has exactly the descriptors it had before.
    private func withPeer(ending expected: ChildProcess.Termination,
                          _ body: (Transport<UInt16>, ChildProcess) async throws -> Void) async throws {
        let before = openDescriptorCount()
        let (child, socket) = try startPeer()
        do {
            let transport = try await Transport<UInt16>.start(socket: socket, configuration: peerConfiguration())
            try await body(transport, child)
        }
        XCTAssertEqual(try child.wait(), expected, "how the peer ended")
        XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
    }

    func testChildWritesIntoDescriptorItWasPassed() async throws {
        do {
            try await withPeer(ending: .exited(0)) { transport, _ in
                XCTAssertEqual(transport.peerBuild, Self.cloisterBuild)
                let pipe = try makePipe()
                let c = try transport.open()
                try await c.send(Array("written by the child".utf8), descriptors: [pipe.write], end: true)
                try pipe.write.close()
                let reply = try await c.receive()
                XCTAssertEqual(String(decoding: reply.payload, as: UTF8.self), "wrote 20")
                XCTAssertTrue(reply.isEnd)
                XCTAssertEqual(String(decoding: try readAll(pipe.read), as: UTF8.self), "written by the child")
                try pipe.read.close()

                // Health on the reserved circuit, while an ordinary conversation echoes.
                let health = try transport.reserved(0)
                try await health.send([1, 2, 3])
                let awaited1 = try await health.receive().payload
                XCTAssertEqual(awaited1, [1, 2, 3])
                transport.close()  // the peer exits cleanly when the transport closes
            }
        }
    }

    /// When this process cannot open one more descriptor, frames carrying descriptors cannot
    /// be queued (queuing duplicates them): they are written with the caller's own copies,
    /// in order, and none is lost.
    func testDescriptorsTravelWhenNoneCanBeDuplicated() async throws {
        do {
            try await withPeer(ending: .exited(0)) { transport, _ in
                let pipe = try makePipe()
                let c = try transport.open()
                let count = 40
                do {
                    // The lowest free descriptor number becomes the limit: nothing new opens.
                    var saved = rlimit()
                    XCTAssertEqual(getrlimit(RLIMIT_NOFILE_VALUE, &saved), 0)
                    let probe = dup(0)
                    XCTAssertGreaterThanOrEqual(probe, 0)
                    close(probe)
                    var lowered = saved
                    lowered.rlim_cur = rlim_t(probe)
                    XCTAssertEqual(setrlimit(RLIMIT_NOFILE_VALUE, &lowered), 0)
                    defer { XCTAssertEqual(setrlimit(RLIMIT_NOFILE_VALUE, &saved), 0) }
                    XCTAssertEqual(fcntl(pipe.write.rawValue, F_DUPFD_CLOEXEC, 0), -1, "duplicating fails")
                    XCTAssertEqual(errno, EMFILE)
                    for i in 0..<count {
                        try await c.send(Array("m\(i);".utf8), descriptors: [pipe.write], end: i == count - 1)
                    }
                }
                try pipe.write.close()
                var replies = 0
                while replies < count {
                    let batch = try await c.receiveAvailable()
                    replies += batch.count
                    if batch.last?.isEnd == true { break }
                }
                XCTAssertEqual(replies, count)
                let written = String(decoding: try readAll(pipe.read), as: UTF8.self)
                XCTAssertEqual(written, (0..<count).map { "m\($0);" }.joined(), "every message, in order")
                try pipe.read.close()
                transport.close()
            }
        }
    }

    func testChildKilledMidConversationGivesCleanError() async throws {
        try await withPeer(ending: .signaled(SIGKILL)) { transport, child in
            let c = try transport.open()
            try await c.send(Array("ping".utf8))
            let awaited2 = try await c.receive().payload
            XCTAssertEqual(awaited2, Array("ping".utf8))
            let waiting = Task { try await c.receive() }
            try child.signal(SIGKILL)
            do {
                _ = try await waiting.value
                XCTFail("receive returned after the peer died")
            } catch let error as CircuitError {
                XCTAssertEqual(error, .peerClosed)
            }
            do {
                try await c.send([1])
                XCTFail("send succeeded after the peer died")
            } catch let error as CircuitError {
                XCTAssertEqual(error, .peerClosed)
            }
            let awaited3 = await transport.closed()
            XCTAssertEqual(awaited3, .peerClosed)
        }
    }

    func testWrongPeerFailsLoudly() async throws {
        let (child, socket) = try startPeer(intent: "cloister.something-else/1")
        do {
            _ = try await Transport<UInt16>.start(socket: socket, configuration: peerConfiguration())
            XCTFail("handshake accepted the wrong intent")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .handshakeMismatch(field: "intent", ours: "cloister.test-peer/1", theirs: "cloister.something-else/1"))
        }
        XCTAssertEqual(try child.wait(), .exited(1), "the peer reports the mismatch and exits non-zero")
    }
}
