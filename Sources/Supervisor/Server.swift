import Circuits
import Logging
import Processes
import RoleProtocol
import Sandbox
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cloister serve`: owns the listening sockets and the control socket, runs the vault pool
/// and the worker pool (the `LinkBroker` connects them, and gives each vault its nursery), and
/// hands each accepted client socket to the least-loaded worker. It never reads a client byte.
public final class Server: Sendable {
    public struct Configuration: Sendable {
        public var listen: [String] = ["127.0.0.1:7681"]
        /// Owner, group and mode of unix listeners ("unix:PATH" in `listen`).
        public var socketAccess = Listener.SocketAccess()
        /// Workers in the pool, or (per client) spares kept ready.
        public var workers = 2
        /// Per client: fork the workers from a template (the default) instead of spawning each.
        public var forkWorkers = true
        public var isolation = RolePool.Isolation.pool
        /// ttyd's AuthToken form of the credential (base64 of "user:password"); nil lets
        /// everyone in.
        public var credential: [UInt8]?
        /// Instead of `credential`: web users checked by their passwords' crypt(3) hashes.
        public var users: WebUsers?
        public var authentication: VaultAuthentication { users.map { .users($0) } ?? .credential(credential) }
        public var checkOrigin = true
        /// The prefix every route is under ("" or "/segment…", checked by the caller); the
        /// workers serve it, the supervisor only shows it.
        public var basePath = ""
        /// The preferences message's JSON object, sent to every client (ttyd's -t).
        public var preferences = "{}"
        /// The header a reverse proxy names the authenticated user in (ttyd's -H); then there
        /// is no credential.
        public var authHeader: String?
        /// Every client only watches (ttyd without -W).
        public var readOnly = false
        /// Sent to a shell whose session is hung up (ttyd's -s).
        public var endSignal: Int32 = SIGHUP
        /// Whether a new session's command takes the client's URL arguments (ttyd's -a).
        public var urlArguments = false
        /// Whether the server stops once its clients are gone (ttyd's -o and -q).
        public var exitWhen: ExitWhen?
        /// Seconds between the workers' pings of each WebSocket (ttyd's -P); 0: none.
        public var pingInterval: Double = 30
        public var maxClients = 1024
        /// Connections that have not authenticated: how many, from where, for how long.
        public var admission = Admission.Limits()
        /// Seconds a TCP connection may stay silent before accept(2) sees it (TCP_DEFER_ACCEPT);
        /// 0: at once.
        public var deferAcceptSeconds = 10
        public var controlSocket: String?
        /// A group whose members may use the control socket too (mode 0660 in that group).
        public var controlGroup: gid_t?
        /// Each sandboxed role's profile.
        public var profiles: RoleProfiles
        /// Where the shells come from.
        public var nursery: NurserySource
        public var executable = ChildProcess.currentExecutable
        public var mode: EnforcementMode = .report
        /// How the vault keeps sessions (ring, linger, slow consumers); the options below that
        /// the vault applies too (read-only, the end signal…) are set on it by `Server`.
        public var sessions = SessionSettings()
        /// The page's assets (`WebAssets`): a sealed memory file each worker reads at start.
        public var assets: FileDescriptor?
        /// Adjusts each pool's configuration (tests: shorter heartbeats and backoff).
        public var tuning: (@Sendable (inout RolePool.Configuration) -> Void)?
        /// This binary's version, label and build id, as `ctl status` shows them.
        public var build = ""
        /// Hand each kept session to systemd's fd store too (`--fd-store`).
        public var fdStore = false
        /// HOST:PORT a load balancer polls for this host's state (`HealthEndpoint`); nil: none.
        public var healthListen: String?
        /// Addresses of proxies whose `X-Forwarded-For` names the client (numeric, as
        /// `inet_ntop` writes them): the audit trail records it, vouched for by the worker.
        public var trustedProxies: Set<String> = []
        /// The audit trail's file (`AuditTrail.open`), owned by the server from `start`; nil:
        /// audited facts go to the log alone.
        public var auditLog: FileDescriptor?
        /// `--record`: where recordings go, what they hold and how long they are kept.
        public var recording: Recording?
        /// TLS on the listeners `listen` marks with "tls:" (all of them when none is marked):
        /// the keyholder holds the key, the workers the chain.
        public var tls: TLS?

        public init(profiles: RoleProfiles, nursery: NurserySource) {
            self.profiles = profiles
            self.nursery = nursery
        }

        /// What each worker is started with.
        public var workerSettings: WorkerSettings {
            var s = WorkerSettings()
            s.checkOrigin = checkOrigin
            s.basePath = basePath
            s.preferences = preferences
            s.pingIntervalMilliseconds = Int64((pingInterval * 1000).rounded())
            s.urlArguments = urlArguments
            s.authHeader = authHeader
            s.openFiles = UInt64(Server.workerOpenFiles(maxClients: isolation == .pool ? maxClients : 1))
            s.authenticationDeadlineMilliseconds = admission.deadline.inMilliseconds
            return s
        }

        /// What the vault is started with.
        public var vaultSettings: VaultSettings {
            var s = VaultSettings()
            s.sessions = sessions
            if exitWhen == .once { s.sessions.maxAttachments = 1 }
            s.sessions.urlArguments = urlArguments
            s.sessions.authHeader = authHeader != nil
            s.sessions.readOnly = readOnly
            s.sessions.endSignal = endSignal
            s.openFiles = UInt64(Server.vaultOpenFiles(maxClients: maxClients))
            s.sessions.recording = recording?.terms
            return s
        }

        /// What the recorder is started with.
        public var recorderSettings: RecorderSettings {
            var s = RecorderSettings()
            s.openFiles = UInt64(Server.sessions(maxClients: maxClients) + 64)
            return s
        }
    }

    /// `--record DIR` and the options that go with it.
    public struct Recording: Sendable {
        /// The directory, opened by `RecordingDirectory.open` (owned by the server from `init`).
        public var directory: FileDescriptor
        public var path: String
        public var terms: SessionSettings.Recording
        public var retention: RecordingDirectory.Retention

        public init(directory: FileDescriptor, path: String, terms: SessionSettings.Recording, retention: RecordingDirectory.Retention) {
            (self.directory, self.path, self.terms, self.retention) = (directory, path, terms, retention)
        }
    }

    /// The TLS pair, as checked by `cloister role keyholder-check`.
    public struct TLS: Sendable {
        public var certificateFile: String
        public var keyFile: String
        public var kind: TLSKeyKind
        /// The chain as the workers get it: a sealed memory file of the certificate file.
        public var chain: FileDescriptor
        /// Each worker's signing budget at the keyholder: this many a second, twice as many at once.
        public var signaturesPerSecond = 500

        public init(certificateFile: String, keyFile: String, kind: TLSKeyKind, chain: FileDescriptor) {
            (self.certificateFile, self.keyFile, self.kind, self.chain) = (certificateFile, keyFile, kind, chain)
        }

        /// What the keyholder is started with.
        public var keyholderSettings: KeyholderSettings {
            KeyholderSettings(keyFile: keyFile, certificateFile: certificateFile, signaturesPerSecond: signaturesPerSecond)
        }
    }

    /// The prefix of a `--listen` address whose clients speak TLS.
    public static let tlsPrefix = "tls:"

    public enum ExitWhen: String, Sendable {
        /// One client at a time; stop when it leaves (`--once`).
        case once = "--once"
        /// Stop when the last client leaves (`--exit-no-clients`).
        case noClients = "--exit-no-clients"
    }

    public let configuration: Configuration
    public let listeners: [Listener]
    /// What load balancers poll (`--health-listen`).
    public let health: HealthEndpoint?
    /// The roles were running when the server began accepting.
    private let ready = Atomic<Bool>(false)
    /// A drain's deadline asked through the control socket (`ctl drain`), in seconds.
    public let requestedDrainSeconds = Mutex<Double?>(nil)
    public let workers: RolePool
    public let vault: RolePool
    /// With TLS: the keyholder, a pool of one.
    public let keyholder: RolePool?
    /// With `--record`: the recorder, a pool of one.
    public let recorder: RolePool?
    /// Per listener, whether its clients speak TLS.
    public let tlsListeners: [Bool]
    /// Clients answered 503 for being over `maxClients`.
    public let capacityRefusals = CapacityRefusals()
    /// Unauthenticated connections, admitted or refused.
    public let admission: AdmissionControl
    let broker: LinkBroker
    /// Every audited fact (`AuditTrail`).
    public let audit: AuditTrail
    /// The build this server replaced by `ctl upgrade`, if it did.
    public let upgradedFrom: String?
    let brokering = Mutex<Task<Void, Never>?>(nil)
    /// Writes the counts of refused credentials not written yet, every interval.
    let auditing = Mutex<Task<Void, Never>?>(nil)
    /// Deletes recordings past `--record-max-size` and `--record-max-age`, every minute.
    let retaining = Mutex<Task<Void, Never>?>(nil)
    let logger: Logger
    let accepting = Atomic<Bool>(true)
    /// Set when a drain begins: clients are still accepted, to resume or join the sessions
    /// this host holds, and new sessions are refused (by the workers, at the handshake).
    let draining = Atomic<Bool>(false)
    /// Set by a second SIGTERM or SIGINT during a drain: stop waiting for clients and sessions.
    let drainCut = Atomic<Bool>(false)
    let control: ControlServer?

    /// What kept the server from binding its sockets.
    public enum SetupError: Error, CustomStringConvertible {
        case listen(SystemCallError)
        case controlSocket(SystemCallError)
        public var description: String {
            switch self {
            case .listen(let e), .controlSocket(let e): return "\(e)"
            }
        }
    }

    /// Binds every listening and control socket; nothing runs until `start`. Throws (having
    /// closed what it opened) if any cannot be bound.
    /// `handover` is what an earlier server or systemd passed: its listening sockets are
    /// served along with those `configuration.listen` names (after an upgrade, instead of
    /// them: they are the same sockets), its kept sessions and shells go to the first vault.
    public init(configuration c: Configuration, handover: Handover = Handover(), logger: Logger) throws(SetupError) {
        configuration = c
        self.logger = logger
        var bound: [Listener] = handover.listeners
        upgradedFrom = handover.upgradedFrom
        let marked = c.listen.filter { $0.hasPrefix(Self.tlsPrefix) }.map { String($0.dropFirst(Self.tlsPrefix.count)) }
        // A listener handed over (systemd's, an upgrade's) is marked by its address; one bound
        // here by its own entry.
        var tls = handover.listeners.map { listener in marked.isEmpty || marked.contains { Listener.sameAddress($0, listener.address) } }
        do {
            for address in c.listen where handover.upgradedFrom == nil {
                let isMarked = address.hasPrefix(Self.tlsPrefix)
                bound.append(try Listener(isMarked ? String(address.dropFirst(Self.tlsPrefix.count)) : address, access: c.socketAccess))
                tls.append(marked.isEmpty || isMarked)
            }
        } catch {
            for listener in bound { try? listener.descriptor.close() }
            throw .listen(error)
        }
        // A connection that has sent nothing stays in the kernel, costing no accept and no
        // worker, until its first byte (or the kernel's timeout) makes it acceptable.
        for listener in bound where c.deferAcceptSeconds > 0 {
            do {
                try listener.deferAccept(seconds: c.deferAcceptSeconds)
            } catch {
                for listener in bound { try? listener.descriptor.close() }
                throw .listen(error)
            }
        }
        do {
            health = try c.healthListen.map { (address) throws(SystemCallError) in HealthEndpoint(listener: try Listener(address)) }
        } catch {
            for listener in bound { try? listener.descriptor.close() }
            throw .listen(error)
        }
        listeners = bound
        tlsListeners = c.tls == nil ? bound.map { _ in false } : tls
        admission = AdmissionControl(limits: c.admission, logger: logger)
        let trail = AuditTrail(file: c.auditLog, logger: logger, trustedProxies: c.trustedProxies)
        audit = trail
        func pool(_ settings: any RoleSettings, count: Int, _ adjust: (inout RolePool.Configuration) -> Void = { _ in }) -> RolePool {
            var configuration = RolePool.Configuration(settings: settings, count: count, executable: c.executable,
                                                       policy: c.profiles.path(type(of: settings).declaration.role))
            configuration.mode = c.mode
            configuration.audit = trail
            adjust(&configuration)
            c.tuning?(&configuration)
            return RolePool(configuration: configuration, logger: logger)
        }
        workers = pool(c.workerSettings, count: c.workers) { w in
            w.admission = .onceLinked
            w.isolation = c.isolation
            w.sharedFile = c.assets
            // A worker per client is forked from a template: confined once, its pages shared.
            if c.isolation == .perClient && c.forkWorkers {
                let (settings, policy, mode, user, group, assets, build, executable) =
                    (TemplateSettings(worker: c.workerSettings), w.policy, w.mode, w.user, w.group, c.assets, w.build, c.executable)
                w.templates = WorkerTemplates {
                    try await TemplateProcess.start(executable: executable, settings: settings, policy: policy, mode: mode,
                                                    user: user, group: group, sharedFile: assets, build: build)
                }
            }
        }
        vault = pool(c.vaultSettings, count: 1) { $0.admission = .onceLinked }
        keyholder = c.tls.map { pool($0.keyholderSettings, count: 1) { $0.admission = .onceLinked } }
        recorder = c.recording.map { _ in pool(c.recorderSettings, count: 1) { $0.admission = .onceLinked } }
        let recordings = c.recording.map {
            RecordingDirectory(path: $0.path, directory: $0.directory, retention: $0.retention, audit: trail, logger: logger)
        }
        broker = LinkBroker(
            workers: workers, vault: vault, keyholder: keyholder, tls: c.tls.map { ($0.chain, $0.kind) },
            recorder: recorder, recordings: recordings,
            nursery: c.nursery, executable: c.executable,
            authentication: c.authentication, keptSessions: Self.sessions(maxClients: c.maxClients), fdStore: c.fdStore, handover: handover,
            audit: trail, logger: logger)
        let (workerPool, vaultPool, refusals, admitting) = (workers, vault, capacityRefusals, admission)
        let sessions = SessionControl(broker: broker, command: c.nursery.commandDescription, build: c.build,
                                      upgradedFrom: handover.upgradedFrom)
        do {
            control = try c.controlSocket.map { (path) throws(SystemCallError) in
                try ControlServer(path: path, pool: workerPool, vault: vaultPool, sessions: sessions,
                                  refusals: refusals, admission: admitting, adminGroup: c.controlGroup, audit: trail, logger: logger)
            }
        } catch {
            for listener in bound { try? listener.descriptor.close() }
            throw .controlSocket(error)
        }
        control?.upgradeCheck.withLock { $0 = { [unowned self] () async throws -> String in try await checkUpgrade() } }
        control?.drainRequest.withLock { $0 = { [unowned self] seconds in requestDrain(seconds: seconds) } }
    }

    /// A worker may end up with every client (the others restarting): one socket each, and
    /// room for its transports, timers and the event loops' own descriptors.
    public static func workerOpenFiles(maxClients: Int) -> Int { maxClients + 64 }

    /// Sessions the vault may have: one per client, and half as many again outliving their
    /// clients by the linger.
    public static func sessions(maxClients: Int) -> Int { max(2016, maxClients * 3 / 2) }

    /// Two per session (its PTY master and its kept ring) and room for the rest.
    public static func vaultOpenFiles(maxClients: Int) -> Int { 2 * sessions(maxClients: maxClients) + 64 }

    /// The supervisor's own: the kept sessions' terminals and rings (two each, as the
    /// vault's), per client three for each worker (its transport, its pidfd, its violation
    /// listener), and room for the rest.
    public static func supervisorOpenFiles(maxClients: Int, isolation: RolePool.Isolation) -> Int {
        2 * sessions(maxClients: maxClients) + (isolation == .perClient ? 3 * maxClients : 0) + 320
    }

    /// Clients attached now and attachments started, from the vault.
    public func attachmentCounts() async throws -> (current: UInt32, started: UInt64) {
        try await broker.attachmentCounts()
    }

    /// SIGHUP: the new credential applies to every check from now on (open sessions stay),
    /// and each worker is replaced, as soon as it has no client, by one started under the
    /// profile as it is now. The vault keeps its sessions; a new vault profile applies when
    /// the vault is next started.
    public func reload(_ authentication: VaultAuthentication, tls: TLS? = nil) async {
        await broker.configure(authentication)
        if let tls, let keyholder {
            // The next keyholder reads the new key; each worker gets the chain with its link.
            broker.replaceChain(tls.chain, kind: tls.kind)
            keyholder.renew()
            logger.info("reloaded: TLS certificate and key replaced", metadata: ["certificate": "\(tls.certificateFile)", "key_type": "\(tls.kind)"])
        }
        workers.renew()
        workers.configuration.templates?.renew()
        logger.info("reloaded: credential replaced, workers renewed as their clients leave")
    }

    /// Starts the vault and the workers, waits until the vault and at least one worker are
    /// running (or `readiness` has passed), then starts accepting: a client that arrives
    /// earlier waits in the backlog instead of finding no worker. Returns false, accepting
    /// nothing, when cancelled meanwhile (the server is to stop: `drain` still follows).
    @discardableResult
    public func start(readiness: Duration = .seconds(30)) async -> Bool {
        let broker = self.broker
        brokering.withLock { $0 = Task { await broker.run() } }
        if let health {
            Task.detached { _ = try? await onOwnThread { health.serve { self.healthState } } }
        }
        let audit = self.audit
        auditing.withLock { $0 = Task { await audit.flushRefusalsPeriodically() } }
        vault.start()
        keyholder?.start()
        recorder?.start()
        if let recordings = broker.recordings {
            retaining.withLock { $0 = Task { await recordings.enforceRetentionPeriodically() } }
        }
        workers.start()
        let deadline = ContinuousClock.now + readiness
        var ready = false
        while ContinuousClock.now < deadline {
            if vault.slots.first?.state == .running && workers.slots.contains(where: { $0.state == .running })
                && keyholder?.slots.first?.state ?? .running == .running && recorder?.slots.first?.state ?? .running == .running {
                ready = true
                break
            }
            await Wait.sleep(for: .milliseconds(20))
            if Task.isCancelled { return false }
        }
        if !ready {
            logger.critical("roles not running after \(readiness); accepting anyway")
        }
        self.ready.store(true, ordering: .releasing)
        for (listener, tls) in zip(listeners, tlsListeners) {
            Task.detached { _ = try? await onOwnThread { self.acceptLoop(listener, tls: tls) } }
            logger.info("listening", metadata: ["address": "\(listener.address)", "tls": "\(tls)"])
        }
        return true
    }

    /// Takes no new session, gives open connections up to `timeout` to finish (their clients
    /// may reconnect meanwhile: a dropped connection resumes here), then stops accepting,
    /// stops every role and waits until all are reaped (the vault's end hangs up every shell).
    /// With `sessions` (`ctl drain`: the host leaves a fleet), it waits for the sessions to
    /// end too, those whose clients are away included.
    public func drain(timeout: Duration, sessions: Bool = false) async {
        draining.store(true, ordering: .releasing)
        control?.draining.store(true, ordering: .releasing)
        let deadline = ContinuousClock.now + timeout
        var checked = ContinuousClock.now - .seconds(1), sessionsLeft = sessions
        while workers.openConnections > 0 || sessionsLeft, ContinuousClock.now < deadline, !drainCut.load(ordering: .acquiring) {
            await Wait.sleep(for: .milliseconds(50))
            // The vault lists every session to answer: once a second is enough for a drain.
            if sessions && ContinuousClock.now - checked >= .seconds(1) {
                checked = ContinuousClock.now
                // A vault that cannot answer holds nothing it could serve.
                sessionsLeft = ((try? await broker.sessions().count) ?? 0) > 0
            }
        }
        accepting.store(false, ordering: .releasing)
        for listener in listeners { listener.stop() }
        control?.close()
        logger.info("draining done", metadata: ["open_connections": "\(workers.openConnections)"])
        broker.beginStopping()
        await workers.shutdown()
        await workers.configuration.templates?.shutdown()
        await keyholder?.shutdown()
        await vault.shutdown()
        // After the vault: its last events have reached the recorder, which then ends every
        // recording still open.
        await broker.finishRecordings("the server stopped")
        await recorder?.shutdown()
        retaining.withLock { $0 }?.cancel()
        await brokering.withLock { $0 }?.value
        auditing.withLock { $0 }?.cancel()
        audit.flushRefusals()
        for listener in listeners { try? listener.descriptor.close() }
        // Balancers are told "draining" until everything has stopped.
        health?.listener.stop()
        try? health?.listener.descriptor.close()
    }

    /// What the health endpoint says now.
    var healthState: HealthEndpoint.State {
        if draining.load(ordering: .acquiring) || !accepting.load(ordering: .acquiring) { return .draining }
        if !ready.load(ordering: .acquiring) { return .starting }
        return workers.openConnections >= configuration.maxClients ? .full : .ready
    }

    /// `ctl drain`: stops as SIGTERM does (no new clients, open ones until they end or
    /// `seconds` pass, then every role stopped), with that deadline.
    func requestDrain(seconds: Double) {
        requestedDrainSeconds.withLock { $0 = seconds }
        kill(getpid(), SIGTERM)
    }

    /// The client's address as `ctl workers` shows it: HOST:PORT, or "unix" for a unix
    /// listener's client; nil when it has none (it reset the connection).
    static func peerName(_ client: FileDescriptor) -> String? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(client.rawValue, $0, &length) }
        }
        guard rc == 0 else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), port = [CChar](repeating: 0, count: 32)
        switch Int32(storage.ss_family) {
        case AF_UNIX: return "unix"
        case AF_INET, AF_INET6:
            let ok = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    getnameinfo($0, length, &host, socklen_t(host.count), &port, socklen_t(port.count), NI_NUMERICHOST | NI_NUMERICSERV)
                }
            }
            guard ok == 0 else { return "unknown" }
            let h = String(cString: host), p = String(cString: port)
            return storage.ss_family == sa_family_t(AF_INET6) ? "[\(h)]:\(p)" : "\(h):\(p)"
        default: return "unknown"
        }
    }

    /// EMFILE/ENFILE (and ENOBUFS/ENOMEM) back off, from 10 ms doubling to 1 s, and recover
    /// once descriptors are free again; the pending client stays in the backlog meanwhile.
    private func acceptLoop(_ listener: Listener, tls: Bool) {
        var backoffMilliseconds: UInt32 = 0
        while accepting.load(ordering: .acquiring) {
            let client: FileDescriptor
            do {
                client = try listener.accept()
                backoffMilliseconds = 0
            } catch {
                guard accepting.load(ordering: .acquiring) else { return }
                let code = error.errno.rawValue
                guard [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code) else {
                    logger.critical("accept failed; this listener stops", metadata: ["error": "\(error)"])
                    return
                }
                backoffMilliseconds = min(1000, max(10, backoffMilliseconds * 2))
                logger.warning("accept backing off", metadata: ["error": "\(error)", "delay_ms": "\(backoffMilliseconds)"])
                usleep(backoffMilliseconds * 1000)
                continue
            }
            if workers.openConnections >= configuration.maxClients {
                logger.warning("client refused with 503: --max-clients reached", metadata: [
                    "max_clients": "\(configuration.maxClients)", "refused": "\(capacityRefusals.count + 1)",
                ])
                capacityRefusals.refuse(client, logger: logger)
                continue
            }
            // A peer that has no address any more reset its connection before it was taken:
            // nothing to serve, and no source to count it against.
            guard let peer = Self.peerName(client) else {
                try? client.close()
                continue
            }
            guard let admitted = admission.admit(client, peer: peer) else { continue }
            Task {
                do {
                    let close = try await self.workers.dispatch(client, peer: peer, tls: tls,
                                                                newSessions: !self.draining.load(ordering: .acquiring),
                                                                trustedProxy: self.configuration.trustedProxies.contains(AuditTrail.host(of: peer)),
                                                                events: admitted.events)
                    admitted.enforceDeadline(close: close)
                } catch {
                    admitted.ended()
                    self.logger.error("client not handed to a worker", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
