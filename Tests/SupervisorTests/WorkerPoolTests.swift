import Logging
import Processes
import Sandbox
import Supervisor
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The pool with real sandboxed workers: started confined, replaced when killed or hung,
/// reaped on shutdown.
final class WorkerPoolTests: XCTestCase {
    private func pool(count: Int = 2, deadline: Duration = .seconds(2), intensityLimit: Int = 5) -> WorkerPool {
        var c = WorkerPool.Configuration(count: count, executable: cloisterExecutable,
                                         policy: packageRoot + "/policies/worker.json")
        c.build = cloisterBuildID
        c.heartbeatInterval = .milliseconds(50)
        c.heartbeatDeadline = deadline
        c.backoffBase = .milliseconds(20)
        c.intensityLimit = intensityLimit
        var logger = Logger(label: "test.supervisor")
        logger.logLevel = .critical
        let p = WorkerPool(configuration: c, logger: logger)
        p.start()
        return p
    }

    private func waitUntil(_ what: String, seconds: Double = 20, _ condition: () -> Bool) {
        XCTAssertTrue(eventually(seconds, condition), "timed out waiting until \(what)")
    }

    private func isGone(_ pid: pid_t) -> Bool { kill(pid, 0) == -1 && errno == ESRCH }

    func testWorkersStartConfinedAndAnswerHeartbeats() async throws {
        let p = pool()
        waitUntil("both run and answered a heartbeat") {
            p.workers.allSatisfy { $0.state == .running && $0.lastHeartbeat != nil }
        }
        for worker in p.workers {
            let status = try XCTUnwrap(SandboxStatus.read(pid: try XCTUnwrap(worker.pid)))
            XCTAssertTrue(status.isConfined, "\(status.threads)")
            XCTAssertEqual(worker.violations, 0)
        }
        let pids = p.workers.compactMap(\.pid)
        await p.shutdown()
        XCTAssertTrue(p.workers.allSatisfy { $0.state == .stopped })
        for pid in pids { XCTAssertTrue(isGone(pid), "worker \(pid) still exists (zombie or alive)") }
    }

    func testKilledWorkerIsReplacedAndOthersAreUntouched() async throws {
        let p = pool()
        waitUntil("both run") { p.workers.allSatisfy { $0.state == .running } }
        let victim = try XCTUnwrap(p.workers[0].pid)
        let bystander = try XCTUnwrap(p.workers[1].pid)
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        waitUntil("worker 0 is replaced") {
            let w = p.workers[0]
            return w.state == .running && w.pid != nil && w.pid != victim && w.restarts == 1
        }
        XCTAssertTrue(isGone(victim), "the killed worker was reaped")
        XCTAssertEqual(p.workers[1].pid, bystander)
        XCTAssertEqual(p.workers[1].restarts, 0)
        await p.shutdown()
    }

    func testHungWorkerIsKilledAndReplaced() async throws {
        let p = pool(count: 1, deadline: .milliseconds(300))
        waitUntil("it runs") { p.workers[0].state == .running }
        let hung = try XCTUnwrap(p.workers[0].pid)
        XCTAssertEqual(kill(hung, SIGSTOP), 0)
        waitUntil("the hung worker is replaced") {
            let w = p.workers[0]
            return w.state == .running && w.pid != nil && w.pid != hung
        }
        XCTAssertTrue(isGone(hung), "the hung worker was killed and reaped")
        await p.shutdown()
    }

    func testRestartIntensityMarksThePoolDegradedAndKeepsReplacing() async throws {
        let p = pool(count: 1, intensityLimit: 2)
        for round in 1...3 {
            waitUntil("round \(round) runs") { p.workers[0].state == .running && p.workers[0].restarts == round - 1 }
            kill(try XCTUnwrap(p.workers[0].pid), SIGKILL)
        }
        waitUntil("replaced once more") { p.workers[0].state == .running && p.workers[0].restarts == 3 }
        XCTAssertTrue(p.isDegraded)
        await p.shutdown()
    }
}
