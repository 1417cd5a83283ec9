import XCTest
@testable import Circuits

/// The transport's routing and flow-control state on its own: ids, conversations, ends,
/// credit. No socket, no thread.
final class ConversationTableTests: XCTestCase {
    private func table(_ side: TransportSide = .opener, maxCircuits: UInt64 = 1024, window: UInt64 = 1000) -> ConversationTable<QueuedConversation> {
        var t = ConversationTable<QueuedConversation>(side: side, maxCircuits: maxCircuits, window: window, reservedBand: 2, reserved: [0])
        t.peerHandshake(window: 500)
        return t
    }

    private func frame(_ circuit: UInt64, _ payload: [UInt8] = [1], end: Bool = false) -> Frame {
        Frame(header: FrameHeader(kind: .data, end: end, descriptorCount: 0, length: payload.count, circuit: circuit),
              payload: payload, descriptors: nil)
    }

    func testEachSideOpensIdsOfItsOwnParityAboveTheBand() throws {
        var opener = table(.opener), acceptor = table(.acceptor)
        XCTAssertEqual(try opener.open().id, 2)
        XCTAssertEqual(try opener.open().id, 4)
        XCTAssertEqual(try acceptor.open().id, 3)
        XCTAssertEqual(try acceptor.open().id, 5)
        var small = table(.opener, maxCircuits: 6)
        _ = try small.open()
        _ = try small.open()
        XCTAssertThrowsError(try small.open()) { XCTAssertEqual($0 as? CircuitError, .noIdleCircuit) }
    }

    func testAnIdIsReusedOnlyOnceBothEndsAreDone() throws {
        var t = table(.opener, maxCircuits: 4)
        let c = try t.open()
        XCTAssertEqual(c.id, 2)
        t.beginEnding(c)
        t.endWritten(c)
        XCTAssertThrowsError(try t.open(), "our end alone does not free it")
        _ = try t.route(frame(2, [], end: true))
        XCTAssertEqual(try t.open().id, 2, "with the peer's end, the id is idle again")
    }

    func testThePeerStartsConversationsOnlyOnItsOwnIds() throws {
        var t = table(.opener)
        XCTAssertThrowsError(try t.route(frame(2))) { XCTAssertEqual($0 as? CircuitError, .messageOnIdleCircuit(id: 2)) }
        _ = try t.route(frame(3))
        XCTAssertTrue(t.hasIncoming)
        let incoming = try XCTUnwrap(t.nextIncoming())
        XCTAssertEqual(incoming.id, 3)
        XCTAssertEqual(incoming.queue.count, 1)
        _ = try t.route(frame(3))
        XCTAssertFalse(t.hasIncoming, "the same conversation, not a new one")
        XCTAssertEqual(incoming.queue.count, 2)
    }

    func testThePeerMayNotSendMoreThanItWasGranted() throws {
        var t = table(.opener, window: 100)
        let cost = TransportConfiguration<UInt64>.cost(payload: 40, descriptors: 0)
        var sent = 0
        while sent + cost <= 100 {
            _ = try t.route(frame(3, [UInt8](repeating: 0, count: 40)))
            sent += cost
        }
        XCTAssertThrowsError(try t.route(frame(3, [UInt8](repeating: 0, count: 40)))) {
            XCTAssertEqual($0 as? CircuitError, .creditExceeded(id: 3, received: UInt64(sent + cost), granted: 100))
        }
    }

    func testNothingAfterTheEndAndNoEndOnAReservedCircuit() throws {
        var t = table(.opener)
        _ = try t.route(frame(3, [1], end: true))
        XCTAssertThrowsError(try t.route(frame(3))) { XCTAssertEqual($0 as? CircuitError, .messageAfterEnd(id: 3)) }
        var u = table(.opener)
        XCTAssertThrowsError(try u.route(frame(0, [], end: true))) {
            XCTAssertEqual($0 as? CircuitError, .peerEndedReservedCircuit(id: 0))
        }
    }

    func testCreditIsGrantedEveryHalfWindowAndLimitsOnlyGrow() throws {
        var t = table(.opener, window: 1000)
        let credit = t.credit(3)
        XCTAssertNil(t.consume(499, credit))
        XCTAssertEqual(t.consume(1, credit), 1500, "half a window consumed: the limit moves a window ahead")
        XCTAssertNil(t.consume(499, credit))
        XCTAssertEqual(t.credit(5).limit, 500, "the peer's window")
        _ = t.raiseLimit(800, on: 5)
        _ = t.raiseLimit(700, on: 5)
        XCTAssertEqual(t.credit(5).limit, 800, "a late, smaller grant never lowers it")
    }

    func testAnAbandonedConversationsDataIsDroppedAndItsCreditReturned() throws {
        var t = table(.opener, window: 1000)
        _ = try t.route(frame(3))
        let c = try XCTUnwrap(t.nextIncoming())
        c.abandoned = true
        var grant: UInt64?
        for _ in 0..<10 { grant = try t.route(frame(3, [UInt8](repeating: 0, count: 10))).grant ?? grant }
        XCTAssertEqual(c.queue.count, 1, "only what came before it was abandoned")
        XCTAssertNotNil(grant, "credit for the dropped data goes back to the peer")
        XCTAssertEqual(t.dropQueued().count, 1)
    }
}
