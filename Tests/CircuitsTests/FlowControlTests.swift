import XCTest
@testable import Circuits
import TestSupport

final class FlowControlTests: XCTestCase {
    /// One circuit's consumer stops reading: its sender is held back by credit, while other
    /// circuits on the same transport keep flowing at full speed.
    func testStalledCircuitDoesNotStallOthers() async throws {
        do {
            let window = 64 * 1024
            let (a, b) = try await transportPair(opener: configuration(.opener, window: window, maxPayload: 8192),
                                                 acceptor: configuration(.acceptor, window: window, maxPayload: 8192))
            let stalled = try a.open()
            let chunk = [UInt8](repeating: 1, count: 8192)
            // The stalled sender pushes far more than one window; nobody reads that circuit.
            let stalledSender = Task {
                var sent = 0
                for _ in 0..<1000 {
                    try await stalled.send(chunk)
                    sent += 1
                }
                return sent
            }
            let stalledServed = try await b.accept()

            // Meanwhile 8 other circuits move 4 MiB each.
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<8 {
                    let c = try a.open()
                    group.addTask {
                        for i in 0..<512 { try await c.send(chunk, end: i == 511) }
                        return 0
                    }
                }
                var served = 0
                while served < 8 {
                    let c = try await b.accept()
                    served += 1
                    group.addTask {
                        var bytes = 0
                        while true {
                            let m = try await c.receive()
                            bytes += m.payload.count
                            if m.isEnd { break }
                        }
                        try await c.send([], end: true)
                        return bytes
                    }
                }
                var total = 0
                for try await bytes in group { total += bytes }
                XCTAssertEqual(total, 8 * 512 * 8192)
            }
            // The stalled circuit is still stuck within its window: the receiver holds at
            // most one window of it, however much the sender wanted to send.
            let queued = a.core.state.withLock { $0.table.credits[UInt64(stalled.id)]!.sent }
            XCTAssertLessThanOrEqual(queued, UInt64(window))
            XCTAssertGreaterThan(queued, UInt64(window - 8192 - 64 - 1), "window should be used up")

            // Reading the stalled circuit lets its sender finish.
            let reader = Task {
                var count = 0
                while count < 1000 {
                    _ = try await stalledServed.receive()
                    count += 1
                }
                return count
            }
            let sent = try await stalledSender.value
            XCTAssertEqual(sent, 1000)
            let awaited1 = try await reader.value
            XCTAssertEqual(awaited1, 1000)
            a.close()
            b.close()
        }
    }
}
