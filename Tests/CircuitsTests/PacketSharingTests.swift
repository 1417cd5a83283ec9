import XCTest
import SystemPackage
@testable import Circuits
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Frames that share packets: the writer's queue and the reader's splitting of packets.
final class PacketSharingTests: XCTestCase {
    /// A burst of small messages on one circuit arrives complete and in order, in far fewer
    /// packets than messages.
    func testBurstOfSmallMessagesSharesPackets() async throws {
        do {
            let before = openDescriptorCount()
            do {
                let (a, b) = try await transportPair(opener: configuration(.opener, window: 4 << 20),
                                                     acceptor: configuration(.acceptor, window: 4 << 20))
                let count = 3000
                let sender = try a.open()
                async let received: [UInt32] = {
                    let served = try await b.accept()
                    var numbers: [UInt32] = []
                    while true {
                        for message in try await served.receiveAvailable() {
                            numbers.append(message.payload.prefix(4).reversed().reduce(0) { $0 << 8 | UInt32($1) })
                            XCTAssertEqual(message.payload.count, 100)
                            if message.isEnd { return numbers }
                        }
                    }
                }()
                for i in 0..<count {
                    var payload = withUnsafeBytes(of: UInt32(i).littleEndian, Array.init)
                    payload += [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 96)
                    try await sender.send(payload, end: i == count - 1)
                }
                let numbers = try await received
                XCTAssertEqual(numbers, (0..<UInt32(count)).map { $0 }, "every message, in order")
                let sent = a.statistics, got = b.statistics
                XCTAssertGreaterThanOrEqual(sent.framesSent, count)
                XCTAssertLessThan(sent.writes * 4, sent.framesSent, "\(sent)")
                XCTAssertGreaterThanOrEqual(got.framesReceived, count)
                XCTAssertLessThan(got.reads * 4, got.framesReceived, "\(got)")
                a.close()
                b.close()
            }
            XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
        }
    }

    /// Concurrent conversations mixing small, large and descriptor-carrying messages: every
    /// circuit sees its own messages in order with the right descriptors, over two rounds
    /// that reuse the idle ids (so a queued end must reach the peer before the next
    /// conversation's first frame, however large).
    func testMixedTrafficKeepsOrderWithinEachCircuit() async throws {
        do {
            let before = openDescriptorCount()
            do {
                let (a, b) = try await transportPair(opener: configuration(.opener, maxPayload: 64 * 1024),
                                                     acceptor: configuration(.acceptor, maxPayload: 64 * 1024))
                let pipe = try makePipe()
                var pipeIdentity = stat()
                XCTAssertEqual(fstat(pipe.write.rawValue, &pipeIdentity), 0)
                let inode = pipeIdentity.st_ino
                let circuits = 8, messages = 120
                for round in 0..<2 {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for c in 0..<circuits {
                            let circuit = try a.open()
                            group.addTask {
                                var generator = SystemRandomNumberGenerator()
                                for i in 0..<messages {
                                    // Mostly small (queued and packed), some large (written
                                    // alongside the queue or in turn), some with a descriptor.
                                    let size = (i + c) % 7 == 0 ? Int.random(in: 20_000...65_536, using: &generator)
                                                                : Int.random(in: 10...2_000, using: &generator)
                                    let withDescriptor = (i + c) % 5 == 0
                                    try await circuit.send(Self.payload(UInt32(i), size: size, withDescriptor: withDescriptor),
                                                           descriptors: withDescriptor ? [pipe.write] : [],
                                                           end: i == messages - 1)
                                }
                                let reply = try await circuit.receive()
                                XCTAssertTrue(reply.isEnd)
                            }
                        }
                        for _ in 0..<circuits {
                            let served = try await b.accept()
                            group.addTask {
                                var expected: UInt32 = 0
                                while true {
                                    let message = try await served.receive()
                                    let (number, size, withDescriptor) = Self.describe(message.payload)
                                    XCTAssertEqual(number, expected, "round \(round)")
                                    XCTAssertEqual(message.payload.count, size)
                                    XCTAssertEqual(message.payload.last, UInt8(truncatingIfNeeded: number))
                                    XCTAssertEqual(message.descriptors?.count ?? 0, withDescriptor ? 1 : 0)
                                    if let fd = message.descriptors?.take(0) {
                                        var st = stat()
                                        XCTAssertEqual(fstat(fd.rawValue, &st), 0)
                                        XCTAssertEqual(st.st_ino, inode, "the descriptor sent")
                                        try fd.close()
                                    }
                                    expected += 1
                                    if message.isEnd { break }
                                }
                                XCTAssertEqual(Int(expected), messages)
                                try await served.send([], end: true)
                            }
                        }
                        try await group.waitForAll()
                    }
                }
                XCTAssertLessThan(a.statistics.writes, a.statistics.framesSent, "some frames shared packets")
                try pipe.write.close()
                try pipe.read.close()
                a.close()
                b.close()
            }
            XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
        }
    }

    /// number (4 bytes), size (4), whether a descriptor comes along (1), filler ending with
    /// the number's low byte.
    static func payload(_ number: UInt32, size: Int, withDescriptor: Bool) -> [UInt8] {
        var bytes = withUnsafeBytes(of: number.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: UInt32(size).littleEndian, Array.init)
        bytes.append(withDescriptor ? 1 : 0)
        bytes += [UInt8](repeating: UInt8(truncatingIfNeeded: number), count: size - bytes.count)
        return bytes
    }

    static func describe(_ bytes: [UInt8]) -> (UInt32, Int, Bool) {
        func word(_ at: Int) -> UInt32 { bytes[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        return (word(0), Int(word(4)), bytes[8] == 1)
    }

    /// Messages a sender handed over are written before `close` shuts the socket, even when
    /// the sender closes right after its last send; and what arrived before the peer's end
    /// of file stays readable.
    func testCloseWritesWhatWasQueued() async throws {
        do {
            let (a, b) = try await transportPair(opener: configuration(.opener, window: 8 << 20),
                                                 acceptor: configuration(.acceptor, window: 8 << 20))
            let count = 4000
            let sender = try a.open()
            for i in 0..<count {
                try await sender.send([UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1000))
            }
            a.close()
            let served = try await b.accept()
            var received = 0
            while let batch = try? await served.receiveAvailable() {
                for message in batch {
                    XCTAssertEqual(message.payload.first, UInt8(truncatingIfNeeded: received))
                    received += 1
                }
            }
            XCTAssertEqual(received, count, "nothing lost at close")
            let why = await b.closed()
            XCTAssertEqual(why, .peerClosed)
            b.close()
        }
    }

    /// A peer that stops reading holds a close for the linger at most; senders waiting for
    /// room are released with the close.
    func testCloseLingerIsBoundedWhenThePeerStopsReading() async throws {
        let before = openDescriptorCount()
        do {
            var config = configuration(.opener, window: 64 << 20)
            config.closeLingerMilliseconds = 300
            let (transport, peer) = try await transportWithRawPeer(config: config,
                                                                   peerConfig: configuration(.acceptor, window: 64 << 20))
            let circuit = try transport.open()
            let sending = Task {
                // Fills the socket, then the queue, then waits for room that never comes.
                while true { try await circuit.send([UInt8](repeating: 1, count: 2000)) }
            }
            XCTAssertTrue(eventually { transport.statistics.framesSent > transport.statistics.writes + 100 },
                          "frames queue up behind the full socket: \(transport.statistics)")
            let start = DispatchTime.now().uptimeNanoseconds
            transport.close()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            XCTAssertGreaterThanOrEqual(seconds, 0.25, "close waited for the queue")
            XCTAssertLessThan(seconds, 10, "close gave up after the linger")
            let result = await sending.result
            XCTAssertThrowsError(try result.get()) { XCTAssertEqual($0 as? CircuitError, .closed) }
            peer.close()
        }
        XCTAssertEqual(openDescriptorCount(), before)
    }

    /// One packet may carry several frames; each gets the descriptors it declares, in order.
    func testPacketOfSeveralFramesDistributesDescriptors() async throws {
        let before = openDescriptorCount()
        do {
            let (transport, peer) = try await transportWithRawPeer()
            let pipes = try (0..<3).map { _ in try makePipe() }
            let packet = peer.encoded(.data, circuit: 3, payload: [1], descriptorCount: 1)
                + peer.encoded(.data, circuit: 3, payload: [2])
                + peer.encoded(.data, circuit: 3, payload: [3], descriptorCount: 2)
            try peer.raw(packet, descriptors: pipes.map(\.write))
            for p in pipes { try p.write.close() }
            let served = try await transport.accept()
            var messages: [Message] = []
            while messages.count < 3 { messages += try await served.receiveAvailable() }
            XCTAssertEqual(messages.map(\.payload), [[1], [2], [3]])
            XCTAssertEqual(messages.map { $0.descriptors?.count ?? 0 }, [1, 0, 2])
            // Each descriptor is the write end of the pipe sent in its place.
            let order = [(0, 0, pipes[0]), (2, 0, pipes[1]), (2, 1, pipes[2])]
            for (message, index, _) in order {
                let fd = try XCTUnwrap(messages[message].descriptors?.take(index))
                _ = try [UInt8(message), UInt8(index)].withUnsafeBytes { try fd.write($0) }
                try fd.close()
            }
            messages.removeAll()
            for (message, index, pipe) in order {
                XCTAssertEqual(try readAll(pipe.read), [UInt8(message), UInt8(index)])
                try pipe.read.close()
            }
            transport.close()
            peer.close()
        }
        XCTAssertEqual(openDescriptorCount(), before)
    }
}
