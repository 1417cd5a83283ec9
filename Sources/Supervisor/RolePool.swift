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
        /// Workers forked from a template instead of spawned (per client).
        public var templates: WorkerTemplates?
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

        /// Where violations, restarts and per-client sources are audited.
        public var audit: AuditTrail?

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
    public final class Instance: PoolMember, CustomStringConvertible {
        public let slot: Int
        /// What links and logs name it by: the slot in a pool, unique per client.
        public let id: Int
        public let transport: RoleTransport
        public var pid: pid_t { child.pid }
        let child: any RoleProcess
        let monitor: ViolationMonitor
        let output: Task<Void, Never>
        let failure = Mutex<String?>(nil)

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

    /// The decisions (`RolePoolState`) and what waits on them: each slot's keeper for its
    /// instance to leave, each connection waiting for a spare, every supervision.
    private struct Shared {
        var state: RolePoolState<Instance>
        var slotWaiters: [Int: CheckedContinuation<RolePoolState<Instance>.LeftReason, Never>] = [:]
        var spareWaiters: [Int: CheckedContinuation<Instance?, Never>] = [:]
        var supervisions: [Int: Task<Void, Never>] = [:]
        var tasks: [Task<Void, Never>] = []
        var monitors: [ViolationMonitor] = []
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
        let intensity = RestartIntensity(limit: configuration.intensityLimit, window: configuration.intensityWindow)
        shared = Mutex(Shared(state: RolePoolState(count: configuration.count, isolation: configuration.isolation, intensity: intensity)))
    }

    /// Every slot, then (per client) every instance serving its client.
    public var slots: [SlotStatus] { shared.withLock { $0.state.statuses } }
    public var isDegraded: Bool { shared.withLock { $0.state.intensity.degraded } }

    /// In learn mode: every monitor of every instance that ran, for the syscalls they saw.
    public var monitors: [ViolationMonitor] { shared.withLock { $0.monitors } }

    public var openConnections: Int { shared.withLock { $0.state.openConnections } }

    private var stopping: Bool { shared.withLock { $0.state.stopping } }

    /// Admits a started instance: from now on it gets clients and counts as running. Per
    /// client, a connection waiting for a spare gets it at once.
    public func linked(_ instance: Instance) {
        let (admission, waiter, slotWaiter) = shared.withLock { s -> (RolePoolState<Instance>.Admission, CheckedContinuation<Instance?, Never>?,
                                                                      CheckedContinuation<RolePoolState<Instance>.LeftReason, Never>?) in
            let admission = s.state.admit(instance)
            guard case .handedOver(let ticket) = admission else { return (admission, nil, nil) }
            return (admission, s.spareWaiters.removeValue(forKey: ticket), takeLeft(&s, instance.slot))
        }
        guard admission != .stale else { return }
        var log = logger
        log[metadataKey: "\(configuration.role)"] = "\(instance.id)"
        log[metadataKey: "pid"] = "\(instance.pid)"
        log.info("\(configuration.role) running")
        publish.yield(.linked(instance))
        slotWaiter?.resume(returning: .givenItsClient)
        waiter?.resume(returning: instance)
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
        shared.withLock { $0.state.renewAll() }
    }

    /// What the worker says of a client it was handed, for admission (`Admission`).
    public struct ClientEvents: Sendable {
        /// The vault accepted the client's credential.
        public var authenticated: @Sendable () -> Void
        /// The worker is done with the client (it has gone, or the worker has).
        public var ended: @Sendable () -> Void

        public init(authenticated: @escaping @Sendable () -> Void = {}, ended: @escaping @Sendable () -> Void = {}) {
            (self.authenticated, self.ended) = (authenticated, ended)
        }
    }

    /// Hands a client socket to an instance and closes this process's copy, whatever
    /// happens: in a pool, the admitted instance with the fewest open connections; per
    /// client, a spare of its own (waiting up to `spareWait` for one to be admitted). An
    /// instance whose transport has failed (it died and is not reaped yet) is passed over,
    /// and one that fails the hand-over is replaced by the next. The instance ends the
    /// conversation when the client has gone; until then the client counts against it.
    /// Returns, per client, what ends the client's connection by ending its worker (the
    /// supervisor's own hold on a client that must not stay); nil in a pool.
    @discardableResult
    public func dispatch(_ client: FileDescriptor, peer: String = "", tls: Bool = false, newSessions: Bool = true,
                         trustedProxy: Bool = false, events: ClientEvents = ClientEvents()) async throws -> (@Sendable () -> Void)? {
        defer { try? client.close() }
        let message = SupervisorToWorker.client(tls: tls, newSessions: newSessions, trustedProxy: trustedProxy)
        if configuration.isolation == .perClient {
            let instance = try await dispatchToOwnInstance(client, peer: peer, message: message, events: events)
            return { instance.transport.close() }
        }
        var tried: Set<ObjectIdentifier> = []
        var lastError: Error = DispatchError.noInstanceRunning
        while true {
            let chosen = shared.withLock { s in
                RolePoolState.Shared.choose(&s.state, tried: tried) { $0.transport.failure == nil }
            }
            guard let instance = chosen else { throw lastError }
            tried.insert(ObjectIdentifier(instance))
            do {
                let circuit = try instance.transport.open()
                try await circuit.send(message, descriptors: [client], end: true)
                // The worker ends the conversation once the client has gone (or the worker has).
                watch(circuit, events) { self.shared.withLock { RolePoolState.Shared.release(&$0.state, instance) } }
                return nil
            } catch {
                shared.withLock { RolePoolState.Shared.release(&$0.state, instance) }
                lastError = error
            }
        }
    }

    /// Per client: takes an admitted spare out of its slot for this client alone (the slot
    /// starts the next spare), or waits in line, up to `spareWait`, for the next one admitted.
    /// An instance that fails the hand-over is closed, and the next spare tried.
    private func dispatchToOwnInstance(_ client: FileDescriptor, peer: String, message: SupervisorToWorker,
                                       events: ClientEvents) async throws -> Instance {
        let deadline = ContinuousClock.now + configuration.spareWait
        var lastError: Error = DispatchError.noInstanceRunning
        while ContinuousClock.now < deadline {
            guard let instance = await spare(for: peer, until: deadline) else { break }
            do {
                let circuit = try instance.transport.open()
                try await circuit.send(message, descriptors: [client], end: true)
                // The instance ends the conversation once its client has gone: then it exits.
                configuration.audit?.clientHanded(worker: instance.id, source: peer)
                watch(circuit, events) { self.clientLeft(instance) }
                return instance
            } catch {
                lastError = error
                clientLeft(instance)
            }
        }
        throw lastError
    }

    /// An admitted spare, now this client's; nil once `deadline` passes (or the pool stops).
    /// Nothing polls: a connection that finds no spare is resumed by the admission of the
    /// next (`linked`) or by its deadline.
    private func spare(for peer: String, until deadline: ContinuousClock.Instant) async -> Instance? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Instance?, Never>) in
            var taken: Instance?
            let (outcome, slotWaiter) = shared.withLock { s in
                let outcome = RolePoolState.Spares.take(&s.state, peer: peer, usable: { $0.transport.failure == nil }, taken: &taken)
                switch outcome {
                case .spare: return (outcome, takeLeft(&s, taken!.slot))
                case .wait(let ticket):
                    s.spareWaiters[ticket] = continuation
                    return (outcome, nil)
                case .stopping: return (outcome, nil)
                }
            }
            switch outcome {
            case .spare:
                slotWaiter?.resume(returning: .givenItsClient)
                continuation.resume(returning: taken)
            case .stopping:
                continuation.resume(returning: nil)
            case .wait(let ticket):
                Task {
                    await Wait.sleep(for: max(.zero, deadline - .now))
                    let expired = self.shared.withLock { s in
                        RolePoolState.Spares.giveUp(&s.state, ticket: ticket) ? s.spareWaiters.removeValue(forKey: ticket) : nil
                    }
                    expired?.resume(returning: nil)
                }
            }
        }
    }

    /// Reads what the worker says of its client until it ends the conversation (a message it
    /// cannot decode ends the watch as the end would), then runs `ended`.
    private func watch(_ circuit: RoleCircuit, _ events: ClientEvents, ended: @escaping @Sendable () -> Void) {
        Task {
            while let received = try? await circuit.receive(WorkerToSupervisor.self) {
                if received.message == .authenticated { events.authenticated() }
                if received.isEnd { break }
            }
            ended()
            events.ended()
        }
    }

    /// Per client: the client has gone (or was never handed over), so the instance is done:
    /// closing its transport ends it, and its supervision retires it.
    private func clientLeft(_ instance: Instance) {
        shared.withLock { RolePoolState.Spares.clientLeft(&$0.state, instance) }
        instance.transport.close()
    }

    /// The slot keeper's continuation, if the slot's instance has just left (its reason is
    /// then taken from the state; a keeper not yet waiting finds it there).
    private func takeLeft(_ s: inout Shared, _ slot: Int) -> CheckedContinuation<RolePoolState<Instance>.LeftReason, Never>? {
        guard let waiter = s.slotWaiters.removeValue(forKey: slot) else { return nil }
        _ = s.state.takeLeftReason(slot)
        return waiter
    }

    /// Until the slot's instance leaves it: its supervision ended, or (per client) its client came.
    private func leftSlot(_ slot: Int) async -> RolePoolState<Instance>.LeftReason {
        await withCheckedContinuation { continuation in
            let known = shared.withLock { s -> RolePoolState<Instance>.LeftReason? in
                if let reason = s.state.takeLeftReason(slot) { return reason }
                s.slotWaiters[slot] = continuation
                return nil
            }
            if let known { continuation.resume(returning: known) }
        }
    }

    public func start() {
        let tasks = (0..<configuration.count).map { slot in Task { await self.keepRunning(slot) } }
        shared.withLock { $0.tasks = tasks }
    }

    /// Stops every instance and waits until all are reaped; `events` then finishes.
    public func shutdown() async {
        let (tasks, instances, waiters) = shared.withLock { s in
            let tickets = s.state.stop()
            return (s.tasks, s.state.instances, tickets.compactMap { s.spareWaiters.removeValue(forKey: $0) })
        }
        for waiter in waiters { waiter.resume(returning: nil) }
        for task in tasks { task.cancel() }
        for instance in instances { instance.stop() }
        for task in tasks { await task.value }
        // Every supervision, those of instances serving their clients among them.
        while let supervision = shared.withLock({ $0.supervisions.popFirst()?.value }) {
            supervision.cancel()
            await supervision.value
        }
        publish.finish()
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
                // In the slot before its supervision starts, which may end at once; the task is
                // made under the lock, so that its end always finds itself to remove.
                let supervision = shared.withLock { s in
                    s.state.started(instance)
                    // Kept only for learn mode, where they hold what the role used.
                    if configuration.mode == .learn { s.monitors.append(instance.monitor) }
                    let task = Task { [log] in
                        let renewed = await self.supervise(instance, logger: log)
                        let (ending, waiter) = self.shared.withLock { s in
                            let ending = s.state.ended(instance, renewed: renewed)
                            return (ending, ending == .leftSlot ? self.takeLeft(&s, slot) : nil)
                        }
                        waiter?.resume(returning: .ended(renewed: renewed))
                        if ending == .wasServing { await self.retire(instance, logger: log) }
                        _ = self.shared.withLock { $0.supervisions.removeValue(forKey: instance.id) }
                    }
                    s.supervisions[instance.id] = task
                    return task
                }
                publish.yield(.started(instance))
                if configuration.admission == .whenReady { linked(instance) }
                guard case .ended(let renewed) = await leftSlot(slot) else {
                    // Given its client: its supervision goes on, the slot starts the next spare.
                    if stopping { supervision.cancel() }
                    failuresInARow = 0
                    continue
                }
                instance.stop()
                publish.yield(.ended(instance))
                let termination = await instance.child.termination()
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
                configuration.audit?.record(AuditRecord(.roleRestarted, [
                    ("role", "\(role)"), ("instance", "\(instance.id)"), ("pid", "\(instance.pid)"), ("termination", how),
                ]), vouchedBy: "supervisor")
            } catch {
                if stopping { break }
                log.error("\(role) failed to start", metadata: ["error": "\(error)"])
            }
            // Backoff grows while instances keep failing soon after starting.
            failuresInARow = ContinuousClock.now - started > configuration.backoffCap ? 1 : failuresInARow + 1
            let degraded = shared.withLock { $0.state.restarting(slot, at: .now) }
            if degraded { reportDegraded(log) }
            let delay = min(configuration.backoffCap, configuration.backoffBase * (1 << min(failuresInARow - 1, 20)))
            await Wait.sleep(for: delay)
        }
        shared.withLock { $0.state.stopped(slot) }
    }

    /// Per client: an instance whose supervision ended after it was given its client. It
    /// exits once its transport is closed (given a moment, then killed), and is reaped. Any
    /// other end (killed, crashed, hung) counts as a restart for the intensity limit.
    private func retire(_ instance: Instance, logger: Logger) async {
        let clientGone = shared.withLock { $0.state.hasNoClient(instance) }
        instance.transport.close()
        publish.yield(.ended(instance))
        // A child's end is reported once.
        let reaped = Task { await instance.child.termination() }
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
        shared.withLock { $0.state.retired(instance) }
        let how = termination.map { "\($0)" } ?? "unknown"
        // Exited by itself, once its transport was closed after its client left: done.
        if clientGone && exited && termination == .exited(0) {
            logger.debug("\(configuration.role) retired with its client", metadata: ["termination": "\(how)"])
        } else if !stopping {
            logger.error("\(configuration.role) ended while serving its client", metadata: ["termination": "\(how)"])
            configuration.audit?.record(AuditRecord(.roleRestarted, [
                ("role", "\(configuration.role)"), ("instance", "\(instance.id)"), ("pid", "\(instance.pid)"), ("termination", how),
            ]), vouchedBy: "supervisor")
            if shared.withLock({ $0.state.endedWhileServing(at: .now) }) { reportDegraded(logger) }
        }
    }

    private func reportDegraded(_ logger: Logger) {
        logger.critical("\(configuration.role) pool degraded: restart intensity exceeded", metadata: [
            "limit": "\(configuration.intensityLimit) restarts in \(configuration.intensityWindow)",
        ])
        publish.yield(.degraded)
    }

    private func launch(_ slot: Int, logger: Logger) async throws -> Instance {
        let id = shared.withLock { $0.state.launching(slot) }
        var log = logger
        log[metadataKey: "\(configuration.role)"] = "\(id)"
        let withID = log
        let launched = try await RoleLauncher.start(
            executable: configuration.executable, settings: configuration.settings, policy: configuration.policy,
            mode: configuration.mode, user: configuration.user, group: configuration.group,
            sharedFile: configuration.sharedFile, build: configuration.build, template: try await configuration.templates?.template()
        ) { [weak self] event in
            var withPid = withID
            withPid[metadataKey: "pid"] = "\(event.pid)"
            event.log(to: withPid)
            self?.shared.withLock { $0.state.violation(slot: slot, id: id) }
            self?.configuration.audit?.record(AuditRecord(.violation, [
                ("role", event.role), ("pid", "\(event.pid)"), ("tid", "\(event.tid)"), ("syscall", event.syscall),
                ("outcome", event.outcome), ("instance", "\(id)"),
            ]), vouchedBy: "supervisor")
        }
        shared.withLock { $0.state.spawned(slot, pid: launched.child.pid, at: .now) }
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
            if shared.withLock({ $0.state.slots[slot].instance === instance && $0.state.mayRenew(slot) }) { return true }
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
            shared.withLock {
                $0.state.update(instance) {
                    $0.lastHeartbeat = roundTrip
                    $0.counters = counters
                }
            }
            await Wait.sleep(for: configuration.heartbeatInterval)
        }
        return false
    }
}
