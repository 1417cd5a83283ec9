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

/// `cloister serve`: owns the listening sockets and the control socket, runs the vault (with
/// its nursery) and the worker pool, brokers a transport between every worker and the vault,
/// and hands each accepted client socket to the least-loaded worker. It never reads a client
/// byte.
public final class Server: Sendable {
    public struct Configuration: Sendable {
        public var listen: [String] = ["127.0.0.1:7681"]
        public var workers = 2
        /// ttyd's AuthToken form of the credential (base64 of "user:password"); nil lets
        /// everyone in.
        public var credential: [UInt8]?
        public var checkOrigin = true
        public var maxClients = 1024
        public var controlSocket: String?
        public var workerPolicy: String
        public var vaultPolicy: String
        /// Whom the shells run as, when started as root.
        public var user: String?
        public var group: String?
        public var command: [String]
        public var login: Bool
        public var executable = ChildProcess.currentExecutable
        public var mode: EnforcementMode = .report
        public var tuning: (@Sendable (inout WorkerPool.Configuration) -> Void)?

        public init(workerPolicy: String, vaultPolicy: String, command: [String], login: Bool) {
            self.workerPolicy = workerPolicy
            self.vaultPolicy = vaultPolicy
            self.command = command
            self.login = login
        }
    }

    private struct Shared {
        var vault: Transport<UInt16>?
        var accepting = true
        var credential: [UInt8]?
    }

    public let configuration: Configuration
    public let listeners: [Listener]
    public let workers: WorkerPool
    public let vault: WorkerPool
    private let logger: Logger
    private let shared = Mutex(Shared())
    private let control: ControlServer?

    /// Binds every listening and control socket; nothing runs until `start`. Throws (having
    /// closed what it opened) if any cannot be bound.
    /// `inherited` are listening sockets taken over from systemd; they are served along
    /// with those `configuration.listen` names.
    public init(configuration c: Configuration, inherited: [Listener] = [], logger: Logger) throws {
        configuration = c
        self.logger = logger
        var bound: [Listener] = inherited
        do {
            for address in c.listen { bound.append(try Listener(address)) }
        } catch {
            for listener in bound { try? listener.descriptor.close() }
            throw error
        }
        listeners = bound
        var workerConfiguration = WorkerPool.Configuration(count: c.workers, executable: c.executable, policy: c.workerPolicy)
        workerConfiguration.mode = c.mode
        workerConfiguration.arguments = c.checkOrigin ? [] : ["--no-check-origin"]
        c.tuning?(&workerConfiguration)
        var vaultConfiguration = WorkerPool.Configuration(count: 1, executable: c.executable, policy: c.vaultPolicy)
        vaultConfiguration.role = "vault"
        vaultConfiguration.intent = RoleIntent.supervisorVault
        vaultConfiguration.mode = c.mode
        c.tuning?(&vaultConfiguration)
        // The hooks need the server, which needs the pools: they reach it through a box.
        let box = Box()
        workers = WorkerPool(configuration: workerConfiguration, logger: logger) { id, transport, _ in
            try await box.server?.workerStarted(id, transport)
            return nil
        }
        vault = WorkerPool(configuration: vaultConfiguration, logger: logger) { _, transport, _ in
            try await box.server?.vaultStarted(transport)
        }
        let (workerPool, vaultPool) = (workers, vault)
        do {
            control = try c.controlSocket.map { try ControlServer(path: $0, pool: workerPool, vault: vaultPool, logger: logger) }
        } catch {
            for listener in bound { try? listener.descriptor.close() }
            throw error
        }
        shared.withLock { $0.credential = c.credential }
        box.server = self
    }

    /// SIGHUP: the new credential applies to every check from now on (open sessions stay),
    /// and each worker is replaced, as soon as it has no client, by one started under the
    /// profile as it is now. The vault keeps its sessions; a new vault profile applies when
    /// the vault is next started.
    public func reload(credential: [UInt8]?) async {
        let vault: Transport<UInt16>? = shared.withLock { s in
            s.credential = credential
            return s.vault
        }
        if let vault {
            do {
                try await Self.tell(vault, .configure(credential: credential))
            } catch {
                logger.error("new credential not delivered to the vault", metadata: ["error": "\(error)"])
            }
        }
        workers.renew()
        logger.info("reloaded: credential replaced, workers renewed as their clients leave")
    }

    private final class Box: @unchecked Sendable {
        // Set once in init before any hook can run.
        var server: Server?
    }

    /// Starts the vault and the workers, waits until the vault and at least one worker are
    /// running (or `readiness` has passed), then starts accepting: a client that arrives
    /// earlier waits in the backlog instead of finding no worker. Returns false, accepting
    /// nothing, when cancelled meanwhile (the server is to stop: `drain` still follows).
    @discardableResult
    public func start(readiness: Duration = .seconds(30)) async -> Bool {
        vault.start()
        workers.start()
        let deadline = ContinuousClock.now + readiness
        var ready = false
        while ContinuousClock.now < deadline {
            if vault.workers.first?.state == .running && workers.workers.contains(where: { $0.state == .running }) {
                ready = true
                break
            }
            do { try await Task.sleep(for: .milliseconds(20)) } catch { return false }
        }
        if !ready {
            logger.critical("roles not running after \(readiness); accepting anyway")
        }
        for listener in listeners {
            Task.detached { _ = try? await onOwnThread { self.acceptLoop(listener) } }
            logger.info("listening", metadata: ["address": "\(listener.address)"])
        }
        return true
    }

    /// Stops accepting, gives open connections up to `timeout` to finish, then stops every
    /// role and waits until all are reaped (the vault's end hangs up every shell).
    public func drain(timeout: Duration) async {
        shared.withLock { $0.accepting = false }
        for listener in listeners { listener.stop() }
        control?.close()
        let deadline = ContinuousClock.now + timeout
        while workers.openConnections > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.info("draining done", metadata: ["open_connections": "\(workers.openConnections)"])
        await workers.shutdown()
        await vault.shutdown()
        for listener in listeners { try? listener.descriptor.close() }
    }

    private var accepting: Bool { shared.withLock { $0.accepting } }

    /// EMFILE/ENFILE (and ENOBUFS/ENOMEM) back off, from 10 ms doubling to 1 s, and recover
    /// once descriptors are free again; the pending client stays in the backlog meanwhile.
    private func acceptLoop(_ listener: Listener) {
        var backoffMilliseconds: UInt32 = 0
        while accepting {
            let client: FileDescriptor
            do {
                client = try listener.accept()
                backoffMilliseconds = 0
            } catch {
                guard accepting else { return }
                let code = error.errno?.rawValue ?? 0
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
                logger.warning("client refused: --max-clients reached", metadata: ["max_clients": "\(configuration.maxClients)"])
                try? client.close()
                continue
            }
            Task {
                do {
                    try await self.workers.dispatch(client)
                } catch {
                    self.logger.error("client not handed to a worker", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    // MARK: Links between workers and the vault

    private func workerStarted(_ id: Int, _ transport: Transport<UInt16>) async throws {
        guard let vault = shared.withLock({ $0.vault }) else { return }  // linked when the vault starts
        try await link(worker: id, transport, vault: vault)
    }

    /// Starts the nursery, configures the vault, links the nursery and every running worker;
    /// returns the teardown that stops the nursery. If the nursery dies, the vault is closed
    /// too, and both are started again.
    private func vaultStarted(_ transport: Transport<UInt16>) async throws -> (@Sendable () async -> Void) {
        let (vaultEnd, nurseryEnd) = try SocketCalls.socketPair(.seqpacket)
        defer { try? vaultEnd.close() }
        var arguments = ["role", "nursery"]
        if let user = configuration.user { arguments += ["--user", user] }
        if let group = configuration.group { arguments += ["--group", group] }
        if configuration.login { arguments.append("--login") }
        let nursery: ChildProcess
        do {
            defer { try? nurseryEnd.close() }
            nursery = try ChildProcess.spawn(configuration.executable, arguments: arguments + ["--"] + configuration.command,
                                             descriptors: [nurseryEnd], environment: Self.nurseryEnvironment(),
                                             ownProcessGroup: true)
        }
        var log = logger
        log[metadataKey: "nursery"] = "\(nursery.pid)"
        let tearingDown = Atomic<Bool>(false)
        let watcher = Task {
            let termination = try? await onOwnThread { try nursery.wait() }
            if !tearingDown.load(ordering: .acquiring) {
                log.error("nursery ended; restarting the vault with it",
                          metadata: ["termination": "\(termination.map { "\($0)" } ?? "unknown")"])
                transport.close()
            }
        }
        let teardown: @Sendable () async -> Void = {
            self.shared.withLock { if $0.vault === transport { $0.vault = nil } }
            tearingDown.store(true, ordering: .releasing)
            try? nursery.signal(SIGKILL)
            await watcher.value
        }
        do {
            try await Self.tell(transport, .configure(credential: shared.withLock { $0.credential }))
            try await Self.tell(transport, .nurseryLink, descriptor: vaultEnd)
            shared.withLock { $0.vault = transport }
            for (id, worker) in workers.runningTransports {
                try? await link(worker: id, worker, vault: transport)
            }
        } catch {
            await teardown()
            throw error
        }
        return teardown
    }

    static func nurseryEnvironment() -> [String: String] {
        guard let lang = getenv("LANG") else { return [:] }
        return ["LANG": String(cString: lang)]
    }

    /// One socketpair: one end to the vault, the other to the worker.
    private func link(worker id: Int, _ worker: Transport<UInt16>, vault: Transport<UInt16>) async throws {
        let (vaultEnd, workerEnd) = try SocketCalls.socketPair(.seqpacket)
        defer {
            try? vaultEnd.close()
            try? workerEnd.close()
        }
        try await Self.tell(vault, .workerLink(worker: UInt32(id)), descriptor: vaultEnd)
        try await Self.tell(worker, .vaultLink(worker: UInt32(id)), descriptor: workerEnd)
    }

    /// A one-message conversation, waited on until the role has acted on it.
    private static func tell(_ transport: Transport<UInt16>, _ message: RoleMessage, descriptor: FileDescriptor? = nil) async throws {
        let circuit = try transport.open()
        try await circuit.send(message.encoded, descriptors: descriptor.map { [$0] } ?? [], end: true)
        while !(try await circuit.receive()).isEnd {}
    }
}
