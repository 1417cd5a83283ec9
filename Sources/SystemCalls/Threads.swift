import CShim
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A thread of Cloister's own (not the Swift runtime's): named, so `/proc/PID/task/*/comm`
/// tells them apart, and started the one way every module starts one.
///
/// A sandboxed role creates every thread it will ever have before its seccomp filter is
/// loaded, and the filter then kills `clone` and `clone3`. Such a role calls `closeCreation`
/// first: it makes a fixed reserve of threads, and from then on `start` runs each body on a
/// reserve thread (waiting for one to be free) instead of creating one. That is how a role
/// still gets a thread for a link made later (the vault's to a restarted nursery) or for a
/// password hash, without the kernel ever being asked for a thread.
public enum Threads {
    /// A started thread, to join (wait until its body returned) or let go.
    public struct Handle: @unchecked Sendable {
        fileprivate enum Kind {
            case created(pthread_t)
            case reserved(ReserveJob)
        }
        fileprivate let kind: Kind

        /// Waits until the body has returned (never from the body's own thread).
        public func join() {
            switch kind {
            case .created(let thread): pthread_join(thread, nil)
            case .reserved(let job): job.waitUntilDone()
            }
        }

        /// Lets it finish on its own; its resources go back when its body returns.
        public func detach() {
            if case .created(let thread) = kind { pthread_detach(thread) }
        }

        /// Whether the caller is this thread (a body closing what started it).
        public var isCurrent: Bool {
            switch kind {
            case .created(let thread): return pthread_equal(thread, pthread_self()) != 0
            case .reserved(let job): return job.isRunning(on: pthread_self())
            }
        }
    }

    /// Starts `body` on a new thread, or on a reserve thread once creation is closed. A
    /// detached thread cleans up after itself; the other's handle must be joined.
    @discardableResult
    public static func start(_ name: String, detached: Bool = false, _ body: @escaping () -> Void) throws(SystemCallError) -> Handle {
        if let reserve = closed.withLock({ $0 }) {
            return Handle(kind: .reserved(try reserve.run(name, body)))
        }
        let thread = try create(name, body)
        if detached { pthread_detach(thread) }
        return Handle(kind: .created(thread))
    }

    /// Creates `count` idle threads now; afterwards no thread is created, and `start` runs its
    /// bodies on these, one at a time each, in the order they were started. Called once, by a
    /// role about to load a filter that kills `clone`.
    public static func closeCreation(keeping count: Int) throws(SystemCallError) {
        let reserve = ThreadReserve(size: count)
        for index in 0..<count {
            let thread = try create("reserve-\(index)") { reserve.serve() }
            pthread_detach(thread)
        }
        closed.withLock { $0 = reserve }
    }

    /// Whether `closeCreation` was called, and how many reserve threads there are.
    public static var reserveSize: Int? { closed.withLock { $0?.size } }

    private static let closed = Mutex<ThreadReserve?>(nil)

    /// Returns once the new thread runs its body: glibc's start of a thread (rseq,
    /// set_robust_list) and its name (prctl) come before, and must not meet a filter loaded
    /// right after this returns.
    private static func create(_ name: String, _ body: @escaping () -> Void) throws(SystemCallError) -> pthread_t {
        final class Start {
            let name: String
            let body: () -> Void
            let lock = ConditionLock()
            var running = false
            init(_ name: String, _ body: @escaping () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let start = Start(name, body)
        let box = Unmanaged.passRetained(start)
        var thread = pthread_t()
        do {
            try zeroOrErrno("pthread_create", detail: name) {
                pthread_create(&thread, nil, { raw in
                    let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
                    // The kernel keeps 15 bytes of a thread's name.
                    cloister_set_thread_name(String(start.name.utf8.prefix(15))!)
                    start.lock.withLock {
                        start.running = true
                        start.lock.broadcast()
                    }
                    start.body()
                    return nil
                }, box.toOpaque())
            }
        } catch {
            box.release()
            throw error
        }
        start.lock.lock()
        while !start.running { start.lock.wait() }
        start.lock.unlock()
        return thread
    }
}

/// One body waiting for, or running on, a reserve thread.
final class ReserveJob: @unchecked Sendable {
    let name: String
    let body: () -> Void
    private let lock = ConditionLock()
    private var runner: pthread_t?
    private var done = false

    init(_ name: String, _ body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    func run() {
        lock.withLock { runner = pthread_self() }
        body()
        lock.withLock {
            runner = nil
            done = true
            lock.broadcast()
        }
    }

    func waitUntilDone() {
        lock.lock()
        while !done { lock.wait() }
        lock.unlock()
    }

    func isRunning(on thread: pthread_t) -> Bool {
        lock.withLock { runner.map { pthread_equal($0, thread) != 0 } ?? false }
    }
}

/// The threads a role keeps once it creates no more (`Threads.closeCreation`).
final class ThreadReserve: @unchecked Sendable {
    let size: Int
    private let lock = ConditionLock()
    private var queue: [ReserveJob] = []

    init(size: Int) { self.size = size }

    func run(_ name: String, _ body: @escaping () -> Void) throws(SystemCallError) -> ReserveJob {
        guard size > 0 else {
            throw SystemCallError(call: "pthread_create", errno: .resourceTemporarilyUnavailable,
                                  detail: "\(name): this process creates no thread after its sandbox and keeps no reserve")
        }
        let job = ReserveJob(name, body)
        lock.withLock {
            queue.append(job)
            lock.broadcast()
        }
        return job
    }

    func serve() {
        while true {
            lock.lock()
            while queue.isEmpty { lock.wait() }
            let job = queue.removeFirst()
            lock.unlock()
            job.run()
        }
    }
}
