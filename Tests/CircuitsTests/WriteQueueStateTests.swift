import XCTest
@testable import Circuits

/// The write queue's state on its own: which frames share a packet, the order packets and
/// waiting senders leave in, and what the queue holds. No socket, no thread.
final class WriteQueueStateTests: XCTestCase {
    typealias Queue = WriteQueue<String>

    private func queue(packet: Int = 1000, descriptors: Int = 16) -> Queue {
        var q = Queue()
        q.limit = .init(bytes: packet, descriptors: descriptors)
        return q
    }

    private func append(_ q: inout Queue, _ bytes: [UInt8], fds: [CInt] = [], circuit: UInt64? = 2, atFront: Bool = false) {
        let header: [UInt8] = [0xee]
        header.withUnsafeBytes { h in
            bytes.withUnsafeBytes { p in q.append(header: h, payload: p, duplicates: fds, circuit: circuit, atFront: atFront) }
        }
    }

    private func packet(_ next: Queue.Next) -> Queue.Packet? {
        if case .write(let p) = next { return p }
        return nil
    }

    func testNothingSharesAPacketBeforeThePeersLimitIsKnown() {
        let q = Queue()
        XCTAssertFalse(q.isSmall(size: 1, descriptors: 0))
        XCTAssertTrue(queue().isSmall(size: 250, descriptors: 0))
        XCTAssertFalse(queue().isSmall(size: 251, descriptors: 0), "more than a quarter of a packet")
        XCTAssertFalse(queue(descriptors: 2).isSmall(size: 10, descriptors: 3), "more descriptors than a packet carries")
        XCTAssertFalse(queue(descriptors: 64).isSmall(size: 10, descriptors: Queue.maxQueuedDescriptors / 4 + 1))
    }

    func testFramesFillTheOpenPacketThenStartAnother() {
        var q = queue(packet: 100)
        for i in 0..<5 { append(&q, [UInt8](repeating: UInt8(i), count: 39)) }  // 40 bytes each with the header
        XCTAssertEqual(q.entries.count, 3, "two frames per 100-byte packet")
        XCTAssertEqual(q.queuedBytes, 200)
        XCTAssertFalse(q.idle)
        // Complete packets go; the open one waits for the burst to end.
        let first = packet(q.next(takeOpen: false))
        XCTAssertEqual(first?.bytes.count, 80)
        XCTAssertEqual(first?.bytes[1], 0)
        XCTAssertEqual(first?.bytes[41], 1)
        XCTAssertTrue(q.writing)
        guard case .nothing = q.next(takeOpen: true) else { return XCTFail("one writer at a time") }
        q.finishWriting()
        XCTAssertNotNil(packet(q.next(takeOpen: false)))
        q.finishWriting()
        guard case .openPacketWaits = q.next(takeOpen: false) else { return XCTFail("the open packet waits") }
        let last = packet(q.next(takeOpen: true))
        XCTAssertEqual(last?.bytes.count, 40)
        q.finishWriting()
        XCTAssertTrue(q.idle)
        XCTAssertEqual(q.queuedBytes, 0)
    }

    func testDescriptorsAreAccountedAndBoundAPacket() {
        var q = queue(packet: 1000, descriptors: 3)
        append(&q, [1], fds: [10, 11])
        append(&q, [2], fds: [12, 13])  // would make 4 in one packet: a new one
        append(&q, [3], fds: [14])
        XCTAssertEqual(q.entries.count, 2)
        XCTAssertEqual(q.queuedDescriptors, 5)
        XCTAssertTrue(q.admits(descriptors: Queue.maxQueuedDescriptors - 5))
        XCTAssertFalse(q.admits(descriptors: Queue.maxQueuedDescriptors - 4))
        XCTAssertEqual(packet(q.next(takeOpen: true))?.descriptors, [10, 11])
        XCTAssertEqual(q.queuedDescriptors, 3)
    }

    func testAWaitingSenderKeepsItsPlaceBehindWhatWasQueuedBeforeIt() {
        var q = queue()
        append(&q, [1])
        q.appendTurn("sender")
        append(&q, [2])
        XCTAssertNotNil(packet(q.next(takeOpen: false)), "the packet before the sender is complete: a turn follows it")
        q.finishWriting()
        XCTAssertTrue(q.headIsTurn)
        guard case .handOff(let waiter) = q.next(takeOpen: false) else { return XCTFail("the sender's turn") }
        XCTAssertEqual(waiter, "sender")
        XCTAssertTrue(q.writing, "the socket is the sender's")
        q.finishWriting()
        XCTAssertEqual(packet(q.next(takeOpen: true))?.bytes, [0xee, 2])
    }

    func testAFrameTheSocketHadNoRoomForGoesFirst() {
        var q = queue()
        append(&q, [2])
        append(&q, [1], atFront: true)
        XCTAssertEqual(packet(q.next(takeOpen: false))?.bytes, [0xee, 1])
    }

    func testOrderWithinACircuitIsVisibleWhileQueuedAndInFlight() {
        var q = queue()
        append(&q, [1], circuit: 4)
        append(&q, [2], circuit: nil)  // a control frame takes no part in the order
        XCTAssertTrue(q.hasQueuedFrame(on: 4))
        XCTAssertFalse(q.hasQueuedFrame(on: 6))
        _ = q.next(takeOpen: true)
        XCTAssertTrue(q.hasQueuedFrame(on: 4), "in flight still counts")
        q.finishWriting()
        XCTAssertFalse(q.hasQueuedFrame(on: 4))
    }

    func testRoomIsBackUnderHalfTheBound() {
        var q = queue(packet: 100_000)
        let chunk = [UInt8](repeating: 0, count: 20_000)
        while !q.isOverBound { append(&q, chunk) }
        XCTAssertFalse(q.hasRoom)
        while !q.hasRoom {
            guard packet(q.next(takeOpen: true)) != nil else { return XCTFail("drained without room") }
            q.finishWriting()
        }
        XCTAssertLessThanOrEqual(q.queuedBytes, q.maxQueuedBytes / 2)
    }

    func testRemoveAllReturnsPacketsAndWaitersAndEmpties() {
        var q = queue()
        append(&q, [1], fds: [20])
        q.appendTurn("a")
        append(&q, [2])
        q.appendTurn("b")
        let (packets, turns) = q.removeAll()
        XCTAssertEqual(packets.count, 2)
        XCTAssertEqual(packets.flatMap(\.descriptors), [20], "the caller closes them")
        XCTAssertEqual(turns, ["a", "b"])
        XCTAssertTrue(q.idle)
        XCTAssertEqual(q.queuedBytes, 0)
        XCTAssertEqual(q.queuedDescriptors, 0)
    }
}
