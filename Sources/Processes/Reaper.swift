import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// Reaps every child of this process on one thread (`waitpid(-1)`), instead of a thread
/// blocked in `waitpid` per child: a process with one child per session (the nursery) keeps
/// one thread whatever their number. It must be the process's only way of reaping: a child
/// reaped elsewhere is never reported here.
public final class Reaper: @unchecked Sendable {
    public static let shared = Reaper()

    /// What is done with a child's end: called on the reaper's thread, so it must not block.
    public typealias Report = @Sendable (ChildProcess.Termination?) -> Void

    /// Guarded by `lock`.
    private struct State {
        /// Awaited children and what to do with their ends.
        var waiting: [pid_t: Report] = [:]
        /// Children reaped before anyone awaited them.
        var ended: [pid_t: ChildProcess.Termination] = [:]
        var threadStarted = false
    }

    private let lock = ConditionLock()
    /// Ends of children nobody awaited yet, remembered at most.
    static let unclaimedLimit = 1024
    private var state = State()

    init() {}

    /// How `child` ended, once it has. Nil when it cannot be known: the process has no
    /// children left to wait for (someone else reaped it).
    public func termination(of child: ChildProcess) async -> ChildProcess.Termination? {
        await withCheckedContinuation { continuation in
            watch(child) { continuation.resume(returning: $0) }
        }
    }

    /// Calls `report` with how `child` ended once it has (at once if it already had): a
    /// process with a child per session keeps no task per child.
    public func watch(_ child: ChildProcess, then report: @escaping Report) { watch(pid: child.pid, then: report) }

    /// As `watch(_:then:)`, for a child this process did not start: one a subreaper inherits
    /// when its parent dies.
    public func watch(pid: pid_t, then report: @escaping Report) {
        let (ended, startThread) = lock.withLock { () -> (ChildProcess.Termination?, Bool) in
            if let ended = state.ended.removeValue(forKey: pid) { return (ended, false) }
            state.waiting[pid] = report
            lock.broadcast()
            defer { state.threadStarted = true }
            return (nil, !state.threadStarted)
        }
        if let ended { return report(ended) }
        if startThread { startReaping() }
    }

    private func startReaping() {
        do {
            try Threads.start("reaper", detached: true) { self.reap() }
        } catch {
            // Without its thread nothing would ever be reported: say "unknown" to everyone.
            let waiting = lock.withLock { () -> [Report] in
                defer {
                    state.waiting = [:]
                    state.threadStarted = false
                }
                return Array(state.waiting.values)
            }
            for report in waiting { report(nil) }
        }
    }

    private func reap() -> Never {
        while true {
            // Sleep while nobody awaits a child: a child nobody awaits yet stays a zombie
            // until someone does, then is reaped at once.
            lock.lock()
            while state.waiting.isEmpty { lock.wait() }
            lock.unlock()
            var status: Int32 = 0
            guard let pid = try? valueOrErrno("waitpid", { waitpid(-1, &status, 0) }) else {
                // ECHILD: the awaited children were reaped elsewhere; their ends are unknown.
                let waiting = lock.withLock { () -> [Report] in
                    defer { state.waiting = [:] }
                    return Array(state.waiting.values)
                }
                for report in waiting { report(nil) }
                continue
            }
            let termination = ChildProcess.Termination(status: status)
            let report = lock.withLock { () -> Report? in
                guard let report = state.waiting.removeValue(forKey: pid) else {
                    // A subreaper also reaps orphans nobody will ask about (a shell's
                    // background jobs): only the latest few are remembered.
                    if state.ended.count >= Self.unclaimedLimit, let any = state.ended.keys.first { state.ended[any] = nil }
                    state.ended[pid] = termination
                    return nil
                }
                return report
            }
            report?(termination)
        }
    }
}
