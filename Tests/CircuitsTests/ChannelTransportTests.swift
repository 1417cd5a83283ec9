import NIOCore
import NIOPosix
import SystemPackage
import XCTest
@testable import Circuits
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The circuits protocol on an event loop (`ChannelTransport`), over real unix stream sockets:
/// both ends in this process on one loop, or one end a `RawPeer` that writes whatever a test
/// wants.
final class ChannelTransportTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var loop: EventLoop { group.next() }

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func streamConfiguration(_ side: TransportSide, intent: String = "test/1", window: Int = 512 * 1024,
                                     maxPayload: Int = 128 * 1024, maxCircuits: UInt64 = 1024) -> TransportConfiguration<UInt16> {
        configuration(side, intent: intent, window: window, maxPayload: maxPayload, maxDescriptors: 0, maxCircuits: maxCircuits)
    }

    private func pair(opener: TransportConfiguration<UInt16>? = nil, acceptor: TransportConfiguration<UInt16>? = nil) throws
        -> (ChannelTransport<UInt16>, ChannelTransport<UInt16>) {
        let (a, b) = try SocketCalls.socketPair(.stream)
        let left = ChannelTransport.start(socket: a, configuration: opener ?? streamConfiguration(.opener), on: loop)
        let right = ChannelTransport.start(socket: b, configuration: acceptor ?? streamConfiguration(.acceptor), on: loop)
        return (try left.wait(), try right.wait())
    }

    /// Runs `body` on the loop and returns what it returns.
    private func onLoop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        try loop.submit(body).wait()
    }


    func testConversationsBothWaysAndTheIdIsReusedWhenBothEnded() throws {
        let before = openDescriptorCount()
        let (a, b) = try pair(opener: streamConfiguration(.opener, maxCircuits: 4), acceptor: streamConfiguration(.acceptor, maxCircuits: 4))
        let heard = Recorder()
        try onLoop {
            b.onConversation = { circuit in
                circuit.onMessage = { payload, isEnd in
                    heard.add("b:\(String(buffer: payload))\(isEnd ? "." : "")")
                    if isEnd { _ = try? circuit.send(Array("ok".utf8), end: true) }
                }
            }
            let request = try a.open()
            XCTAssertEqual(request.circuitID, 2)
            request.onMessage = { payload, isEnd in heard.add("a:\(String(buffer: payload))\(isEnd ? "." : "")") }
            XCTAssertTrue(try request.send(Array("hello".utf8)))
            XCTAssertTrue(try request.send(Array("bye".utf8), end: true))
            XCTAssertThrowsError(try request.send([1])) { XCTAssertEqual($0 as? CircuitError, .conversationEnded(id: 2)) }
        }
        XCTAssertTrue(eventually { heard.all == ["b:hello", "b:bye.", "a:ok."] }, "\(heard.all)")
        // Id 2 is the opener's only one here (band 0..<2, 4 circuits): free again once both ended.
        XCTAssertEqual(try onLoop { try a.open().circuitID }, 2)
        try onLoop {
            a.close()
            b.close()
        }
        XCTAssertTrue(eventually { openDescriptorCount() == before }, "descriptors left open")
    }

    /// A peer may open a conversation the moment the handshakes have crossed, before whoever
    /// started the other end has had the transport back: given to `start`, `onConversation`
    /// is there for it. (Set afterwards, the conversation would have been abandoned.)
    func testAConversationOpenedAtTheHandshakeReachesTheHandlerGivenToStart() throws {
        let (a, b) = try SocketCalls.socketPair(.stream)
        let heard = Recorder()
        let right = ChannelTransport.start(socket: b, configuration: streamConfiguration(.acceptor), on: loop) { circuit in
            circuit.onMessage = { payload, isEnd in heard.add("\(String(buffer: payload))\(isEnd ? "." : "")") }
        }
        // On the loop, as the opener's handshake completes: nothing else can run in between.
        let left = ChannelTransport.start(socket: a, configuration: streamConfiguration(.opener), on: loop).flatMapThrowing { transport in
            XCTAssertTrue(try transport.open().send(Array("first".utf8), end: true))
            return transport
        }
        let (opener, acceptor) = (try left.wait(), try right.wait())
        XCTAssertTrue(eventually { heard.all == ["first."] }, "\(heard.all)")
        try onLoop {
            opener.close()
            acceptor.close()
        }
    }

    func testAPausedConsumerStallsOnlyItsOwnCircuit() throws {
        // Room for a few 1 KiB messages per circuit.
        let (a, b) = try pair(opener: streamConfiguration(.opener, window: 8 * 1024, maxPayload: 1024),
                              acceptor: streamConfiguration(.acceptor, window: 8 * 1024, maxPayload: 1024))
        let heard = Recorder()
        let served = Recorder()
        let block = ByteBuffer(repeating: UInt8(ascii: "x"), count: 1000)
        let (stalled, free) = try onLoop { () -> (ChannelCircuit<UInt16>, ChannelCircuit<UInt16>) in
            var first: ChannelCircuit<UInt16>?
            b.onConversation = { circuit in
                if first == nil {
                    first = circuit
                    circuit.isDeliveryPaused = true
                }
                served.add("\(circuit.circuitID)")
                circuit.onMessage = { payload, _ in heard.add("\(circuit.circuitID):\(payload.readableBytes)") }
            }
            return (try a.open(), try a.open())
        }
        // The stalled circuit takes messages until its credit is gone, and no further.
        let sent = try onLoop { () -> Int in
            var sent = 0
            while try stalled.send(block) { sent += 1 }
            return sent
        }
        XCTAssertGreaterThan(sent, 3)
        XCTAssertLessThanOrEqual(sent, 8)
        // The other circuit on the same transport goes on.
        XCTAssertTrue(try onLoop { try free.send(block) })
        XCTAssertTrue(eventually { heard.all == ["4:1000"] }, "\(heard.all)")
        let writable = Recorder()
        try onLoop {
            stalled.onWritable = { writable.add("writable") }
            // Resuming hands over what waited, in order, and returns the credit.
            let paused = try XCTUnwrap(b.table.conversations[2])
            paused.isDeliveryPaused = false
        }
        XCTAssertTrue(eventually { heard.all.filter { $0.hasPrefix("2:") }.count == sent })
        XCTAssertTrue(eventually { writable.all == ["writable"] }, "the sender learns it may go on")
        XCTAssertTrue(try onLoop { try stalled.send(block) })
    }

    func testAHandshakeMismatchFailsBothEndsNamingBothSides() throws {
        let (a, b) = try SocketCalls.socketPair(.stream)
        let left = ChannelTransport.start(socket: a, configuration: streamConfiguration(.opener, intent: "one/1"), on: loop)
        let right = ChannelTransport.start(socket: b, configuration: streamConfiguration(.acceptor, intent: "two/1"), on: loop)
        XCTAssertThrowsError(try left.wait()) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "intent", ours: "one/1", theirs: "two/1"))
        }
        XCTAssertThrowsError(try right.wait()) {
            XCTAssertEqual($0 as? CircuitError, .handshakeMismatch(field: "intent", ours: "two/1", theirs: "one/1"))
        }
    }

    func testAStreamTransportRefusesToBeConfiguredForDescriptors() throws {
        let (a, b) = try SocketCalls.socketPair(.stream)
        defer { try? b.close() }
        XCTAssertThrowsError(try ChannelTransport.start(socket: a, configuration: configuration(.opener, maxDescriptors: 1), on: loop).wait()) {
            guard case .invalidConfiguration(let why)? = $0 as? CircuitError else { return XCTFail("\($0)") }
            XCTAssertTrue(why.contains("no descriptors"), why)
        }
    }

    /// A transport whose far end is a raw peer that has sent its handshake.
    private func withRawPeer() throws -> (ChannelTransport<UInt16>, RawPeer, Recorder) {
        let (a, b) = try SocketCalls.socketPair(.stream)
        let peer = RawPeer(fd: b)
        try peer.sendHandshake(streamConfiguration(.acceptor))
        let transport = try ChannelTransport.start(socket: a, configuration: streamConfiguration(.opener), on: loop).wait()
        let closed = Recorder()
        try onLoop { transport.onClose = { closed.add("\($0)") } }
        return (transport, peer, closed)
    }

    func testAFrameDeclaringDescriptorsBreaksTheTransport() throws {
        let (_, peer, closed) = try withRawPeer()
        try peer.raw(peer.encoded(.data, circuit: 3, payload: [1], descriptorCount: 1))
        XCTAssertTrue(eventually { closed.all == [CircuitError.unexpectedDescriptors(count: 1, context: "a stream carries none").description] },
                      "\(closed.all)")
    }

    func testAStreamEndingInsideAFrameIsReported() throws {
        let (_, peer, closed) = try withRawPeer()
        let frame = peer.encoded(.data, circuit: 3, payload: [1, 2, 3, 4])
        try peer.raw(Array(frame.prefix(11)))
        peer.finish()
        XCTAssertTrue(eventually { closed.all == [CircuitError.truncatedStream(received: 11).description] }, "\(closed.all)")
    }

    func testAPeerSendingBeyondItsCreditBreaksTheTransport() throws {
        let (transport, peer, closed) = try withRawPeer()
        try onLoop { transport.onConversation = { $0.isDeliveryPaused = true } }
        // 512 KiB of window, in 64 KiB messages: the ninth is one too many.
        let block = [UInt8](repeating: 7, count: 64 * 1024)
        for _ in 0..<9 { try peer.raw(peer.encoded(.data, circuit: 3, payload: block)) }
        XCTAssertTrue(eventually { closed.all.first?.contains("exceeded its credit on circuit 3") ?? false }, "\(closed.all)")
    }

    func testClosingWritesWhatWasSentFirst() throws {
        let (a, b) = try pair()
        let heard = Recorder()
        let ended = Recorder()
        let large = ByteBuffer(repeating: 9, count: 100 * 1024)
        try onLoop {
            b.onConversation = { circuit in
                circuit.onMessage = { payload, _ in heard.add("\(payload.readableBytes)") }
            }
            b.onClose = { ended.add("\($0)") }
            let circuit = try a.open()
            for _ in 0..<4 { XCTAssertTrue(try circuit.send(large)) }
            XCTAssertTrue(try circuit.send(Array("last".utf8), end: true))
            a.close()
        }
        XCTAssertTrue(eventually { heard.all == ["102400", "102400", "102400", "102400", "4"] }, "\(heard.all)")
        XCTAssertTrue(eventually { ended.all == [CircuitError.peerClosed.description] }, "\(ended.all)")
    }

    func testEveryUnfinishedConversationLearnsTheTransportFailed() throws {
        let (a, b) = try pair()
        let failures = Recorder()
        try onLoop {
            for _ in 0..<3 {
                let circuit = try a.open()
                circuit.onFailure = { failures.add("\(circuit.circuitID): \($0)") }
                XCTAssertTrue(try circuit.send([1]))
            }
            a.onClose = { failures.add("transport: \($0)") }
        }
        try onLoop { b.close() }
        XCTAssertTrue(eventually { failures.all.count == 4 }, "\(failures.all)")
        XCTAssertEqual(Set(failures.all), ["2: peer closed the transport", "4: peer closed the transport",
                                           "6: peer closed the transport", "transport: peer closed the transport"])
        XCTAssertThrowsError(try onLoop { try a.open() }) { XCTAssertEqual($0 as? CircuitError, .peerClosed) }
    }

    func testAnAbandonedConversationEndsAndReturnsItsCredit() throws {
        let (a, b) = try pair(opener: streamConfiguration(.opener, window: 8 * 1024, maxPayload: 1024, maxCircuits: 4),
                              acceptor: streamConfiguration(.acceptor, window: 8 * 1024, maxPayload: 1024, maxCircuits: 4))
        let heard = Recorder()
        let block = ByteBuffer(repeating: 1, count: 1000)
        let circuit = try onLoop { () -> ChannelCircuit<UInt16> in
            b.onConversation = { served in
                served.isDeliveryPaused = true
                served.onMessage = { _, _ in heard.add("unexpected") }
                // Gone before reading anything.
                b.eventLoop.execute { served.abandon() }
            }
            let circuit = try a.open()
            circuit.onMessage = { _, isEnd in heard.add(isEnd ? "end" : "message") }
            while try circuit.send(block) {}
            return circuit
        }
        XCTAssertTrue(eventually { heard.all == ["end"] }, "\(heard.all)")
        // What the abandoning side dropped was credited back: the circuit sends again.
        XCTAssertTrue(eventually { (try? self.onLoop { try circuit.send(block) }) ?? false })
        try onLoop { circuit.end() }
        XCTAssertTrue(eventually { (try? self.onLoop { try a.open().circuitID }) == 2 }, "the id is idle once both ended")
    }

    func testLargePayloadsArriveWhole() throws {
        let (a, b) = try pair()
        let sums = Recorder()
        let payload = ByteBuffer(bytes: (0..<(128 * 1024 - 1)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try onLoop {
            b.onConversation = { circuit in
                circuit.onMessage = { received, _ in
                    var copy = received
                    let kind = copy.readInteger(as: UInt8.self)
                    sums.add("\(kind ?? 0) \(copy == payload)")
                }
            }
            XCTAssertTrue(try a.open().send(payload, kind: 0x30))
        }
        XCTAssertTrue(eventually { sums.all == ["48 true"] }, "\(sums.all)")
        XCTAssertThrowsError(try onLoop { try a.open().send(ByteBuffer(repeating: 0, count: 128 * 1024 + 1)) }) {
            guard case .messageTooLarge? = $0 as? CircuitError else { return XCTFail("\($0)") }
        }
    }
}

/// What callbacks saw, read from the test's thread.
final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.withLock { items.append(item) } }
    var all: [String] { lock.withLock { items } }
}
