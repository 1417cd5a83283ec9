import SystemCalls
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The one thread every child is spawned from. A role sets PR_SET_PDEATHSIG so that it dies
/// with its parent, but the kernel ties that signal to the parent *thread* that created it:
/// spawning from a pool thread that later exits would kill a healthy child. This thread lives
/// as long as the process.
final class SpawnerThread: Sendable {
    static let shared = SpawnerThread()

    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let ready = DispatchSemaphore(value: 0)

    private init() {
        do {
            try Threads.start("spawner", detached: true) { [self] in loop() }
        } catch {
            preconditionFailure("the spawner thread did not start: \(error)")
        }
    }

    private func loop() {
        while true {
            ready.wait()
            let job = jobs.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            job?()
        }
    }

    /// Runs `body` on the spawner thread and returns its result.
    func run<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<T?>(nil)
        jobs.withLock {
            $0.append {
                result.withLock { $0 = body() }
                done.signal()
            }
        }
        ready.signal()
        done.wait()
        return result.withLock { $0! }
    }
}
