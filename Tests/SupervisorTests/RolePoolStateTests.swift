import XCTest
@testable import Supervisor

/// The pool's decisions as values: no process, thread or clock.
final class RolePoolStateTests: XCTestCase {
    final class Member: PoolMember {
        let slot: Int
        let id: Int
        init(slot: Int, id: Int) { (self.slot, self.id) = (slot, id) }
    }

    typealias State = RolePoolState<Member>

    private func state(_ count: Int, _ isolation: RolePool.Isolation, limit: Int = 5) -> State {
        State(count: count, isolation: isolation, intensity: RestartIntensity(limit: limit, window: .seconds(30)))
    }

    /// Launches and admits an instance in `slot`.
    @discardableResult
    private func running(_ s: inout State, _ slot: Int) -> Member {
        let member = Member(slot: slot, id: s.launching(slot))
        s.spawned(slot, pid: pid_t(1000 + member.id), at: .now)
        s.started(member)
        XCTAssertEqual(s.statuses[slot].state, .starting, "not running before it is admitted")
        XCTAssertEqual(s.admit(member), .admitted)
        return member
    }

    func testAPoolGivesEachClientToTheLeastLoadedAdmittedInstance() {
        var s = state(3, .pool)
        let a = running(&s, 0), b = running(&s, 1)
        let c = Member(slot: 2, id: s.launching(2))
        s.started(c)  // started, not admitted: gets no client
        var picks: [Int] = []
        for _ in 0..<4 { picks.append(State.Shared.choose(&s, tried: [], usable: { _ in true })!.id) }
        XCTAssertEqual(picks.sorted(), [0, 0, 1, 1])
        XCTAssertEqual(s.openConnections, 4)
        State.Shared.release(&s, a)
        XCTAssertEqual(State.Shared.choose(&s, tried: [], usable: { _ in true })?.id, 0, "a has one client, b two")
        // Passed over: one already tried, one whose transport failed.
        XCTAssertNil(State.Shared.choose(&s, tried: [ObjectIdentifier(a)], usable: { $0 !== b }))
        XCTAssertEqual(s.admit(c), .admitted)
        XCTAssertEqual(State.Shared.choose(&s, tried: [], usable: { _ in true })?.id, 2)
        XCTAssertEqual(s.admit(c), .stale, "admitted once")
    }

    func testInstancesBeingRenewedTakeClientsOnlyWhenNothingElseRuns() {
        var s = state(2, .pool)
        let a = running(&s, 0), b = running(&s, 1)
        _ = State.Shared.choose(&s, tried: [], usable: { _ in true })  // one client on slot 0
        s.renewAll()
        XCTAssertFalse(s.mayRenew(0), "it has a client")
        XCTAssertTrue(s.mayRenew(1))
        XCTAssertEqual(s.ended(b, renewed: true), .leftSlot)
        XCTAssertEqual(s.takeLeftReason(1), .ended(renewed: true))
        XCTAssertNil(s.takeLeftReason(1), "taken once")
        let fresh = running(&s, 1)
        XCTAssertEqual(State.Shared.choose(&s, tried: [], usable: { _ in true })?.id, fresh.id, "the renewed one is passed over")
        XCTAssertEqual(State.Shared.choose(&s, tried: [ObjectIdentifier(fresh)], usable: { _ in true })?.id, a.id,
                       "but takes a client when nothing else may")
        // A client of an instance that has been replaced does not count against its successor.
        XCTAssertEqual(s.ended(a, renewed: false), .leftSlot)
        let successor = running(&s, 0)
        State.Shared.release(&s, a)
        XCTAssertEqual(s.statuses[0].connections, 0)
        XCTAssertEqual(s.statuses[0].id, successor.id)
    }

    func testASpareLeavesItsSlotWithItsClient() {
        var s = state(2, .perClient)
        let first = running(&s, 0), second = running(&s, 1)
        var taken: Member?
        XCTAssertEqual(State.Spares.take(&s, peer: "10.0.0.1:5000", usable: { _ in true }, taken: &taken), .spare(ObjectIdentifier(first)))
        XCTAssertTrue(taken === first, "the lowest id first")
        XCTAssertEqual(s.takeLeftReason(0), .givenItsClient, "its slot starts the next")
        XCTAssertEqual(s.statuses.map(\.id), [first.id, second.id, first.id], "the slot keeps the id until it launches the next")
        XCTAssertEqual(s.statuses[0].state, .starting)
        XCTAssertEqual(s.statuses.last?.client, "10.0.0.1:5000")
        XCTAssertEqual(s.openConnections, 1)
        // Its end is a retirement, not its slot's business.
        XCTAssertEqual(s.ended(first, renewed: false), .wasServing)
        XCTAssertFalse(s.hasNoClient(first))
        State.Spares.clientLeft(&s, first)
        XCTAssertTrue(s.hasNoClient(first))
        s.retired(first)
        XCTAssertEqual(s.ended(first, renewed: false), .unknown)
        XCTAssertEqual(s.statuses.count, 2)
    }

    /// The race a per-client pool must settle: an instance that ends is never handed a
    /// client, and one handed a client is not reaped as its slot's.
    func testAnEndedSpareIsNeverTaken() {
        var s = state(1, .perClient)
        let spare = running(&s, 0)
        XCTAssertEqual(s.ended(spare, renewed: false), .leftSlot)
        var taken: Member?
        guard case .wait = State.Spares.take(&s, peer: "p", usable: { _ in true }, taken: &taken) else {
            return XCTFail("an ended spare was taken")
        }
        XCTAssertNil(taken)
    }

    /// No polling: a connection that finds every spare taken waits in line, and the next
    /// admitted spare goes to the one that waited longest; one whose deadline passed leaves.
    func testConnectionsWaitInLineForTheNextAdmittedSpare() {
        var s = state(1, .perClient)
        var taken: Member?
        XCTAssertEqual(State.Spares.take(&s, peer: "first", usable: { _ in true }, taken: &taken), .wait(ticket: 0))
        XCTAssertEqual(State.Spares.take(&s, peer: "second", usable: { _ in true }, taken: &taken), .wait(ticket: 1))
        XCTAssertEqual(State.Spares.take(&s, peer: "third", usable: { _ in true }, taken: &taken), .wait(ticket: 2))
        XCTAssertTrue(State.Spares.giveUp(&s, ticket: 1), "the second's deadline passed")
        let spare = Member(slot: 0, id: s.launching(0))
        s.started(spare)
        XCTAssertEqual(s.admit(spare), .handedOver(ticket: 0))
        XCTAssertEqual(s.statuses.last?.client, "first")
        XCTAssertEqual(s.takeLeftReason(0), .givenItsClient)
        XCTAssertFalse(State.Spares.giveUp(&s, ticket: 0), "already served")
        let next = Member(slot: 0, id: s.launching(0))
        s.started(next)
        XCTAssertEqual(s.admit(next), .handedOver(ticket: 2))
        XCTAssertEqual(s.statuses.last?.client, "third")
        let spareAgain = Member(slot: 0, id: s.launching(0))
        s.started(spareAgain)
        XCTAssertEqual(s.admit(spareAgain), .admitted, "nobody waits: it stays a spare")
        XCTAssertEqual(s.waiting, [])
    }

    func testStoppingAnswersEveryWaitingConnection() {
        var s = state(1, .perClient)
        var taken: Member?
        _ = State.Spares.take(&s, peer: "a", usable: { _ in true }, taken: &taken)
        _ = State.Spares.take(&s, peer: "b", usable: { _ in true }, taken: &taken)
        XCTAssertEqual(s.stop(), [0, 1])
        XCTAssertEqual(State.Spares.take(&s, peer: "c", usable: { _ in true }, taken: &taken), .stopping)
        let late = Member(slot: 0, id: s.launching(0))
        s.started(late)
        XCTAssertEqual(s.admit(late), .admitted, "nothing is handed out while stopping")
    }

    func testMoreRestartsThanTheLimitInTheWindowDegradeThePoolOnce() {
        var s = state(1, .pool, limit: 2)
        let start = ContinuousClock.now
        XCTAssertFalse(s.restarting(0, at: start))
        XCTAssertFalse(s.restarting(0, at: start + .seconds(1)))
        XCTAssertTrue(s.restarting(0, at: start + .seconds(2)), "the third within 30 s")
        XCTAssertFalse(s.endedWhileServing(at: start + .seconds(3)), "reported once")
        XCTAssertTrue(s.intensity.degraded)
        XCTAssertEqual(s.statuses[0].restarts, 3)
        XCTAssertEqual(s.statuses[0].state, .restarting)
        XCTAssertFalse(s.restarting(0, at: start + .seconds(40)), "the old ones fell out of the window")
        XCTAssertFalse(s.intensity.degraded)
    }
}
