import Foundation
import Processes
import XCTest

/// The reaper against real children: every end reported with its status, whether the child
/// ended before or after it was awaited, by one thread whatever the number of children.
final class ReaperTests: XCTestCase {
    private func spawn(_ script: String) throws -> ChildProcess {
        try ChildProcess.spawn("/bin/sh", arguments: ["-c", script])
    }

    func testStatusesAndSignalsAreReported() async throws {
        let exits = try spawn("exit 3")
        let killed = try spawn("kill -TERM $$; sleep 5")
        let exitStatus = await Reaper.shared.termination(of: exits)
        let killedStatus = await Reaper.shared.termination(of: killed)
        XCTAssertEqual(exitStatus, .exited(3))
        XCTAssertEqual(killedStatus, .signaled(SIGTERM))
    }

    func testAChildThatEndedBeforeItWasAwaitedIsReported() async throws {
        let early = try spawn("exit 7")
        // Another child keeps the reaper reaping while `early` ends unawaited.
        let late = try spawn("sleep 0.3; exit 1")
        let lateTask = Task { await Reaper.shared.termination(of: late) }
        try await Task.sleep(for: .milliseconds(100))
        let earlyStatus = await Reaper.shared.termination(of: early)
        let lateStatus = await lateTask.value
        XCTAssertEqual(earlyStatus, .exited(7))
        XCTAssertEqual(lateStatus, .exited(1))
    }

    func testManyChildrenOneThread() async throws {
        let children = try (0..<40).map { i in try spawn("sleep 0.2; exit \(i)") }
        let statuses = await withTaskGroup(of: (Int, ChildProcess.Termination?).self) { group in
            for (i, child) in children.enumerated() {
                group.addTask { (i, await Reaper.shared.termination(of: child)) }
            }
            var statuses: [Int: ChildProcess.Termination?] = [:]
            for await (i, status) in group { statuses[i] = status }
            return statuses
        }
        for i in 0..<40 { XCTAssertEqual(statuses[i], .exited(Int32(i)), "child \(i)") }
        let names = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap {
            try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        XCTAssertEqual(names.filter { $0 == "reaper" }.count, 1, "one reaping thread: \(names)")
    }
}
