import XCTest
import SystemPackage
@testable import Circuits
import TestSupport

final class TransportTests: XCTestCase {
    func testConversationBothKinds() async throws {
        do {
            let before = openDescriptorCount()
            do {
                let (a, b) = try await transportPair()
                let request = try a.open()
                try await request.send(Array("hello".utf8))
                let served = try await b.accept()
                XCTAssertEqual(served.id, request.id)
                let got = try await served.receive()
                XCTAssertEqual(got.payload, Array("hello".utf8))
                XCTAssertFalse(got.isEnd)
                try await request.send(Array("bye".utf8), end: true)
                let last = try await served.receive()
                XCTAssertTrue(last.isEnd)
                try await served.send(Array("ok".utf8), end: true)
                let reply = try await request.receive()
                XCTAssertEqual(reply.payload, Array("ok".utf8))
                XCTAssertTrue(reply.isEnd)
                do {
                    _ = try await request.receive()
                    XCTFail("received after the end")
                } catch let error as CircuitError {
                    XCTAssertEqual(error, .conversationEnded(id: UInt64(request.id)))
                }
                XCTAssertTrue(eventually { a.busyCircuits == 0 && b.busyCircuits == 0 }, "circuits idle again")
                a.close()
                b.close()
            }
            XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
        }
    }

    func testIdleCircuitsAreReusedAndIdsFollowParity() async throws {
        let (a, b) = try await transportPair(opener: configuration(.opener, maxCircuits: 8),
                                             acceptor: configuration(.acceptor, maxCircuits: 8))
        // Ids 2, 4, 6 belong to the opener (band is 0..<2, 8 circuits).
        var seen: [UInt16] = []
        var open: [Circuit<UInt16>] = []
        for _ in 0..<3 {
            let c = try a.open()
            seen.append(c.id)
            open.append(c)
        }
        XCTAssertEqual(seen, [2, 4, 6])
        XCTAssertThrowsError(try a.open()) { XCTAssertEqual($0 as? CircuitError, .noIdleCircuit) }
        // End one conversation from both sides; its id becomes idle and is handed out again.
        try await open[1].send([1], end: true)
        let peerSide = try await b.accept()
        _ = try await peerSide.receive()
        try await peerSide.send([], end: true)
        _ = try await open[1].receive()
        XCTAssertTrue(eventually { (try? a.open()).map { $0.id == 4 } ?? false })
    }

    /// Many short conversations back to back: each accept races the next arrival, which is
    /// where a lost wakeup would hang.
    func testManyConversationsAreAllAccepted() async throws {
        do {
            let (a, b) = try await transportPair()
            let served = try await withDeadline(30) {
                try await withThrowingTaskGroup(of: Int.self) { group in
                    group.addTask {
                        for i in 0..<2000 {
                            let c = try await b.accept()
                            let m = try await c.receive()
                            try await c.send(m.payload, end: true)
                            if i == 1999 { return i + 1 }
                        }
                        return 0
                    }
                    group.addTask {
                        for i in 0..<2000 {
                            let c = try a.open()
                            try await c.send([UInt8(i & 0xff)], end: true)
                            let reply = try await c.receive()
                            XCTAssertEqual(reply.payload, [UInt8(i & 0xff)])
                        }
                        return -1
                    }
                    var result = 0
                    for try await r in group where r > 0 { result = r }
                    return result
                }
            }
            XCTAssertEqual(served, 2000)
        }
    }

    func testAcceptorOpensOddIds() async throws {
        let (a, b) = try await transportPair()
        let c = try b.open()
        XCTAssertEqual(c.id % 2, 1)
        try await c.send([42])
        let served = try await a.accept()
        let awaited1 = try await served.receive().payload
        XCTAssertEqual(awaited1, [42])
    }

    func testReceiveAvailableReturnsTheQueuedBatchEndLast() async throws {
        let (a, b) = try await transportPair()
        let c = try a.open()
        for i in 0..<5 { try await c.send([UInt8(i)]) }
        try await c.send([9], end: true)
        let served = try await b.accept()
        var payloads: [[UInt8]] = []
        var sawEnd = false
        while !sawEnd {
            let batch = try await served.receiveAvailable()
            XCTAssertFalse(batch.isEmpty)
            XCTAssertTrue(batch.dropLast().allSatisfy { !$0.isEnd }, "the end message comes last")
            sawEnd = batch.last?.isEnd ?? false
            payloads += batch.map(\.payload)
        }
        XCTAssertEqual(payloads, [[0], [1], [2], [3], [4], [9]])
        do {
            _ = try await served.receiveAvailable()
            XCTFail("received after the end")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .conversationEnded(id: UInt64(served.id)))
        }
        try await served.send([], end: true)
        XCTAssertTrue(eventually { a.busyCircuits == 0 && b.busyCircuits == 0 })
    }

    /// The peer's handshake and its first messages can arrive in one batch.
    func testHandshakeAndDataInOneBatch() async throws {
        let (mine, theirs) = try SocketCalls.socketPair(.seqpacket)
        let peer = RawPeer(fd: theirs)
        try peer.sendHandshake()
        for i in 0..<3 { try peer.frame(.data, circuit: 3, payload: [UInt8(i)]) }
        let transport = try await Transport<UInt16>.start(socket: mine, configuration: configuration(.opener))
        defer { transport.close() }
        let c = try await transport.accept()
        for i in 0..<3 {
            let awaited = try await c.receive()
            XCTAssertEqual(awaited.payload, [UInt8(i)])
        }
    }

    func testConcurrentClosesLeakNothing() async throws {
        let before = openDescriptorCount()
        for _ in 0..<20 {
            let (a, b) = try await transportPair()
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { a.close() } }
                group.addTask { b.close() }
            }
            XCTAssertEqual(a.failure, .closed)
        }
        XCTAssertEqual(openDescriptorCount(), before)
    }

    func testReaderAndWriterThreadsAreNamed() async throws {
        let (a, b) = try await transportPair()
        defer { a.close(); b.close() }
        func names() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).compactMap {
                try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8)
            }
        }
        // Each thread names itself when it first runs, which may be a moment after start.
        XCTAssertTrue(eventually { names().filter { $0 == "circuits-reader\n" }.count == 2 }, "\(names())")
        XCTAssertTrue(eventually { names().filter { $0 == "circuits-writer\n" }.count == 2 }, "\(names())")
    }

    func testReservedCircuit() async throws {
        let (a, b) = try await transportPair()
        let health = try a.reserved(0)
        try await health.send(Array("ping".utf8))
        let message = try await b.reserved(0).receive()
        XCTAssertEqual(message.payload, Array("ping".utf8))
        do {
            try await health.send([], end: true)
            XCTFail("end on a reserved circuit")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .endOnReservedCircuit(id: 0))
        }
        XCTAssertThrowsError(try a.reserved(1)) { XCTAssertEqual($0 as? CircuitError, .notReserved(id: 1)) }
    }

    func testDescriptorsTravelAndLeakNothing() async throws {
        do {
            let before = openDescriptorCount()
            do {
                let (a, b) = try await transportPair()
                let pipe = try makePipe()
                let c = try a.open()
                try await c.send(Array("with fd".utf8), descriptors: [pipe.write])
                try pipe.write.close()
                let served = try await b.accept()
                let message = try await served.receive()
                XCTAssertEqual(message.descriptors?.count, 1)
                let fd = try XCTUnwrap(message.descriptors?.take(0))
                XCTAssertEqual(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "received descriptors are close-on-exec")
                _ = try Array("through".utf8).withUnsafeBytes { try fd.write($0) }
                try fd.close()
                XCTAssertEqual(try readAll(pipe.read), Array("through".utf8))
                try pipe.read.close()

                // Descriptors nobody takes are closed with the message.
                let pipe2 = try makePipe()
                try await c.send([], descriptors: [pipe2.write, pipe2.write])
                try pipe2.write.close()
                do { _ = try await served.receive() }
                XCTAssertEqual(try readAll(pipe2.read, within: 5), [], "write end closed everywhere, so EOF")
                try pipe2.read.close()

                // Taking one leaves it open when the rest are closed with the message.
                let left = try makePipe(), kept = try makePipe()
                try await c.send([], descriptors: [left.write, kept.write])
                try left.write.close()
                try kept.write.close()
                var taken: FileDescriptor?
                do {
                    let message = try await served.receive()
                    taken = message.descriptors?.take(1)
                }
                XCTAssertEqual(try readAll(left.read, within: 5), [], "the descriptor not taken is closed")
                let keptWrite = try XCTUnwrap(taken)
                _ = try Array("kept".utf8).withUnsafeBytes { try keptWrite.write($0) }
                try keptWrite.close()
                XCTAssertEqual(try readAll(kept.read), Array("kept".utf8), "the taken descriptor stayed open")
                try left.read.close()
                try kept.read.close()
                a.close()
                b.close()
            }
            XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
        }
    }

    /// A reader that receives one packet per batch (a per-client link's) still delivers a
    /// burst of messages, descriptors included, whole and in order.
    func testAOnePacketReaderDeliversABurstInOrder() async throws {
        let before = openDescriptorCount()
        do {
            var small = configuration(.acceptor, window: 64 * 1024, maxPayload: 4096)
            small.receiveBufferBytes = 1
            var opener = configuration(.opener, window: 64 * 1024, maxPayload: 4096)
            opener.receiveBufferBytes = 1
            let (a, b) = try await transportPair(opener: opener, acceptor: small)
            let c = try a.open()
            let pipe = try makePipe()
            // More than the window in all: the reader has to keep returning credit.
            async let received: Int = {
                let served = try await b.accept()
                var seen = 0
                while true {
                    let message = try await served.receive()
                    if message.isEnd && message.payload.isEmpty { return seen }
                    XCTAssertEqual(message.payload.first, UInt8(seen & 0xff))
                    XCTAssertEqual(message.payload.count, 1 + seen * 17 % 4000)
                    XCTAssertEqual(message.descriptors?.count ?? 0, seen % 50 == 0 ? 1 : 0)
                    seen += 1
                }
            }()
            for i in 0..<200 {
                try await c.send([UInt8(i & 0xff)] + [UInt8](repeating: 1, count: i * 17 % 4000), descriptors: i % 50 == 0 ? [pipe.write] : [])
            }
            try await c.send([], end: true)
            try pipe.write.close()
            let seen = try await received
            XCTAssertEqual(seen, 200)
            try pipe.read.close()
            a.close()
            b.close()
        }
        XCTAssertEqual(openDescriptorCount(), before, "descriptors leaked")
    }

    func testDescriptorsOfQueuedMessagesAreClosedOnClose() async throws {
        let before = openDescriptorCount()
        do {
            let (a, b) = try await transportPair()
            let pipe = try makePipe()
            let c = try a.open()
            for _ in 0..<3 { try await c.send([7], descriptors: [pipe.write]) }
            XCTAssertTrue(eventually { b.busyCircuits == 1 })
            try pipe.write.close()
            b.close()
            XCTAssertEqual(try readAll(pipe.read), [], "queued descriptors closed")
            try pipe.read.close()
            let awaited2 = await a.closed()
            XCTAssertEqual(awaited2, .peerClosed)
        }
        XCTAssertEqual(openDescriptorCount(), before)
    }

    func testAbandonedHandleEndsTheConversation() async throws {
        let (a, b) = try await transportPair()
        var served: Circuit<UInt16>?
        do {
            let c = try a.open()
            try await c.send([1])
            served = try await b.accept()
            _ = try await served!.receive()
        }
        // The opener's handle is gone: the acceptor sees the end.
        let end = try await served!.receive()
        XCTAssertTrue(end.isEnd)
        try await served!.send([9], end: true)
        XCTAssertTrue(eventually { a.busyCircuits == 0 && b.busyCircuits == 0 })
    }

    /// A conversation that only waits for the peer's end keeps no task: the action runs when
    /// the end comes, what the peer sends before it is dropped with its credit returned, and
    /// the transport failing runs it too.
    func testWhenPeerEndsRunsOnTheEndOrTheFailure() async throws {
        let (a, b) = try await transportPair(opener: configuration(.opener, window: 8192, maxPayload: 1024, maxDescriptors: 0),
                                             acceptor: configuration(.acceptor, window: 8192, maxPayload: 1024, maxDescriptors: 0))
        let ran = Recorder()
        let waiting = try a.open()
        try await waiting.send([1], end: true)
        waiting.whenPeerEnds { ran.add("ended") }
        let served = try await b.accept()
        let first = try await served.receive()
        XCTAssertTrue(first.isEnd)
        // More than the window in all: only dropped messages return credit for the rest.
        for _ in 0..<16 { try await served.send([UInt8](repeating: 7, count: 1000)) }
        XCTAssertEqual(ran.all, [])
        try await served.send([], end: true)
        XCTAssertTrue(eventually { ran.all == ["ended"] }, "\(ran.all)")
        XCTAssertTrue(eventually { a.busyCircuits == 0 && b.busyCircuits == 0 }, "both ends are done with it")

        let afterTheEnd = try a.open()
        try await afterTheEnd.send([2], end: true)
        let second = try await b.accept()
        _ = try await second.receive()
        try await second.send([], end: true)
        XCTAssertTrue(eventually { afterTheEnd.conversation.peerEnded })
        afterTheEnd.whenPeerEnds { ran.add("already ended") }
        XCTAssertEqual(ran.all, ["ended", "already ended"], "an end that came already runs it at once")

        let unanswered = try a.open()
        try await unanswered.send([3], end: true)
        unanswered.whenPeerEnds { ran.add("failed") }
        b.close()
        XCTAssertTrue(eventually { ran.all.last == "failed" }, "\(ran.all)")
    }

    func testCloseWakesWaitersAndLaterCallsFail() async throws {
        let (a, b) = try await transportPair()
        let c = try a.open()
        let waiter = Task { try await c.receive() }
        try await Task.sleep(for: .milliseconds(20))
        a.close()
        do {
            _ = try await waiter.value
            XCTFail("receive returned after close")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .closed)
        }
        XCTAssertThrowsError(try a.open()) { XCTAssertEqual($0 as? CircuitError, .closed) }
        let awaited3 = await b.closed()
        XCTAssertEqual(awaited3, .peerClosed)
    }

    func testCancelledReceiveThrows() async throws {
        let (a, b) = try await transportPair()
        defer { b.close() }
        let c = try a.open()
        let waiter = Task { try await c.receive() }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        do {
            _ = try await waiter.value
            XCTFail("receive returned after cancel")
        } catch is CancellationError {}
    }

    /// A sender waiting for credit its peer will never give (a consumer that stopped
    /// reading) can be cancelled; another sender waiting on the same circuit keeps waiting
    /// and goes on once credit comes.
    func testCancelledSendWaitingForCreditThrows() async throws {
        let window = 64 * 1024
        let (a, b) = try await transportPair(opener: configuration(.opener, window: window, maxPayload: 8192),
                                             acceptor: configuration(.acceptor, window: window, maxPayload: 8192))
        defer { a.close(); b.close() }
        let c = try a.open()
        let chunk = [UInt8](repeating: 7, count: 8192)
        while (try c.core.reserve(c.conversation, length: chunk.count, descriptors: 0, end: false)) {
            try await c.core.write(c.conversation, payload: chunk, descriptors: [], end: false)
        }
        let cancelled = Task { try await c.send(chunk) }
        let patient = Task { try await c.send(chunk) }
        try await Task.sleep(for: .milliseconds(50))
        cancelled.cancel()
        do {
            try await cancelled.value
            XCTFail("a send without credit returned after cancel")
        } catch is CancellationError {}
        let served = try await b.accept()
        var received = 0
        while received < window {
            received += try await served.receive().payload.count
        }
        try await patient.value
    }

    func testHandshakeMismatchFailsBothEnds() async throws {
        let before = openDescriptorCount()
        do {
            do {
                _ = try await transportPair(acceptor: configuration(.acceptor, intent: "other/2"))
                XCTFail("handshake accepted a different intent")
            } catch let error as CircuitError {
                XCTAssertEqual(error, .handshakeMismatch(field: "intent", ours: "test/1", theirs: "other/2"))
            }
            do {
                _ = try await transportPair(acceptor: configuration(.opener))
                XCTFail("handshake accepted two openers")
            } catch let error as CircuitError {
                guard case .handshakeMismatch(field: "side", _, _) = error else { return XCTFail("\(error)") }
            }
        }
        XCTAssertEqual(openDescriptorCount(), before)
    }

    func testHandshakeTimeout() async throws {
        let (a, b) = try SocketCalls.socketPair(.seqpacket)
        var c = configuration(.opener)
        c.handshakeTimeoutMilliseconds = 100
        do {
            _ = try await Transport<UInt16>.start(socket: a, configuration: c)
            XCTFail("started without a peer handshake")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .handshakeTimeout(milliseconds: 100))
        }
        try b.close()
    }

    func testPeerLimitsAreHonouredBySender() async throws {
        let (a, b) = try await transportPair(acceptor: configuration(.acceptor, window: 4096, maxPayload: 100, maxDescriptors: 0))
        defer { b.close() }
        let c = try a.open()
        do {
            try await c.send([UInt8](repeating: 0, count: 101))
            XCTFail("sent more than the peer accepts")
        } catch let error as CircuitError {
            XCTAssertEqual(error, .messageTooLarge(length: 101, descriptors: 0, peerLimit: 100, peerDescriptorLimit: 0))
        }
    }

    func testLargeMessagesOnStreamKeepFraming() async throws {
        let (a, b) = try await transportPair()
        let c = try a.open()
        let payloads = (0..<40).map { i in [UInt8](repeating: UInt8(i), count: 1 + (i * 7919) % (128 * 1024)) }
        let sender = Task {
            for p in payloads { try await c.send(p) }
        }
        let served = try await b.accept()
        for p in payloads {
            let got = try await served.receive()
            XCTAssertEqual(got.payload.count, p.count)
            XCTAssertEqual(got.payload.first, p.first)
            XCTAssertEqual(got.payload, p)
        }
        try await sender.value
    }
}
