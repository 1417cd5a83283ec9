import Circuits
import Logging
import Processes
import RoleProtocol
import Sandbox
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Runs a fixed number of sandboxed workers and keeps them running.
///
/// Each worker is this binary re-executed in the `worker` role with exactly two descriptors:
/// its transport (3) and the socket over which it hands back its seccomp listener (4). It runs
/// in report mode, so every violation reaches this process, which logs it and kills the worker.
/// Health travels on the transport's reserved control circuit: a heartbeat every
/// `heartbeatInterval`, answered within `heartbeatDeadline` or the worker counts as hung and is
/// killed. A worker that dies or hangs is reaped and replaced after an exponential backoff;
/// more than `intensityLimit` restarts within `intensityWindow` marks the pool degraded
/// (logged loudly), and replacing goes on.
public final class WorkerPool: Sendable {
    public struct Configuration: Sendable {
        public var count: Int
        public var executable: String
        public var policy: String
        /// The role this pool runs ("worker", or "vault" for the vault's pool of one), the
        /// intent of its transport's handshake, and the role's own options.
        public var role = "worker"
        public var intent = RoleIntent.supervisorWorker
        public var arguments: [String] = []
        public var mode: EnforcementMode = .report
        public var user = "nobody"
        public var group = "nogroup"
        /// The workers' build (the same binary: this process's build).
        public var build = BuildID.current
        public var heartbeatInterval: Duration = .milliseconds(500)
        public var heartbeatDeadline: Duration = .seconds(2)
        public var backoffBase: Duration = .milliseconds(50)
        public var backoffCap: Duration = .seconds(10)
        public var intensityLimit = 5
        public var intensityWindow: Duration = .seconds(30)

        public init(count: Int, executable: String, policy: String) {
            self.count = count
            self.executable = executable
            self.policy = policy
        }
    }

    public enum State: String, Sendable {
        case starting, running, restarting, stopped
    }

    /// What `cloister ctl workers` shows for one worker.
    public struct WorkerStatus: Sendable {
        public var id: Int
        public var pid: pid_t?
        public var state: State
        public var restarts: Int
        public var startedAt: ContinuousClock.Instant?
        public var lastHeartbeat: Duration?
        public var violations: Int
        /// Clients handed to this worker that it has not reported gone yet.
        public var connections = 0
    }

    /// Runs once a role instance has said ready, before it gets clients; what it returns runs
    /// when that instance has ended. A throw counts as a failed start.
    public typealias LaunchHook = @Sendable (_ id: Int, _ transport: Transport<UInt16>, _ pid: pid_t) async throws
        -> (@Sendable () async -> Void)?

    public enum DispatchError: Error, CustomStringConvertible {
        case noWorkerRunning
        public var description: String { "no worker is running" }
    }

    private struct Shared {
        var workers: [WorkerStatus]
        var restartTimes: [ContinuousClock.Instant] = []
        var degraded = false
        var stopping = false
        var tasks: [Task<Void, Never>] = []
        var running: [Int: RunningWorker] = [:]
        var monitors: [ViolationMonitor] = []
        /// Instances to replace as soon as they have no client (see `renew`).
        var renewing: Set<Int> = []
    }

    public let configuration: Configuration
    private let logger: Logger
    private let shared: Mutex<Shared>

    private let onLaunch: LaunchHook?

    public init(configuration: Configuration, logger: Logger, onLaunch: LaunchHook? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.onLaunch = onLaunch
        shared = Mutex(Shared(workers: (0..<configuration.count).map {
            WorkerStatus(id: $0, pid: nil, state: .starting, restarts: 0, startedAt: nil, lastHeartbeat: nil, violations: 0)
        }))
    }

    public var workers: [WorkerStatus] { shared.withLock { $0.workers } }
    public var isDegraded: Bool { shared.withLock { $0.degraded } }

    /// The transports of the instances running now, by slot id.
    public var runningTransports: [(id: Int, transport: Transport<UInt16>)] {
        shared.withLock { $0.running.map { ($0.key, $0.value.transport) }.sorted { $0.id < $1.id } }
    }

    /// In learn mode: every monitor of every instance that ran, for the syscalls they saw.
    public var monitors: [ViolationMonitor] { shared.withLock { $0.monitors } }

    public var openConnections: Int { shared.withLock { $0.workers.reduce(0) { $0 + $1.connections } } }

    /// Replaces every running instance, each as soon as it has no client: it gets no new
    /// clients meanwhile, and its replacement starts from the executable and profile as they
    /// are now. Planned replacements are not restarts: no backoff, no count.
    public func renew() {
        shared.withLock { s in s.renewing.formUnion(s.running.keys) }
    }

    /// Hands a client socket to the running worker with the fewest open connections and
    /// closes this process's copy, whatever happens. The worker ends the conversation when
    /// the client has gone; until then the client counts against that worker.
    public func dispatch(_ client: FileDescriptor) async throws {
        defer { try? client.close() }
        let chosen: (Int, RunningWorker)? = shared.withLock { s in
            let running = s.running.filter { s.workers[$0.key].state == .running }
            // Instances being renewed take clients only when nothing else runs.
            let fresh = running.filter { !s.renewing.contains($0.key) }
            let candidates = fresh.isEmpty ? running : fresh
            guard let best = candidates.min(by: { s.workers[$0.key].connections < s.workers[$1.key].connections }) else { return nil }
            s.workers[best.key].connections += 1
            return (best.key, best.value)
        }
        guard let (id, worker) = chosen else { throw DispatchError.noWorkerRunning }
        let circuit: Circuit<UInt16>
        do {
            circuit = try worker.transport.open()
            try await circuit.send(RoleMessage.client.encoded, descriptors: [client])
        } catch {
            release(id, worker)
            throw error
        }
        Task {
            while let message = try? await circuit.receive(), !message.isEnd {}
            self.release(id, worker)
        }
    }

    private func release(_ id: Int, _ worker: RunningWorker) {
        shared.withLock { s in
            // A replaced worker's clients were counted against it, not its successor.
            if s.running[id] === worker { s.workers[id].connections -= 1 }
        }
    }

    public func start() {
        let tasks = (0..<configuration.count).map { id in Task { await self.keepRunning(id) } }
        shared.withLock { $0.tasks = tasks }
    }

    /// Stops every worker and waits until all are reaped.
    public func shutdown() async {
        let tasks: [Task<Void, Never>] = shared.withLock { s in
            s.stopping = true
            return s.tasks
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    private var stopping: Bool { shared.withLock { $0.stopping } }

    private func update(_ id: Int, _ change: (inout WorkerStatus) -> Void) {
        shared.withLock { change(&$0.workers[id]) }
    }

    /// One worker slot: launch, supervise, reap, back off, again, until shutdown.
    private func keepRunning(_ id: Int) async {
        var failuresInARow = 0
        while !stopping {
            var log = logger
            log[metadataKey: "\(configuration.role)"] = "\(id)"
            let started = ContinuousClock.now
            do {
                let worker = try await launch(id, logger: log)
                log[metadataKey: "pid"] = "\(worker.child.pid)"
                shared.withLock {
                    $0.running[id] = worker
                    $0.renewing.remove(id)
                    $0.workers[id].connections = 0
                    // Kept only for learn mode, where they hold what the role used.
                    if configuration.mode == .learn { $0.monitors.append(worker.monitor) }
                }
                var teardown: (@Sendable () async -> Void)?
                var renewed = false
                do {
                    teardown = try await onLaunch?(id, worker.transport, worker.child.pid)
                    update(id) { $0.state = .running }
                    log.info("\(configuration.role) running")
                    renewed = await supervise(worker, id: id, logger: log)
                } catch {
                    log.error("\(configuration.role) failed to start", metadata: ["error": "\(error)"])
                }
                _ = shared.withLock { $0.running.removeValue(forKey: id) }
                worker.stop()
                await teardown?()
                let termination = try? await onOwnThread { try worker.child.wait() }
                worker.monitor.waitUntilDone()
                // Its output pipe is closed too before the slot moves on (or shutdown returns).
                await worker.output.value
                if stopping {
                    log.info("\(configuration.role) stopped", metadata: ["termination": "\(termination.map { "\($0)" } ?? "unknown")"])
                    break
                }
                if renewed {
                    log.info("\(configuration.role) renewed")
                    continue
                }
                log.error("\(configuration.role) ended", metadata: ["termination": "\(termination.map { "\($0)" } ?? "unknown")"])
            } catch {
                if stopping { break }
                log.error("\(configuration.role) failed to start", metadata: ["error": "\(error)"])
            }
            // Backoff grows while workers keep failing soon after starting.
            failuresInARow = ContinuousClock.now - started > configuration.backoffCap ? 1 : failuresInARow + 1
            recordRestart(id, logger: log)
            let delay = min(configuration.backoffCap, configuration.backoffBase * (1 << min(failuresInARow - 1, 20)))
            try? await Task.sleep(for: delay)
        }
        update(id) {
            $0.state = .stopped
            $0.pid = nil
        }
    }

    private func recordRestart(_ id: Int, logger: Logger) {
        let now = ContinuousClock.now
        let becameDegraded: Bool = shared.withLock { s in
            s.workers[id].restarts += 1
            s.workers[id].state = .restarting
            s.workers[id].pid = nil
            s.restartTimes.append(now)
            s.restartTimes.removeAll { now - $0 > configuration.intensityWindow }
            let degraded = s.restartTimes.count > configuration.intensityLimit
            defer { s.degraded = degraded }
            return degraded && !s.degraded
        }
        if becameDegraded {
            logger.critical("\(configuration.role) pool degraded: restart intensity exceeded", metadata: [
                "limit": "\(configuration.intensityLimit) restarts in \(configuration.intensityWindow)",
            ])
        }
    }

    final class RunningWorker: Sendable {
        let child: ChildProcess
        let transport: Transport<UInt16>
        let monitor: ViolationMonitor
        let output: Task<Void, Never>

        init(_ launched: RoleLauncher.Launched) {
            child = launched.child
            transport = launched.transport
            monitor = launched.monitor
            output = launched.output
        }

        /// Kills the worker (idempotent) and closes its transport.
        func stop() {
            try? child.signal(SIGKILL)
            transport.close()
        }
    }

    private func launch(_ id: Int, logger: Logger) async throws -> RunningWorker {
        update(id) { $0.state = .starting }
        let launched = try await RoleLauncher.start(
            executable: configuration.executable, role: configuration.role, policy: configuration.policy,
            mode: configuration.mode, user: configuration.user, group: configuration.group,
            intent: configuration.intent, arguments: configuration.arguments, build: configuration.build
        ) { [weak self] event in
            var withWorker = logger
            withWorker[metadataKey: "pid"] = "\(event.pid)"
            event.log(to: withWorker)
            self?.update(id) { $0.violations += 1 }
        }
        update(id) {
            $0.pid = launched.child.pid
            $0.startedAt = .now
        }
        return RunningWorker(launched)
    }

    /// Heartbeats until the worker dies, misses a deadline (then it is killed), the pool
    /// stops, or it is due for renewal and has no client (then returns true).
    private func supervise(_ worker: RunningWorker, id: Int, logger: Logger) async -> Bool {
        let control: Circuit<UInt16>
        do { control = try worker.transport.reserved(RoleLink.control) } catch { return false }
        var sequence: UInt64 = 0
        while !stopping && !Task.isCancelled {
            if shared.withLock({ $0.renewing.contains(id) && $0.workers[id].connections == 0 }) { return true }
            sequence += 1
            let ping = withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
            let sent = ContinuousClock.now
            let answered: Bool = await withTaskGroup(of: Bool.self) { group in
                group.addTask {
                    guard (try? await control.send(ping)) != nil else { return false }
                    while let reply = try? await control.receive() {
                        if reply.payload == ping { return true }
                    }
                    return false
                }
                group.addTask {
                    try? await Task.sleep(for: self.configuration.heartbeatDeadline)
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            guard answered else {
                if stopping || Task.isCancelled { return false }
                if worker.transport.failure == nil {
                    logger.error("\(configuration.role) missed its heartbeat deadline; killing it",
                                 metadata: ["deadline": "\(configuration.heartbeatDeadline)"])
                }
                return false
            }
            let roundTrip = ContinuousClock.now - sent
            update(id) { $0.lastHeartbeat = roundTrip }
            try? await Task.sleep(for: configuration.heartbeatInterval)
        }
        return false
    }
}
