import Circuits
import Logging
import Processes
import RoleProtocol
import Synchronization
import SystemPackage

/// Keeps the roles connected: consumes both pools' events, gives each vault its
/// configuration, a link to the nursery and the sessions the vault before it kept
/// (`SessionKeeper`), links every worker to the vault that runs (one socketpair each),
/// relinks them all when the vault is replaced, and admits each instance once its links are
/// in place. A spawned nursery serves every vault in turn, so a vault's restart keeps the
/// shells; if the nursery dies, the vault is restarted with a new one (its sessions are
/// adopted).
final class LinkBroker: Sendable {
    private struct State {
        var authentication: VaultAuthentication
        var vault: RolePool.Instance?
        /// Spawned once, linked to every vault.
        var spawnedNursery: NurseryProcess?
        /// The nursery service's connection for the running vault.
        var serviceConnection: NurseryServiceConnection?
        var workers: [Int: RolePool.Instance] = [:]
        /// With TLS: the running keyholder, and the chain (a sealed memory file) and key type
        /// each worker gets with its link to it.
        var keyholder: RolePool.Instance?
        /// With `--record`: the running recorder.
        var recorder: RolePool.Instance?
        var chain: (file: FileDescriptor, kind: TLSKeyKind)?
        var stopping = false
        /// The server hands its state to a new binary: kept sessions stay open at the end.
        var handingOver = false
        /// Vaults started so far (the running one's generation).
        var vaultGeneration = 0
    }

    let keeper: SessionKeeper
    let orphans: OrphanShells

    private let workers: RolePool
    private let vault: RolePool
    private let keyholder: RolePool?
    /// With `--record`: the recorder, a pool of one.
    let recorder: RolePool?
    /// With `--record`: the directory whose files the recorder writes.
    let recordings: RecordingDirectory?
    private let nursery: NurserySource
    private let executable: String
    private let logger: Logger
    private let state: Mutex<State>

    /// `handover`: the sessions and shells an earlier server kept, for the first vault.
    init(workers: RolePool, vault: RolePool, keyholder: RolePool? = nil, tls: (FileDescriptor, TLSKeyKind)? = nil,
         recorder: RolePool? = nil, recordings: RecordingDirectory? = nil, nursery: NurserySource, executable: String, authentication: VaultAuthentication,
         keptSessions: Int, fdStore: Bool = false, handover: Handover = Handover(), audit: AuditTrail? = nil, logger: Logger) {
        keeper = SessionKeeper(limit: keptSessions, fdStore: fdStore, audit: audit, logger: logger)
        keeper.preload(handover.sessions)
        orphans = OrphanShells(logger: logger)
        orphans.preload(handover.orphans)
        self.workers = workers
        self.vault = vault
        self.keyholder = keyholder
        self.recorder = recorder
        self.recordings = recordings
        self.nursery = nursery
        self.executable = executable
        self.logger = logger
        var initial = State(authentication: authentication)
        initial.vaultGeneration = handover.vaultGeneration
        initial.chain = tls.map { (file: $0.0, kind: $0.1) }
        state = Mutex(initial)
        (inputs, submit) = AsyncStream.makeStream(of: Input.self)
    }

    private enum Input: Sendable {
        case pool(Role, RolePool.Event)
        case authentication(VaultAuthentication, delivered: CheckedContinuation<Void, Never>)
    }

    private let inputs: AsyncStream<Input>
    private let submit: AsyncStream<Input>.Continuation

    /// Handles events, one at a time, until both pools have shut down; then stops the last
    /// nursery.
    func run() async {
        await withTaskGroup(of: Void.self) { forwarders in
            let pools = [workers, vault] + [keyholder, recorder].compactMap { $0 }
            for pool in pools {
                forwarders.addTask {
                    for await event in pool.events { self.submit.yield(.pool(pool.configuration.role, event)) }
                }
            }
            forwarders.addTask {
                for await input in self.inputs {
                    switch input {
                    case .pool(let role, let event): await self.handle(role, event)
                    case .authentication(let authentication, let delivered):
                        await self.deliver(authentication)
                        delivered.resume()
                    }
                }
            }
            for _ in 0..<pools.count { await forwarders.next() }
            submit.finish()
        }
        let (spawned, connection, handingOver) = state.withLock { s in
            defer { (s.spawnedNursery, s.serviceConnection) = (nil, nil) }
            return (s.spawnedNursery, s.serviceConnection, s.handingOver)
        }
        await spawned?.stop()
        await connection?.stop()
        if handingOver {
            // The nursery is gone and its shells are this process's: the next binary reaps them.
            if spawned != nil { orphans.takeOver(keeper.shells) }
            return
        }
        keeper.closeAll()
        orphans.closeAll()
    }

    /// From now on the pools are stopping for an upgrade: the kept sessions and the shells
    /// stay, for the binary this process is about to become.
    func beginHandover() {
        state.withLock { s in
            s.stopping = true
            s.handingOver = true
        }
    }

    /// The running vault's generation (1 for the first vault), and whether one runs.
    var vaultGeneration: Int { state.withLock { $0.vaultGeneration } }

    /// From now on nothing is relinked and a nursery's end is expected: the pools are about
    /// to stop their instances.
    func beginStopping() {
        state.withLock { $0.stopping = true }
    }

    /// A new credential for every check from now on (open sessions stay). Returns once the
    /// running vault has it; a vault that starts later is configured with it.
    func configure(_ authentication: VaultAuthentication) async {
        await withCheckedContinuation { delivered in
            if case .terminated = submit.yield(.authentication(authentication, delivered: delivered)) { delivered.resume() }
        }
    }

    private func deliver(_ authentication: VaultAuthentication) async {
        let current = state.withLock { s in
            s.authentication = authentication
            return s.vault
        }
        guard let current else { return }
        do {
            try await current.transport.open().tell(authentication.message)
        } catch {
            logger.error("new credential not delivered to the vault", metadata: ["error": "\(error)"])
        }
    }

    private func handle(_ role: Role, _ event: RolePool.Event) async {
        switch (role, event) {
        case (.vault, .started(let instance)):
            await vaultStarted(instance)
        case (.vault, .ended(let instance)):
            let ending = state.withLock { s -> (current: Bool, connection: NurseryServiceConnection?) in
                guard s.vault === instance else { return (false, nil) }
                s.vault = nil
                defer { s.serviceConnection = nil }
                return (true, s.serviceConnection)
            }
            if ending.current {
                var log = logger
                log[metadataKey: "vault"] = "\(instance.slot)"
                keeper.vaultEnded(log: log)
            }
            await ending.connection?.stop()
        case (.worker, .started(let instance)):
            await workerStarted(instance)
        case (.worker, .ended(let instance)):
            state.withLock { s in
                if s.workers[instance.id] === instance { s.workers[instance.id] = nil }
            }
        case (.keyholder, .started(let instance)):
            let running = state.withLock { s in
                s.keyholder = instance
                return s.workers.values.sorted { $0.id < $1.id }
            }
            for worker in running {
                do {
                    try await linkKeyholder(worker, to: instance)
                } catch {
                    logger.error("worker not linked to the new keyholder", metadata: ["worker": "\(worker.id)", "error": "\(error)"])
                }
            }
            // Running (for `start`'s readiness, `policy learn`) once every worker can sign.
            keyholder?.linked(instance)
        case (.keyholder, .ended(let instance)):
            state.withLock { s in
                if s.keyholder === instance { s.keyholder = nil }
            }
        case (.recorder, .started(let instance)):
            await recorderStarted(instance)
        case (.recorder, .ended(let instance)):
            state.withLock { s in
                if s.recorder === instance { s.recorder = nil }
            }
        default:
            // Admission and degradation are the pools' own; no other role has a pool.
            break
        }
    }

    /// A new chain (SIGHUP): the workers get it with their links to the next keyholder.
    func replaceChain(_ file: FileDescriptor, kind: TLSKeyKind) {
        let previous = state.withLock { s in
            defer { s.chain = (file, kind) }
            return s.chain?.file
        }
        try? previous?.close()
    }

    /// One stream socketpair: one end to the keyholder, the other to the worker with a
    /// read-only descriptor of its own of the chain's memory file.
    private func linkKeyholder(_ worker: RolePool.Instance, to keyholder: RolePool.Instance) async throws {
        guard let chain = state.withLock({ $0.chain }) else { return }
        let file = try RoleLauncher.reopened(chain.file)
        defer { try? file.close() }
        let (keyholderEnd, workerEnd) = try SocketCalls.socketPair(Link.workerKeyholder.socketKind)
        defer {
            try? keyholderEnd.close()
            try? workerEnd.close()
        }
        try await keyholder.transport.open().tell(SupervisorToKeyholder.workerLink(worker: UInt32(worker.id)), descriptors: [keyholderEnd])
        try await worker.transport.open().tell(SupervisorToWorker.keyholderLink(worker: UInt32(worker.id), keyKind: chain.kind.rawValue),
                                               descriptors: [workerEnd, file])
    }

    /// Signatures made and refused per worker, from the keyholder.
    func signatureCounts() async throws -> [KeyholderToSupervisor.Count] {
        guard let keyholder = state.withLock({ $0.keyholder }) else { return [] }
        let circuit = try keyholder.transport.open()
        try await circuit.send(SupervisorToKeyholder.counts, end: true)
        guard case .counts(let counts)? = try await circuit.receive(KeyholderToSupervisor.self)?.message else {
            throw SessionRequestError.unexpectedReply
        }
        return counts
    }

    private func workerStarted(_ worker: RolePool.Instance) async {
        let (current, keyholder) = state.withLock { s in
            s.workers[worker.id] = worker
            return s.stopping ? (nil, nil) : (s.vault, s.keyholder)
        }
        if let keyholder {
            do {
                try await linkKeyholder(worker, to: keyholder)
            } catch where keyholder.transport.failure != nil {
                // That keyholder is going; its successor links every worker.
            } catch {
                return workers.fail(worker, reason: "keyholder link: \(error)")
            }
        }
        if let current {
            do {
                try await link(worker, to: current)
            } catch where current.transport.failure != nil {
                // That vault is going; the worker is linked to its successor when it starts.
            } catch {
                return workers.fail(worker, reason: "vault link: \(error)")
            }
        }
        workers.linked(worker)
    }

    /// Gives the vault its credential, a nursery and the kept sessions, links every worker to
    /// it, then admits it.
    private func vaultStarted(_ instance: RolePool.Instance) async {
        var log = logger
        log[metadataKey: "vault"] = "\(instance.slot)"
        // Recorded first, so that the vault's end is seen whatever fails below.
        let (authentication, generation) = state.withLock { s in
            s.vault = instance
            s.vaultGeneration += 1
            return (s.authentication, s.vaultGeneration)
        }
        // What the vault keeps for its successor, from its first session on.
        Task { await keeper.serve(instance) }
        do {
            let vaultEnd = try await nurseryLink(for: instance, log: log)
            defer { try? vaultEnd.close() }
            try await instance.transport.open().tell(authentication.message)
            try await instance.transport.open().tell(SupervisorToVault.nurseryLink, descriptors: [vaultEnd])
            // Before the kept sessions: each is announced to the recorder as it is adopted.
            if let recording = state.withLock({ $0.recorder }) {
                do {
                    try await feed(instance, to: recording)
                } catch {
                    log.error("the new vault is not linked to the recorder; its sessions are not recorded until the recorder restarts",
                              metadata: ["error": "\(error)"])
                }
            }
            let kept = keeper.count
            if kept > 0 {
                try await keeper.handOver(to: instance, log: log)
                log.info("sessions handed to the new vault", metadata: ["kept": "\(kept)", "vault_generation": "\(generation)",
                                                                       "sessions_adopted": "\(keeper.adoptions.adopted)"])
            }
            let running = state.withLock { $0.workers.values.sorted { $0.id < $1.id } }
            for worker in running {
                do {
                    try await link(worker, to: instance)
                } catch {
                    log.error("worker not linked to the new vault", metadata: ["worker": "\(worker.id)", "error": "\(error)"])
                }
            }
            vault.linked(instance)
        } catch {
            vault.fail(instance, reason: "\(error)")
        }
    }

    /// The vault's end of a link to the nursery: the spawned nursery (started with the first
    /// vault, or again if it died), or a new connection to the nursery service. If the
    /// nursery ends, the vault is restarted, and its sessions adopted by the next.
    private func nurseryLink(for instance: RolePool.Instance, log: Logger) async throws -> FileDescriptor {
        switch nursery {
        case .spawn(let shells):
            let running = state.withLock { s in s.spawnedNursery?.isRunning == true ? s.spawnedNursery : nil }
            let nursery: NurseryProcess
            if let running {
                nursery = running
            } else {
                nursery = try await NurseryProcess.start(.init(executable: executable, shells: shells)) { [self] termination in
                    log.error("nursery ended; its shells are taken over and the vault restarted with a new one",
                              metadata: ["termination": "\(termination.map { "\($0)" } ?? "unknown")"])
                    orphans.takeOver(keeper.shells)
                    state.withLock { $0.vault }?.transport.close()
                }
                await orphans.handOver(to: nursery.transport)
                let previous = state.withLock { s in
                    defer { s.spawnedNursery = nursery }
                    return s.spawnedNursery
                }
                await previous?.stop()
            }
            return try await nursery.link()
        case .service(let socket):
            let (connection, vaultEnd) = try NurseryServiceConnection.connect(socket) {
                log.error("the nursery service closed the vault's link; restarting the vault", metadata: ["socket": "\(socket)"])
                instance.transport.close()
            }
            state.withLock { $0.serviceConnection = connection }
            log.info("vault linked to the nursery service", metadata: ["socket": "\(socket)"])
            return vaultEnd
        }
    }

    // MARK: Recording

    /// Tells a new recorder where the directory's sequence stands, links it to the running
    /// vault (which announces every session it has), then admits it.
    private func recorderStarted(_ instance: RolePool.Instance) async {
        guard let recordings else { return recorder?.fail(instance, reason: "no recording directory") ?? () }
        let current = state.withLock { s in
            s.recorder = instance
            return s.stopping ? nil : s.vault
        }
        Task { await recordings.serve(instance) }
        do {
            let (last, link) = recordings.sequence()
            try await instance.transport.open().tell(SupervisorToRecorder.directory(last: UInt32(clamping: last), link: link))
            if let current { try await feed(current, to: instance) }
            recorder?.linked(instance)
        } catch {
            recorder?.fail(instance, reason: "\(error)")
        }
    }

    /// Has the running recorder end every recording it has open, each with `reason` as its
    /// last marker, waiting at most `timeout` (the recorder is stopped after this, with
    /// SIGKILL as any role, which would leave them unfinished).
    func finishRecordings(_ reason: String, timeout: Duration = .seconds(10)) async {
        guard let instance = state.withLock({ $0.recorder }) else { return }
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await instance.transport.open().tell(SupervisorToRecorder.finish(reason: reason))) != nil }
            group.addTask {
                await Wait.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !finished { logger.error("the recorder did not end its recordings; they stay unfinished", metadata: ["timeout": "\(timeout)"]) }
    }

    /// One seqpacket pair: the vault's end of the feed, and the recorder's.
    private func feed(_ vault: RolePool.Instance, to recorder: RolePool.Instance) async throws {
        let (vaultEnd, recorderEnd) = try SocketCalls.socketPair(.seqpacket)
        defer {
            try? vaultEnd.close()
            try? recorderEnd.close()
        }
        try await recorder.transport.open().tell(SupervisorToRecorder.feed, descriptors: [recorderEnd])
        try await vault.transport.open().tell(SupervisorToVault.recorderFeed, descriptors: [vaultEnd])
    }

    // MARK: Sessions, for the control socket

    public enum SessionRequestError: Error, CustomStringConvertible {
        case noVault
        case unexpectedReply
        public var description: String {
            switch self {
            case .noVault: return "no vault is running"
            case .unexpectedReply: return "the vault answered something else"
            }
        }
    }

    private var currentVault: RolePool.Instance? { state.withLock { $0.vault } }

    /// Every session the vault keeps.
    func sessions() async throws -> [SessionSummary] {
        guard let vault = currentVault else { throw SessionRequestError.noVault }
        let circuit = try vault.transport.open()
        try await circuit.send(SupervisorToVault.listSessions, end: true)
        var all: [SessionSummary] = []
        while let page = try await circuit.receive(VaultToSupervisor.self) {
            guard case .sessions(let list) = page.message else { throw SessionRequestError.unexpectedReply }
            all += list
            if page.isEnd { break }
        }
        return all
    }

    func attachmentCounts() async throws -> (current: UInt32, started: UInt64) {
        guard let vault = currentVault else { throw SessionRequestError.noVault }
        let circuit = try vault.transport.open()
        try await circuit.send(SupervisorToVault.attachmentCount, end: true)
        guard case .attachments(let current, let started)? = try await circuit.receive(VaultToSupervisor.self)?.message else {
            throw SessionRequestError.unexpectedReply
        }
        return (current, started)
    }

    /// Sends a kick or hang-up; whether the session (and client) existed.
    func sessionRequest(_ request: SupervisorToVault) async throws -> Bool {
        guard let vault = currentVault else { throw SessionRequestError.noVault }
        let circuit = try vault.transport.open()
        try await circuit.send(request, end: true)
        guard case .done(let found)? = try await circuit.receive(VaultToSupervisor.self)?.message else {
            throw SessionRequestError.unexpectedReply
        }
        return found
    }

    /// One socketpair: one end to the vault, the other to the worker.
    private func link(_ worker: RolePool.Instance, to vault: RolePool.Instance) async throws {
        let (vaultEnd, workerEnd) = try SocketCalls.socketPair(Link.workerVault.socketKind)
        defer {
            try? vaultEnd.close()
            try? workerEnd.close()
        }
        try await vault.transport.open().tell(SupervisorToVault.workerLink(worker: UInt32(worker.id)), descriptors: [vaultEnd])
        try await worker.transport.open().tell(SupervisorToWorker.vaultLink(worker: UInt32(worker.id)), descriptors: [workerEnd])
    }
}
