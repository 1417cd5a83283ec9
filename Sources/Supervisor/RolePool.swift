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

/// Runs a fixed number of instances of one sandboxed role (the workers, or the vault as a
/// pool of one) and keeps them running.
///
/// Each instance is this binary re-executed in the role (see `RoleLauncher`). It runs in
/// report mode, so every violation reaches this process, which logs it and kills the
/// instance. Health travels on the transport's reserved control circuit: a heartbeat every
/// `heartbeatInterval`, answered within `heartbeatDeadline` or the instance counts as hung
/// and is killed. An instance that dies or hangs is reaped and replaced after an exponential
/// backoff; more than `intensityLimit` restarts within `intensityWindow` marks the pool
/// degraded (logged loudly), and replacing goes on.
///
/// The pool knows nothing of other pools: it publishes what happens to its instances on
/// `events`, and whoever links instances to other roles (`LinkBroker`) consumes them and
/// admits each instance (`linked(_:)`) once it may serve.
public final class RolePool: Sendable {
    public struct Configuration: Sendable {
        public var role: Role
        public var count: Int
        public var executable: String
        public var policy: String
        /// The role's own options.
        public var arguments: [String] = []
        /// A file each instance reads at start.
        public var sharedFile: RoleLauncher.SharedFile?
        public var mode: EnforcementMode = .report
        public var user = "nobody"
        public var group = "nogroup"
        /// Whether an instance serves as soon as it is ready, or only once `linked(_:)`
        /// says its links to other roles are in place.
        public var admission = Admission.whenReady
        /// The instances' build (the same binary: this process's build).
        public var build = BuildID.current
        public var heartbeatInterval: Duration = .milliseconds(500)
        public var heartbeatDeadline: Duration = .seconds(2)
        public var backoffBase: Duration = .milliseconds(50)
        public var backoffCap: Duration = .seconds(10)
        public var intensityLimit = 5
        public var intensityWindow: Duration = .seconds(30)

        public init(role: Role, count: Int, executable: String, policy: String) {
            self.role = role
            self.count = count
            self.executable = executable
            self.policy = policy
        }
    }

    public enum Admission: Sendable { case whenReady, onceLinked }

    public enum State: String, Sendable {
        case starting, running, restarting, stopped
    }

    /// What `cloister ctl` shows for one slot.
    public struct SlotStatus: Sendable {
        public var id: Int
        public var pid: pid_t?
        public var state: State
        public var restarts: Int
        public var startedAt: ContinuousClock.Instant?
        public var lastHeartbeat: Duration?
        public var violations: Int
        /// The instance's counters from its last heartbeat reply (a worker's: `WorkerCounter`).
        public var counters: [UInt64] = []
        /// Clients handed to this slot's instance that it has not reported gone yet.
        public var connections = 0
    }

    /// One running process of the role, in slot `slot`.
    public final class Instance: Sendable, CustomStringConvertible {
        public let slot: Int
        public let transport: RoleTransport
        public var pid: pid_t { child.pid }
        let child: ChildProcess
        let monitor: ViolationMonitor
        let output: Task<Void, Never>
        let failure = Mutex<String?>(nil)

        init(slot: Int, _ launched: RoleLauncher.Launched) {
            self.slot = slot
            child = launched.child
            transport = launched.transport
            monitor = launched.monitor
            output = launched.output
        }

        public var description: String { "slot \(slot) pid \(pid)" }

        /// Kills the process (idempotent) and closes its transport.
        func stop() {
            try? child.signal(SIGKILL)
            transport.close()
        }
    }

    public enum Event: Sendable {
        /// Ready and watched; serving once admitted.
        case started(Instance)
        /// Admitted: gets clients and counts as running.
        case linked(Instance)
        /// Gone (died, hung, failed, renewed or stopped); the slot will be refilled unless the
        /// pool is stopping.
        case ended(Instance)
        /// Restart intensity exceeded.
        case degraded
    }

    public enum DispatchError: Error, CustomStringConvertible {
        case noInstanceRunning
        public var description: String { "no worker is running" }
    }

    private struct Shared {
        var slots: [SlotStatus]
        var restartTimes: [ContinuousClock.Instant] = []
        var degraded = false
        var stopping = false
        var tasks: [Task<Void, Never>] = []
        var running: [Int: Instance] = [:]
        var monitors: [ViolationMonitor] = []
        /// Slots to replace as soon as they have no client (see `renew`).
        var renewing: Set<Int> = []
    }

    public let configuration: Configuration
    /// What happens to the instances, in order. One consumer.
    public let events: AsyncStream<Event>
    private let publish: AsyncStream<Event>.Continuation
    private let logger: Logger
    private let shared: Mutex<Shared>

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        (events, publish) = AsyncStream.makeStream(of: Event.self)
        shared = Mutex(Shared(slots: (0..<configuration.count).map {
            SlotStatus(id: $0, pid: nil, state: .starting, restarts: 0, startedAt: nil, lastHeartbeat: nil, violations: 0)
        }))
    }

    public var slots: [SlotStatus] { shared.withLock { $0.slots } }
    public var isDegraded: Bool { shared.withLock { $0.degraded } }

    /// In learn mode: every monitor of every instance that ran, for the syscalls they saw.
    public var monitors: [ViolationMonitor] { shared.withLock { $0.monitors } }

    public var openConnections: Int { shared.withLock { $0.slots.reduce(0) { $0 + $1.connections } } }

    /// Admits a started instance: from now on it gets clients and counts as running.
    public func linked(_ instance: Instance) {
        let admitted = shared.withLock { s in
            guard s.running[instance.slot] === instance, s.slots[instance.slot].state == .starting else { return false }
            s.slots[instance.slot].state = .running
            return true
        }
        guard admitted else { return }
        var log = logger
        log[metadataKey: "\(configuration.role)"] = "\(instance.slot)"
        log[metadataKey: "pid"] = "\(instance.pid)"
        log.info("\(configuration.role) running")
        publish.yield(.linked(instance))
    }

    /// The instance could not be linked: it is killed and replaced like one that failed to start.
    public func fail(_ instance: Instance, reason: String) {
        instance.failure.withLock { $0 = $0 ?? reason }
        instance.stop()
    }

    /// Replaces every running instance, each as soon as it has no client: it gets no new
    /// clients meanwhile, and its replacement starts from the executable and profile as they
    /// are now. Planned replacements are not restarts: no backoff, no count.
    public func renew() {
        shared.withLock { s in s.renewing.formUnion(s.running.keys) }
    }

    /// Hands a client socket to the running instance with the fewest open connections and
    /// closes this process's copy, whatever happens. An instance whose transport has failed
    /// (it died and is not reaped yet) is passed over, and one that fails the hand-over is
    /// replaced by the next. The instance ends the conversation when the client has gone;
    /// until then the client counts against it.
    public func dispatch(_ client: FileDescriptor) async throws {
        defer { try? client.close() }
        var tried: Set<ObjectIdentifier> = []
        var lastError: Error = DispatchError.noInstanceRunning
        while true {
            let chosen: Instance? = shared.withLock { s in
                let running = s.running.values.filter {
                    s.slots[$0.slot].state == .running && $0.transport.failure == nil && !tried.contains(ObjectIdentifier($0))
                }
                // Instances being renewed take clients only when nothing else runs.
                let fresh = running.filter { !s.renewing.contains($0.slot) }
                let candidates = fresh.isEmpty ? running : fresh
                guard let best = candidates.min(by: { s.slots[$0.slot].connections < s.slots[$1.slot].connections }) else { return nil }
                s.slots[best.slot].connections += 1
                return best
            }
            guard let instance = chosen else { throw lastError }
            tried.insert(ObjectIdentifier(instance))
            let circuit: RoleCircuit
            do {
                circuit = try instance.transport.open()
                try await circuit.send(SupervisorToWorker.client, descriptors: [client], end: true)
            } catch {
                release(instance)
                lastError = error
                continue
            }
            // The worker ends the conversation once the client has gone (or the worker has).
            circuit.whenPeerEnds { self.release(instance) }
            return
        }
    }

    private func release(_ instance: Instance) {
        shared.withLock { s in
            // A replaced instance's clients were counted against it, not its successor.
            if s.running[instance.slot] === instance { s.slots[instance.slot].connections -= 1 }
        }
    }

    public func start() {
        let tasks = (0..<configuration.count).map { slot in Task { await self.keepRunning(slot) } }
        shared.withLock { $0.tasks = tasks }
    }

    /// Stops every instance and waits until all are reaped; `events` then finishes.
    public func shutdown() async {
        let tasks: [Task<Void, Never>] = shared.withLock { s in
            s.stopping = true
            return s.tasks
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        publish.finish()
    }

    private var stopping: Bool { shared.withLock { $0.stopping } }

    private func update(_ slot: Int, _ change: (inout SlotStatus) -> Void) {
        shared.withLock { change(&$0.slots[slot]) }
    }

    /// One slot: launch, supervise, reap, back off, again, until shutdown.
    private func keepRunning(_ slot: Int) async {
        let role = configuration.role
        var failuresInARow = 0
        while !stopping {
            var log = logger
            log[metadataKey: "\(role)"] = "\(slot)"
            let started = ContinuousClock.now
            do {
                let instance = try await launch(slot, logger: log)
                log[metadataKey: "pid"] = "\(instance.pid)"
                shared.withLock {
                    $0.running[slot] = instance
                    $0.renewing.remove(slot)
                    $0.slots[slot].connections = 0
                    // Kept only for learn mode, where they hold what the role used.
                    if configuration.mode == .learn { $0.monitors.append(instance.monitor) }
                }
                publish.yield(.started(instance))
                if configuration.admission == .whenReady { linked(instance) }
                let renewed = await supervise(instance, logger: log)
                _ = shared.withLock { $0.running.removeValue(forKey: slot) }
                instance.stop()
                publish.yield(.ended(instance))
                let termination = await Reaper.shared.termination(of: instance.child)
                instance.monitor.waitUntilDone()
                // Its output pipe is closed too before the slot moves on (or shutdown returns).
                await instance.output.value
                let how = termination.map { "\($0)" } ?? "unknown"
                if stopping {
                    log.info("\(role) stopped", metadata: ["termination": "\(how)"])
                    break
                }
                if renewed {
                    log.info("\(role) renewed")
                    continue
                }
                if let failure = instance.failure.withLock({ $0 }) {
                    log.error("\(role) failed to start", metadata: ["error": "\(failure)", "termination": "\(how)"])
                } else {
                    log.error("\(role) ended", metadata: ["termination": "\(how)"])
                }
            } catch {
                if stopping { break }
                log.error("\(role) failed to start", metadata: ["error": "\(error)"])
            }
            // Backoff grows while instances keep failing soon after starting.
            failuresInARow = ContinuousClock.now - started > configuration.backoffCap ? 1 : failuresInARow + 1
            recordRestart(slot, logger: log)
            let delay = min(configuration.backoffCap, configuration.backoffBase * (1 << min(failuresInARow - 1, 20)))
            await Wait.sleep(for: delay)
        }
        update(slot) {
            $0.state = .stopped
            $0.pid = nil
        }
    }

    private func recordRestart(_ slot: Int, logger: Logger) {
        let now = ContinuousClock.now
        let becameDegraded: Bool = shared.withLock { s in
            s.slots[slot].restarts += 1
            s.slots[slot].state = .restarting
            s.slots[slot].pid = nil
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
            publish.yield(.degraded)
        }
    }

    private func launch(_ slot: Int, logger: Logger) async throws -> Instance {
        update(slot) { $0.state = .starting }
        let launched = try await RoleLauncher.start(
            executable: configuration.executable, role: configuration.role, policy: configuration.policy,
            mode: configuration.mode, user: configuration.user, group: configuration.group,
            arguments: configuration.arguments, sharedFile: configuration.sharedFile, build: configuration.build
        ) { [weak self] event in
            var withPid = logger
            withPid[metadataKey: "pid"] = "\(event.pid)"
            event.log(to: withPid)
            self?.update(slot) { $0.violations += 1 }
        }
        update(slot) {
            $0.pid = launched.child.pid
            $0.startedAt = .now
            $0.counters = []
        }
        return Instance(slot: slot, launched)
    }

    /// Heartbeats until the instance dies, misses a deadline (then it is killed), fails to be
    /// linked, the pool stops, or it is due for renewal and has no client (then returns true).
    private func supervise(_ instance: Instance, logger: Logger) async -> Bool {
        let slot = instance.slot
        let control: RoleCircuit
        do { control = try instance.transport.reserved(Link.control) } catch { return false }
        var sequence: UInt64 = 0
        while !stopping && !Task.isCancelled {
            if shared.withLock({ $0.renewing.contains(slot) && $0.slots[slot].connections == 0 }) { return true }
            sequence += 1
            let sent = ContinuousClock.now
            let answered: [UInt64]? = await withTaskGroup(of: [UInt64]?.self) { group in
                group.addTask { [sequence] in await ControlCircuit.heartbeat(control, sequence: sequence) }
                group.addTask {
                    await Wait.sleep(for: self.configuration.heartbeatDeadline)
                    return nil
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first
            }
            guard let counters = answered else {
                if stopping || Task.isCancelled { return false }
                if instance.transport.failure == nil {
                    logger.error("\(configuration.role) missed its heartbeat deadline; killing it",
                                 metadata: ["deadline": "\(configuration.heartbeatDeadline)"])
                }
                return false
            }
            let roundTrip = ContinuousClock.now - sent
            update(slot) {
                $0.lastHeartbeat = roundTrip
                $0.counters = counters
            }
            await Wait.sleep(for: configuration.heartbeatInterval)
        }
        return false
    }
}
