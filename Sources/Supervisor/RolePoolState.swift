/// What a pool holds of an instance: where it was started and what it is called.
protocol PoolMember: AnyObject, Sendable {
    var slot: Int { get }
    var id: Int { get }
}

/// Everything a `RolePool` decides, as a value: which instance is in which slot, which are
/// admitted, which serve a client of their own, who waits for a spare, how often instances
/// restarted. Each change is one call that returns what the caller must do (resume a waiter,
/// retire an instance, log a degradation); the caller does it after releasing its lock. No
/// threads, processes or clocks are read here, so the decisions are tested as values
/// (`RolePoolStateTests`). Dispatch is one of two small types over it: `Shared` (a pool: the
/// least-loaded admitted instance) and `Spares` (a worker per client: a spare leaves its slot
/// with its client, and a connection that finds none waits in line for the next admitted).
struct RolePoolState<Instance: PoolMember> {
    struct Slot {
        var status: RolePool.SlotStatus
        /// Started in this slot and not gone (nor, per client, given its client).
        var instance: Instance?
        /// Due for replacement once it has no client (`renew`).
        var renewing = false
        /// Why the last instance left the slot, until the slot's keeper has taken it.
        var left: LeftReason?
    }

    /// Why an instance left its slot.
    enum LeftReason: Sendable, Equatable {
        /// Its supervision ended; `renewed`: planned (no restart counted).
        case ended(renewed: Bool)
        /// Per client: it was given its client, and serves it out of the slot.
        case givenItsClient
    }

    private(set) var slots: [Slot]
    /// Per client: instances out of their slots, each with its one client, by id.
    private(set) var serving: [Int: (instance: Instance, status: RolePool.SlotStatus)] = [:]
    private(set) var stopping = false
    private(set) var intensity: RestartIntensity
    private let isolation: RolePool.Isolation
    private var nextID = 0

    init(count: Int, isolation: RolePool.Isolation, intensity: RestartIntensity) {
        slots = (0..<count).map { Slot(status: .init(id: $0, pid: nil, state: .starting, restarts: 0, startedAt: nil,
                                                      lastHeartbeat: nil, violations: 0)) }
        self.isolation = isolation
        self.intensity = intensity
    }

    // MARK: Views

    /// Every slot, then (per client) every instance serving its client.
    var statuses: [RolePool.SlotStatus] {
        slots.map(\.status) + serving.values.map(\.status).sorted { $0.id < $1.id }
    }

    var openConnections: Int {
        slots.reduce(0) { $0 + $1.status.connections } + serving.values.reduce(0) { $0 + $1.status.connections }
    }

    /// Every instance started and not reaped from its slot, and every one serving a client.
    var instances: [Instance] { slots.compactMap(\.instance) + serving.values.map(\.instance) }

    // MARK: A slot's life

    /// A slot launches its next instance: its id (the slot's number in a pool, a new serial
    /// per client).
    mutating func launching(_ slot: Int) -> Int {
        let id = isolation == .pool ? slot : nextID
        nextID += 1
        slots[slot].status.id = id
        slots[slot].status.state = .starting
        slots[slot].status.client = nil
        return id
    }

    /// Its process runs (not yet ready).
    mutating func spawned(_ slot: Int, pid: pid_t, at now: ContinuousClock.Instant) {
        slots[slot].status.pid = pid
        slots[slot].status.startedAt = now
        slots[slot].status.counters = []
    }

    /// Ready and watched; not admitted yet.
    mutating func started(_ instance: Instance) {
        let slot = instance.slot
        slots[slot].instance = instance
        slots[slot].renewing = false
        slots[slot].left = nil
        slots[slot].status.connections = 0
    }

    /// What `admit` did.
    enum Admission: Equatable {
        /// It takes clients from now on.
        case admitted
        /// Per client: it went at once to the connection that waited longest (`ticket`).
        case handedOver(ticket: Int)
        /// Not the slot's instance any more (it ended meanwhile), or admitted before.
        case stale
    }

    /// Admits a started instance (its links are in place): it counts as running and takes
    /// clients. Per client, the connection waiting longest for a spare takes it at once.
    mutating func admit(_ instance: Instance) -> Admission {
        let slot = instance.slot
        guard slots[slot].instance === instance, slots[slot].status.state == .starting else { return .stale }
        slots[slot].status.state = .running
        guard isolation == .perClient, !stopping, let ticket = waiting.first else { return .admitted }
        waiting.removeFirst()
        give(instance, to: peers.removeValue(forKey: ticket) ?? "")
        return .handedOver(ticket: ticket)
    }

    /// The instance's supervision ended (it died, hung, failed, was renewed or stopped).
    enum Ending: Equatable {
        /// It was in its slot: the slot's keeper reaps it and starts the next.
        case leftSlot
        /// Per client: it served its client out of the slot; it is retired.
        case wasServing
        /// Already gone from both.
        case unknown
    }

    mutating func ended(_ instance: Instance, renewed: Bool) -> Ending {
        let slot = instance.slot
        if slots[slot].instance === instance {
            slots[slot].instance = nil
            slots[slot].left = .ended(renewed: renewed)
            return .leftSlot
        }
        return serving[instance.id] != nil ? .wasServing : .unknown
    }

    /// The slot's keeper learns why its instance left (nil: it has not yet).
    mutating func takeLeftReason(_ slot: Int) -> LeftReason? {
        defer { slots[slot].left = nil }
        return slots[slot].left
    }

    /// A retired instance is reaped: it leaves `serving`.
    mutating func retired(_ instance: Instance) {
        serving[instance.id] = nil
    }

    /// Whether the instance (per client: the one serving its client) has no client.
    func hasNoClient(_ instance: Instance) -> Bool {
        if let entry = serving[instance.id] { return entry.status.connections == 0 }
        return slots[instance.slot].status.connections == 0
    }

    /// A failed or ended instance is replaced: counted, and the slot waits its backoff.
    /// Returns whether the pool just became degraded.
    mutating func restarting(_ slot: Int, at now: ContinuousClock.Instant) -> Bool {
        slots[slot].status.restarts += 1
        slots[slot].status.state = .restarting
        slots[slot].status.pid = nil
        return intensity.record(at: now)
    }

    /// An instance serving its client ended otherwise than by its client leaving: a restart
    /// for the intensity limit. Returns whether the pool just became degraded.
    mutating func endedWhileServing(at now: ContinuousClock.Instant) -> Bool {
        intensity.record(at: now)
    }

    mutating func stopped(_ slot: Int) {
        slots[slot].status.state = .stopped
        slots[slot].status.pid = nil
    }

    /// The pool stops: nothing more is admitted or handed out; the waiting connections are
    /// answered with nothing.
    mutating func stop() -> [Int] {
        stopping = true
        defer {
            waiting = []
            peers = [:]
        }
        return waiting
    }

    // MARK: Renewal

    /// Every instance now in a slot is replaced as soon as it has no client.
    mutating func renewAll() {
        for slot in slots.indices where slots[slot].instance != nil { slots[slot].renewing = true }
    }

    /// Whether the slot's instance is due for renewal and may go now.
    func mayRenew(_ slot: Int) -> Bool {
        slots[slot].renewing && slots[slot].status.connections == 0
    }

    // MARK: Status

    /// Changes the status of `instance`, wherever it is (its slot, or serving its client).
    mutating func update(_ instance: Instance, _ change: (inout RolePool.SlotStatus) -> Void) {
        if serving[instance.id] != nil {
            change(&serving[instance.id]!.status)
        } else if slots[instance.slot].instance === instance || slots[instance.slot].status.id == instance.id {
            change(&slots[instance.slot].status)
        }
    }

    /// The instance with `id`, launched in `slot`, made a violation.
    mutating func violation(slot: Int, id: Int) {
        if serving[id] != nil {
            serving[id]!.status.violations += 1
        } else if slots[slot].status.id == id {
            slots[slot].status.violations += 1
        }
    }

    // MARK: Dispatch

    /// A pool: each client goes to the admitted instance with the fewest connections.
    enum Shared {
        /// Picks among admitted instances that `usable` accepts and `tried` does not name;
        /// instances being renewed only when nothing else runs. The pick counts the client.
        static func choose(_ state: inout RolePoolState, tried: Set<ObjectIdentifier>, usable: (Instance) -> Bool) -> Instance? {
            let running = state.slots.compactMap { slot -> (Instance, Bool)? in
                guard let instance = slot.instance, slot.status.state == .running, !tried.contains(ObjectIdentifier(instance)),
                      usable(instance) else { return nil }
                return (instance, slot.renewing)
            }
            let fresh = running.filter { !$0.1 }
            let candidates = (fresh.isEmpty ? running : fresh).map(\.0)
            guard let best = candidates.min(by: { state.slots[$0.slot].status.connections < state.slots[$1.slot].status.connections })
            else { return nil }
            state.slots[best.slot].status.connections += 1
            return best
        }

        /// The client handed to `instance` has gone. A replaced instance's clients were
        /// counted against it, not its successor.
        static func release(_ state: inout RolePoolState, _ instance: Instance) {
            guard state.slots[instance.slot].instance === instance else { return }
            state.slots[instance.slot].status.connections -= 1
        }
    }

    /// Per client: a spare leaves its slot with its client and serves it alone.
    enum Spares {
        enum Take: Equatable {
            /// This spare is the client's; its slot starts the next.
            case spare(ObjectIdentifier)
            /// None admitted: the connection waits with this ticket for the next one.
            case wait(ticket: Int)
            /// The pool is stopping.
            case stopping
        }

        /// Takes the admitted spare with the lowest id for `peer`, or puts the connection in
        /// line. On `.spare`, `taken` is the instance.
        static func take(_ state: inout RolePoolState, peer: String, usable: (Instance) -> Bool,
                         taken: inout Instance?) -> Take {
            guard !state.stopping else { return .stopping }
            let spares = state.slots.compactMap { slot -> Instance? in
                guard let instance = slot.instance, slot.status.state == .running, usable(instance) else { return nil }
                return instance
            }
            guard let spare = spares.min(by: { $0.id < $1.id }) else {
                let ticket = state.nextTicket
                state.nextTicket += 1
                state.waiting.append(ticket)
                state.peers[ticket] = peer
                return .wait(ticket: ticket)
            }
            state.give(spare, to: peer)
            taken = spare
            return .spare(ObjectIdentifier(spare))
        }

        /// The connection with `ticket` stops waiting (its deadline passed). False if it was
        /// handed a spare first.
        static func giveUp(_ state: inout RolePoolState, ticket: Int) -> Bool {
            state.peers[ticket] = nil
            guard let index = state.waiting.firstIndex(of: ticket) else { return false }
            state.waiting.remove(at: index)
            return true
        }

        /// The instance's client has gone (or was never handed over): it has no connection.
        static func clientLeft(_ state: inout RolePoolState, _ instance: Instance) {
            state.serving[instance.id]?.status.connections = 0
        }
    }

    /// Per client: connections waiting for a spare, by ticket, oldest first, and their peers.
    private(set) var waiting: [Int] = []
    private var peers: [Int: String] = [:]
    private var nextTicket = 0

    /// Moves a spare out of its slot to serve `peer`; the slot starts its next instance.
    private mutating func give(_ spare: Instance, to peer: String) {
        let slot = spare.slot
        var status = slots[slot].status
        status.connections = 1
        status.client = peer.isEmpty ? "unknown" : peer
        serving[spare.id] = (spare, status)
        slots[slot].instance = nil
        slots[slot].left = .givenItsClient
        slots[slot].status = .init(id: status.id, pid: nil, state: .starting, restarts: status.restarts, startedAt: nil,
                                   lastHeartbeat: nil, violations: 0)
    }
}

/// More than `limit` restarts within `window` marks the pool degraded, until they thin out.
struct RestartIntensity: Sendable {
    let limit: Int
    let window: Duration
    private var times: [ContinuousClock.Instant] = []
    private(set) var degraded = false

    init(limit: Int, window: Duration) {
        self.limit = limit
        self.window = window
    }

    /// One restart at `now`; true when this one made the pool degraded.
    mutating func record(at now: ContinuousClock.Instant) -> Bool {
        times.append(now)
        times.removeAll { now - $0 > window }
        let was = degraded
        degraded = times.count > limit
        return degraded && !was
    }
}

#if canImport(Glibc)
import Glibc
#endif
