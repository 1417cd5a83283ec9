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
///
/// With `Isolation.perClient` the slots hold spares: `dispatch` takes a running spare out of
/// its slot for one client (the slot starts the next spare at once, which is no restart), and
/// the instance serves that client alone until it leaves, when its transport is closed and it
/// exits. Heartbeats, restart intensity and `ctl workers` cover it as any instance.
public final class RolePool: Sendable {
    public struct Configuration: Sendable {
        /// What every instance is started with; its type says which role the pool runs.
        public var settings: any RoleSettings
        public var count: Int
        public var executable: String
        public var policy: String
        /// The file each instance reads at start, where the role declares one.
        public var sharedFile: FileDescriptor?
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
        public var isolation = Isolation.pool
        /// Per client: how long a client waits for a spare when every spare is taken.
        public var spareWait: Duration = .seconds(10)

        public var declaration: RoleDeclaration { type(of: settings).declaration }
        public var role: Role { declaration.role }

        public init(settings: any RoleSettings, count: Int, executable: String, policy: String) {
            self.settings = settings
            self.count = count
            self.executable = executable
            self.policy = policy
        }
    }

    public enum Admission: Sendable { case whenReady, onceLinked }

    /// Whether an instance serves many clients (`count` of them, shared) or one client for
    /// its whole life (`count` spares kept ready).
    public enum Isolation: String, Sendable, CaseIterable { case pool, perClient = "client" }

    public enum State: String, Sendable {
        case starting, running, restarting, stopped
    }

    /// What `cloister ctl` shows for one slot, or for an instance serving its one client.
    public struct SlotStatus: Sendable {
        /// The instance's id (the slot's number in a pool; a serial number per client).
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
        /// Per client: the address of the client the instance serves; nil for a spare.
        public var client: String?
    }

    /// One running process of the role, started in slot `slot`.
    public final class Instance: Sendable, CustomStringConvertible {
        public let slot: Int
        /// What links and logs name it by: the slot in a pool, unique per client.
        public let id: Int
        public let transport: RoleTransport
        public var pid: pid_t { child.pid }
        let child: ChildProcess
        let monitor: ViolationMonitor
        let output: Task<Void, Never>
        let failure = Mutex<String?>(nil)
        /// Why it left its slot: it ended, or (per client) it was given its client.
        let leftSlot = LeftSlot()

        init(slot: Int, id: Int, _ launched: RoleLauncher.Launched) {
            self.slot = slot
            self.id = id
            child = launched.child
            transport = launched.transport
            monitor = launched.monitor
            output = launched.output
        }

        public var description: String { "id \(id) slot \(slot) pid \(pid)" }

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
        /// Per client: instances out of their slots, each with its one client, by id.
        var serving: [Int: (instance: Instance, status: SlotStatus, supervision: Task<Void, Never>?)] = [:]
        var nextID = 0
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

    /// Every slot, then (per client) every instance serving its client.
    public var slots: [SlotStatus] {
        shared.withLock { s in s.slots + s.serving.values.map(\.status).sorted { $0.id < $1.id } }
    }
    public var isDegraded: Bool { shared.withLock { $0.degraded } }

    /// In learn mode: every monitor of every instance that ran, for the syscalls they saw.
    public var monitors: [ViolationMonitor] { shared.withLock { $0.monitors } }

    public var openConnections: Int {
        shared.withLock { s in s.slots.reduce(0) { $0 + $1.connections } + s.serving.values.reduce(0) { $0 + $1.status.connections } }
    }

    /// Admits a started instance: from now on it gets clients and counts as running.
    public func linked(_ instance: Instance) {
        let admitted = shared.withLock { s in
            guard s.running[instance.slot] === instance, s.slots[instance.slot].state == .starting else { return false }
            s.slots[instance.slot].state = .running
            return true
        }
        guard admitted else { return }
        var log = logger
        log[metadataKey: "\(configuration.role)"] = "\(instance.id)"
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
    public func dispatch(_ client: FileDescriptor, peer: String = "", tls: Bool = false) async throws {
        defer { try? client.close() }
        let message: SupervisorToWorker = tls ? .tlsClient : .client
        if configuration.isolation == .perClient { return try await dispatchToOwnInstance(client, peer: peer, message: message) }
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
                try await circuit.send(message, descriptors: [client], end: true)
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

    /// Per client: takes a running spare out of its slot for this client alone (the slot
    /// starts the next spare), waiting up to `spareWait` when none is free. An instance that
    /// fails the hand-over is closed, and the next spare tried.
    private func dispatchToOwnInstance(_ client: FileDescriptor, peer: String, message: SupervisorToWorker) async throws {
        let deadline = ContinuousClock.now + configuration.spareWait
        var lastError: Error = DispatchError.noInstanceRunning
        while true {
            let chosen: Instance? = shared.withLock { s in
                let spares = s.running.values.filter { s.slots[$0.slot].state == .running && $0.transport.failure == nil }
                guard let spare = spares.min(by: { $0.id < $1.id }) else { return nil }
                s.running[spare.slot] = nil
                var status = s.slots[spare.slot]
                status.connections = 1
                status.client = peer.isEmpty ? "unknown" : peer
                s.serving[spare.id] = (spare, status, nil)
                s.slots[spare.slot] = SlotStatus(id: s.slots[spare.slot].id, pid: nil, state: .starting,
                                                 restarts: s.slots[spare.slot].restarts, startedAt: nil, lastHeartbeat: nil, violations: 0)
                return spare
            }
            guard let instance = chosen else {
                guard ContinuousClock.now < deadline else { throw lastError }
                await waitForSpare(until: deadline)
                continue
            }
            // Its slot moves on to the next spare; the supervision goes on with the instance.
            guard instance.leftSlot.mark(.givenItsClient) else {
                // It ended meanwhile, and its slot cleans up after it.
                shared.withLock { _ = $0.serving.removeValue(forKey: instance.id) }
                continue
            }
            do {
                let circuit = try instance.transport.open()
                try await circuit.send(message, descriptors: [client], end: true)
                // The instance ends the conversation once its client has gone: then it exits.
                circuit.whenPeerEnds { self.clientLeft(instance) }
                return
            } catch {
                lastError = error
                clientLeft(instance)
            }
        }
    }

    /// Until a spare may have been admitted (or `deadline`): every 5 ms while every spare is
    /// taken, which happens only in a burst of connections larger than the spares.
    private func waitForSpare(until deadline: ContinuousClock.Instant) async {
        await Wait.sleep(for: min(.milliseconds(5), max(.zero, deadline - .now)))
    }

    /// Per client: the client has gone (or was never handed over), so the instance is done:
    /// closing its transport ends it, and its supervision reaps it.
    private func clientLeft(_ instance: Instance) {
        shared.withLock { s in s.serving[instance.id]?.status.connections = 0 }
        instance.transport.close()
    }

    public func start() {
        let tasks = (0..<configuration.count).map { slot in Task { await self.keepRunning(slot) } }
        shared.withLock { $0.tasks = tasks }
    }

    /// Stops every instance and waits until all are reaped; `events` then finishes.
    public func shutdown() async {
        let (tasks, serving) = shared.withLock { s in
            s.stopping = true
            return (s.tasks, s.serving.values.map { ($0.instance, $0.supervision) })
        }
        for task in tasks { task.cancel() }
        for (instance, supervision) in serving {
            instance.stop()
            supervision?.cancel()
        }
        for task in tasks { await task.value }
        // An instance given its client after the list above was taken is in `serving` too.
        while let supervision = shared.withLock({ s in s.serving.values.compactMap(\.supervision).first }) {
            await supervision.value
        }
        publish.finish()
    }

    private var stopping: Bool { shared.withLock { $0.stopping } }

    private func update(_ slot: Int, _ change: (inout SlotStatus) -> Void) {
        shared.withLock { change(&$0.slots[slot]) }
    }

    /// The instance's status, in its slot or (per client) among those serving.
    private func update(_ instance: Instance, _ change: (inout SlotStatus) -> Void) {
        shared.withLock { s in
            if s.serving[instance.id] != nil {
                change(&s.serving[instance.id]!.status)
            } else if s.running[instance.slot] === instance || s.slots[instance.slot].id == instance.id {
                change(&s.slots[instance.slot])
            }
        }
    }

    /// One slot: launch, supervise, reap, back off, again, until shutdown. Per client, an
    /// instance given its client leaves the slot, which launches the next at once.
    private func keepRunning(_ slot: Int) async {
        let role = configuration.role
        var failuresInARow = 0
        while !stopping {
            var log = logger
            let started = ContinuousClock.now
            do {
                let instance = try await launch(slot, logger: log)
                log[metadataKey: "\(role)"] = "\(instance.id)"
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
                let supervision = Task { [log] in
                    let renewed = await self.supervise(instance, logger: log)
                    if !instance.leftSlot.mark(.ended(renewed: renewed)) {
                        await self.retire(instance, logger: log)
                    }
                }
                let why = await instance.leftSlot.reason()
                guard case .ended(let renewed) = why else {
                    // Given its client: its supervision goes on, the slot starts the next spare.
                    shared.withLock { $0.serving[instance.id]?.supervision = supervision }
                    if stopping { supervision.cancel() }
                    failuresInARow = 0
                    continue
                }
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

    /// Per client: an instance whose supervision ended after it was given its client. It
    /// exits once its transport is closed (given a moment, then killed), and is reaped. Any
    /// other end (killed, crashed, hung) counts as a restart for the intensity limit.
    private func retire(_ instance: Instance, logger: Logger) async {
        let clientGone = shared.withLock { $0.serving[instance.id]?.status.connections == 0 }
        instance.transport.close()
        publish.yield(.ended(instance))
        // A child's end is reported once.
        let reaped = Task { await Reaper.shared.termination(of: instance.child) }
        let exited = await withTaskGroup(of: Bool.self) { group in
            group.addTask { _ = await reaped.value; return true }
            group.addTask { await Wait.sleep(for: .seconds(2)); return false }
            let first = await group.next() ?? false
            if !first { try? instance.child.signal(SIGKILL) }
            group.cancelAll()
            return first
        }
        let termination = await reaped.value
        instance.monitor.waitUntilDone()
        await instance.output.value
        shared.withLock { _ = $0.serving.removeValue(forKey: instance.id) }
        let how = termination.map { "\($0)" } ?? "unknown"
        // Exited by itself, once its transport was closed after its client left: done.
        if clientGone && exited && termination == .exited(0) {
            logger.debug("\(configuration.role) retired with its client", metadata: ["termination": "\(how)"])
        } else if !stopping {
            logger.error("\(configuration.role) ended while serving its client", metadata: ["termination": "\(how)"])
            countRestart(logger: logger)
        }
    }

    private func recordRestart(_ slot: Int, logger: Logger) {
        shared.withLock { s in
            s.slots[slot].restarts += 1
            s.slots[slot].state = .restarting
            s.slots[slot].pid = nil
        }
        countRestart(logger: logger)
    }

    private func countRestart(logger: Logger) {
        let now = ContinuousClock.now
        let becameDegraded: Bool = shared.withLock { s in
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
        let id = shared.withLock { s -> Int in
            let id = configuration.isolation == .pool ? slot : s.nextID
            s.nextID += 1
            s.slots[slot].id = id
            s.slots[slot].state = .starting
            s.slots[slot].client = nil
            return id
        }
        var log = logger
        log[metadataKey: "\(configuration.role)"] = "\(id)"
        let withID = log
        let launched = try await RoleLauncher.start(
            executable: configuration.executable, settings: configuration.settings, policy: configuration.policy,
            mode: configuration.mode, user: configuration.user, group: configuration.group,
            sharedFile: configuration.sharedFile, build: configuration.build
        ) { [weak self] event in
            var withPid = withID
            withPid[metadataKey: "pid"] = "\(event.pid)"
            event.log(to: withPid)
            self?.shared.withLock { s in
                if s.serving[id] != nil { s.serving[id]!.status.violations += 1 } else if s.slots[slot].id == id { s.slots[slot].violations += 1 }
            }
        }
        update(slot) {
            $0.pid = launched.child.pid
            $0.startedAt = .now
            $0.counters = []
        }
        return Instance(slot: slot, id: id, launched)
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
            update(instance) {
                $0.lastHeartbeat = roundTrip
                $0.counters = counters
            }
            await Wait.sleep(for: configuration.heartbeatInterval)
        }
        return false
    }
}

/// Why an instance left its slot, said once: the first of its end and (per client) its
/// client's arrival wins, and the other learns it lost.
final class LeftSlot: Sendable {
    enum Reason: Sendable {
        case ended(renewed: Bool)
        case givenItsClient
    }

    private let state = Mutex<(reason: Reason?, waiter: CheckedContinuation<Reason, Never>?)>((nil, nil))

    /// False if a reason was given before.
    @discardableResult
    func mark(_ reason: Reason) -> Bool {
        let (first, waiter) = state.withLock { s -> (Bool, CheckedContinuation<Reason, Never>?) in
            guard s.reason == nil else { return (false, nil) }
            s.reason = reason
            defer { s.waiter = nil }
            return (true, s.waiter)
        }
        waiter?.resume(returning: reason)
        return first
    }

    func reason() async -> Reason {
        await withCheckedContinuation { continuation in
            let known = state.withLock { s -> Reason? in
                if let reason = s.reason { return reason }
                s.waiter = continuation
                return nil
            }
            if let known { continuation.resume(returning: known) }
        }
    }
}
