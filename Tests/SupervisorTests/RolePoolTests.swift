import RoleProtocol
import Foundation
import Logging
import Processes
import Sandbox
import Supervisor
import TestSupport
import Synchronization
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The pool with real sandboxed workers: started confined, replaced when killed or hung,
/// reaped on shutdown.
final class RolePoolTests: XCTestCase {
    private func pool(count: Int = 2, deadline: Duration = .seconds(2), intensityLimit: Int = 5,
                      policy: String = packageRoot + "/policies/worker.json", log: CapturedLog? = nil) -> RolePool {
        var c = RolePool.Configuration(settings: WorkerSettings(), count: count, executable: cloisterExecutable, policy: policy)
        c.build = cloisterBuildID
        c.heartbeatInterval = .milliseconds(50)
        c.heartbeatDeadline = deadline
        c.backoffBase = .milliseconds(20)
        c.intensityLimit = intensityLimit
        var logger = log.map { captured in Logger(label: "test.supervisor") { _ in captured } } ?? Logger(label: "test.supervisor")
        logger.logLevel = log == nil ? .critical : .info
        let p = RolePool(configuration: c, logger: logger)
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
            p.slots.allSatisfy { $0.state == .running && $0.lastHeartbeat != nil }
        }
        for worker in p.slots {
            let status = try XCTUnwrap(SandboxStatus.read(pid: try XCTUnwrap(worker.pid)))
            XCTAssertTrue(status.isConfined, "\(status.threads)")
            XCTAssertEqual(worker.violations, 0)
        }
        let pids = p.slots.compactMap(\.pid)
        await p.shutdown()
        XCTAssertTrue(p.slots.allSatisfy { $0.state == .stopped })
        for pid in pids { XCTAssertTrue(isGone(pid), "worker \(pid) still exists (zombie or alive)") }
    }

    func testKilledWorkerIsReplacedAndOthersAreUntouched() async throws {
        let p = pool()
        waitUntil("both run") { p.slots.allSatisfy { $0.state == .running } }
        let victim = try XCTUnwrap(p.slots[0].pid)
        let bystander = try XCTUnwrap(p.slots[1].pid)
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        waitUntil("worker 0 is replaced") {
            let w = p.slots[0]
            return w.state == .running && w.pid != nil && w.pid != victim && w.restarts == 1
        }
        XCTAssertTrue(isGone(victim), "the killed worker was reaped")
        XCTAssertEqual(p.slots[1].pid, bystander)
        XCTAssertEqual(p.slots[1].restarts, 0)
        await p.shutdown()
    }

    func testHungWorkerIsKilledAndReplaced() async throws {
        let p = pool(count: 1, deadline: .milliseconds(300))
        waitUntil("it runs") { p.slots[0].state == .running }
        let hung = try XCTUnwrap(p.slots[0].pid)
        XCTAssertEqual(kill(hung, SIGSTOP), 0)
        waitUntil("the hung worker is replaced") {
            let w = p.slots[0]
            return w.state == .running && w.pid != nil && w.pid != hung
        }
        XCTAssertTrue(isGone(hung), "the hung worker was killed and reaped")
        await p.shutdown()
    }

    /// A worker whose profile lacks a syscall it makes once sealed (its event loop's wait,
    /// which a heartbeat wakes): the supervisor's log names the role, pid, syscall name,
    /// number and arguments, and the worker is killed.
    func testViolationIsLoggedBySupervisor() async throws {
        let policy = try Policy.load(file: packageRoot + "/policies/worker.json")
        var stripped = policy
        for i in stripped.rules.indices { stripped.rules[i].names.removeAll { $0 == "epoll_wait" } }
        stripped.rules.removeAll { $0.names.isEmpty }
        let path = NSTemporaryDirectory() + "cloister-stripped-\(getpid()).json"
        try stripped.json().write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let log = CapturedLog()
        let p = pool(count: 1, policy: path, log: log)
        waitUntil("a violation is logged and the worker replaced") {
            log.entries.contains { $0.message == "sandbox violation" } && p.slots[0].restarts >= 1
        }
        await p.shutdown()
        let line = try XCTUnwrap(log.entries.first { $0.message == "sandbox violation" })
        XCTAssertEqual(line.level, .error)
        XCTAssertEqual(line.metadata["role"], "worker")
        XCTAssertEqual(line.metadata["syscall"], "epoll_wait")
        XCTAssertEqual(line.metadata["syscall_nr"], "232")
        XCTAssertEqual(line.metadata["outcome"], "killed")
        XCTAssertEqual(line.metadata["worker"], "0")
        XCTAssertNotNil(line.metadata["pid"])
        XCTAssertNotNil(line.metadata["args"])
        XCTAssertGreaterThan(p.slots[0].violations, 0)
        XCTAssertTrue(log.entries.contains { $0.message == "worker failed to start" || $0.message == "worker ended" })
    }

    func testRestartIntensityMarksThePoolDegradedAndKeepsReplacing() async throws {
        let p = pool(count: 1, intensityLimit: 2)
        for round in 1...3 {
            waitUntil("round \(round) runs") { p.slots[0].state == .running && p.slots[0].restarts == round - 1 }
            kill(try XCTUnwrap(p.slots[0].pid), SIGKILL)
        }
        waitUntil("replaced once more") { p.slots[0].state == .running && p.slots[0].restarts == 3 }
        XCTAssertTrue(p.isDegraded)
        await p.shutdown()
    }
}

