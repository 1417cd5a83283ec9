import Circuits
import FoundationEssentials
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

/// The control socket: a unix stream socket that answers one request per connection. Only a
/// peer with this process's uid, or root, is served (SO_PEERCRED); with an admin group, the
/// socket is mode 0660 in that group and a peer with it as primary or supplementary group
/// (SO_PEERGROUPS) is served too. Otherwise the socket is mode 0600.
///
/// Protocol (version 1): the client sends one line (`status`, `workers`, `sessions`, `recordings`,
/// `upgrade`, `kick SESSION [CLIENT]` or `hangup SESSION`) and reads one JSON document until the server
/// closes. Errors are `{"version": 1, "error": "…"}`.
public final class ControlServer: Sendable {
    public static let protocolVersion = 1

    public struct Status: Codable, Sendable {
        public var version: Int
        public var pid: Int32
        public var workers: Int
        public var running: Int
        public var degraded: Bool
        public var connections: Int
        /// Clients answered 503 for being over --max-clients.
        public var refusedAtCapacity: Int
        /// Unauthenticated connections now, and what admission did since start.
        public var admission: AdmissionReport?
        public var vault: WorkerReport?
        /// With `--record`: the recorder.
        public var recorder: WorkerReport?
        public var keeping: Keeping?
        /// The running binary's version, label and build id; the one it replaced by upgrade.
        public var build: String?
        public var upgradedFrom: String?
        /// A drain is under way (`ctl drain`, a stop): no new session is taken.
        public var draining: Bool?
    }

    /// Admission of unauthenticated connections (`AdmissionControl`).
    public struct AdmissionReport: Codable, Sendable, Equatable {
        /// START:RATE:FULL.
        public var limits: String
        public var perSource: Int
        public var deadlineSeconds: Double
        public var unauthenticated: Int
        public var admitted: UInt64
        public var authenticated: UInt64
        /// By reason: full, early, source, deadline.
        public var refused: [String: UInt64]
    }

    /// Sessions that outlive the vault (`SessionKeeper`).
    public struct Keeping: Codable, Sendable {
        public var vaultGeneration: Int
        public var sessionsKept: Int
        public var sessionsAdopted: UInt64
        public var sessionsSetAside: UInt64
    }

    public struct WorkerReport: Codable, Sendable {
        public var id: Int
        public var pid: Int32?
        public var state: String
        public var uptimeSeconds: Double?
        public var restarts: Int
        public var lastHeartbeatMilliseconds: Double?
        public var violations: Int
        /// Clients handed to the worker and not yet gone.
        public var connections: Int
        /// With --isolation client: the address of the one client the worker serves; nil for
        /// a spare and in a pool.
        public var client: String?
        /// With TLS: the signatures the keyholder made for this worker's handshakes, and those
        /// it refused (over the worker's rate, or not a signing request).
        public var signatures: UInt64?
        public var signaturesRefused: UInt64?
        /// From /proc/PID/task/*/status: every thread confined (seccomp filter, no_new_privs,
        /// no effective capability), and the values of the main thread.
        public var sandboxConfined: Bool?
        public var seccomp: Int?
        public var noNewPrivileges: Bool?
        public var capEff: String?
        /// What the role counted, from its last heartbeat reply (a worker's: `WorkerCounter`
        /// names); nil before the first.
        public var counters: [String: UInt64]?
    }

    public struct Workers: Codable, Sendable {
        public var version: Int
        public var workers: [WorkerReport]
    }

    public struct SessionReport: Codable, Sendable {
        public struct Client: Codable, Sendable {
            public var client: UInt32
            public var worker: UInt32
            /// "writer" or "viewer".
            public var mode: String
            /// Output bytes the session has that this client has not been sent yet.
            public var lagBytes: UInt64
        }
        public var id: String
        public var command: String
        public var shellPid: Int32
        public var ageSeconds: UInt32
        public var clients: [Client]
        public var bytesOut: UInt64
        public var ringBytes: UInt32
        public var ringCapacity: UInt32
        public var slowConsumerEvents: UInt32
        public var ignoredInputs: UInt32
        /// Vaults that took the session over from one that ended.
        public var adoptions: UInt32
    }

    public struct Upgrading: Codable, Sendable {
        public var version: Int
        public var upgrading: Bool
        /// The new binary's build.
        public var to: String
    }

    public struct Sessions: Codable, Sendable {
        public var version: Int
        public var sessions: [SessionReport]
    }

    /// `ctl recordings`: every recording in the directory, checked.
    public struct Recordings: Codable, Sendable {
        public var version: Int
        public var directory: String
        public var recordings: [RecordingDirectory.Entry]
    }

    public struct Done: Codable, Sendable {
        public var version: Int
        public var found: Bool
    }

    public struct Draining: Codable, Sendable {
        public var version: Int
        public var draining: Bool
        /// Seconds the open connections are given before every role is stopped.
        public var deadlineSeconds: Double
    }

    private let listener: UnixSocket.Listener
    private let pool: RolePool
    private let vault: RolePool?
    private let sessions: SessionControl?
    private let refusals: CapacityRefusals?
    private let admission: AdmissionControl?
    private let logger: Logger
    /// Every action but reading (status, workers, sessions) is audited, with the caller.
    private let audit: AuditTrail?
    /// Checks the binary an upgrade would start (`Server.checkUpgrade`): its build, or why not.
    let upgradeCheck = Mutex<(@Sendable () async throws -> String)?>(nil)
    /// Starts the server's drain with a deadline in seconds (`ctl drain`).
    let drainRequest = Mutex<(@Sendable (Double) -> Void)?>(nil)
    /// Set when the server begins to drain: reading and session actions go on, a second
    /// drain or an upgrade is refused.
    let draining = Atomic<Bool>(false)
    private let stopped = Mutex(false)

    /// A control socket for `pool` (and `vault`) alone, answering no session requests.
    public convenience init(path: String, pool: RolePool, vault: RolePool? = nil, adminGroup: gid_t? = nil,
                            logger: Logger) throws(SystemCallError) {
        try self.init(path: path, pool: pool, vault: vault, sessions: nil, refusals: nil, admission: nil, adminGroup: adminGroup, logger: logger)
    }

    init(path: String, pool: RolePool, vault: RolePool?, sessions: SessionControl?, refusals: CapacityRefusals?,
         admission: AdmissionControl?, adminGroup: gid_t?, audit: AuditTrail? = nil, logger: Logger) throws(SystemCallError) {
        if let adminGroup {
            listener = try UnixSocket.listen(path: path, kind: .stream, permissions: [.ownerRead, .ownerWrite, .groupRead, .groupWrite])
            // The group first, then the mode bind's umask narrowed: never wider than meant.
            guard chown(path, uid_t.max, adminGroup) == 0, chmod(path, 0o660) == 0 else {
                let error = lastError("chown/chmod", detail: "\(path) to group \(adminGroup), mode 0660")
                listener.close()
                throw error
            }
        } else {
            listener = try UnixSocket.listen(path: path, kind: .stream)
        }
        self.adminGroup = adminGroup
        self.path = path
        self.pool = pool
        self.refusals = refusals
        self.admission = admission
        self.vault = vault
        self.sessions = sessions
        self.audit = audit
        self.logger = logger
        Task.detached { [self] in _ = try? await onOwnThread { self.serve() } }
    }

    public let path: String
    private let adminGroup: gid_t?

    /// Stops serving and removes the socket file. The serving thread closes the listening
    /// descriptor itself on its way out, so the number is never reused under its `accept`.
    public func close() {
        stopped.withLock { $0 = true }
        shutdown(listener.descriptor.rawValue, Int32(SHUT_RDWR))
        unlink(path)
    }

    private func serve() {
        defer { try? listener.descriptor.close() }
        while !stopped.withLock({ $0 }) {
            guard let connection = try? listener.accept() else { return }
            handle(connection)
            try? connection.close()
        }
    }

    private func handle(_ connection: FileDescriptor) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(connection.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard let peer = try? UnixSocket.Listener.peerCredentials(connection) else { return }
        // The request is read even from a peer about to be refused: closing with its bytes
        // unread would reset the connection before it sees why.
        var request: [UInt8] = []
        var byte: UInt8 = 0
        while request.count < 64, read(connection.rawValue, &byte, 1) == 1, byte != UInt8(ascii: "\n") {
            request.append(byte)
        }
        guard peer.uid == getuid() || peer.uid == 0 || isAdmin(connection, gid: peer.gid) else {
            logger.warning("control connection refused", metadata: ["peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)"])
            audit?.record(AuditRecord(.control, [("action", String(decoding: request.prefix(32), as: UTF8.self)), ("caller_uid", "\(peer.uid)"),
                                                 ("caller_pid", "\(peer.pid)"), ("outcome", "refused: permission denied")]), vouchedBy: "supervisor")
            let group = adminGroup.map { " nor in group \($0)" } ?? ""
            reply(connection, error: "permission denied: uid \(peer.uid) is neither \(getuid()) nor root\(group)")
            return
        }
        let parsed: ControlRequest
        switch ControlRequest.parse(request) {
        case .success(let request): parsed = request
        case .failure(let problem): return reply(connection, error: problem.description)
        }
        func audited(_ action: String, _ target: [(String, String)], outcome: String) {
            audit?.record(AuditRecord(.control, [("action", action), ("caller_uid", "\(peer.uid)"), ("caller_pid", "\(peer.pid)")]
                                                + target + [("outcome", outcome)]), vouchedBy: "supervisor")
        }
        switch parsed {
        case .status:
            let workers = pool.slots
            reply(connection, Status(version: Self.protocolVersion, pid: getpid(), workers: workers.count,
                                     running: workers.filter { $0.state == .running }.count,
                                     degraded: pool.isDegraded || vault?.isDegraded == true,
                                     connections: workers.reduce(0) { $0 + $1.connections },
                                     refusedAtCapacity: refusals?.count ?? 0, admission: admission?.report,
                                     vault: vault?.slots.first.map(Self.report),
                                     recorder: sessions?.broker.recorder?.slots.first.map(Self.report), keeping: sessions?.keeping,
                                     build: sessions?.build, upgradedFrom: sessions?.upgradedFrom,
                                     draining: draining.load(ordering: .acquiring)))
        case .workers:
            let signed = sessions?.signatures() ?? [:]
            reply(connection, Workers(version: Self.protocolVersion, workers: pool.slots.map { slot in
                var report = Self.report(slot)
                if let counts = signed[slot.id] { (report.signatures, report.signaturesRefused) = (counts.signed, counts.refused) }
                return report
            }))
        // Each pattern takes its own condition.
        case .upgrade where draining.load(ordering: .acquiring), .drain where draining.load(ordering: .acquiring):
            reply(connection, error: "the server is draining")
        case .upgrade:
            guard let check = upgradeCheck.withLock({ $0 }) else { return reply(connection, error: "this server cannot be upgraded") }
            do {
                let build = try SessionControl.blocking(timeout: 15) { try await check() }
                reply(connection, Upgrading(version: Self.protocolVersion, upgrading: true, to: build))
                audited("upgrade", [("to", build)], outcome: "started")
                logger.notice("upgrade requested", metadata: ["peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)", "to": "\(build)"])
                // The supervisor's signal loop upgrades, as on SIGUSR2 (which checks again).
                kill(getpid(), SIGUSR2)
            } catch {
                logger.error("upgrade refused", metadata: ["error": "\(error)"])
                audited("upgrade", [], outcome: "refused: \(error)")
                reply(connection, error: "upgrade refused: \(error)")
            }
        case .drain(let seconds):
            guard let drain = drainRequest.withLock({ $0 }) else { return reply(connection, error: "this server cannot be drained from here") }
            audited("drain", [("deadline_seconds", "\(seconds)")], outcome: "started")
            logger.notice("drain requested", metadata: ["peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)", "deadline_seconds": "\(seconds)"])
            reply(connection, Draining(version: Self.protocolVersion, draining: true, deadlineSeconds: seconds))
            drain(seconds)
        case .recordings:
            guard let recordings = sessions?.broker.recordings else { return reply(connection, error: "this server does not record (no --record)") }
            reply(connection, Recordings(version: Self.protocolVersion, directory: recordings.path, recordings: recordings.list()))
        case .sessions, .kick, .hangUp:
            do {
                switch parsed {
                case .kick(let session, let client):
                    let found = try sessionControl().kick(session, client: client)
                    audited("kick", [("session", session), ("client", client.map { "\($0)" } ?? "all")], outcome: found ? "done" : "not found")
                    reply(connection, Done(version: Self.protocolVersion, found: found))
                case .hangUp(let session):
                    let found = try sessionControl().hangUp(session)
                    audited("hangup", [("session", session)], outcome: found ? "done" : "not found")
                    reply(connection, Done(version: Self.protocolVersion, found: found))
                default:
                    let list = try sessionControl().list()
                    let command = sessions?.command ?? ""
                    reply(connection, Sessions(version: Self.protocolVersion, sessions: list.map { Self.report($0, command: command) }))
                }
            } catch {
                reply(connection, error: "\(error)")
            }
        }
    }

    /// Whether the peer has the admin group, as its primary group or a supplementary one.
    private func isAdmin(_ connection: FileDescriptor, gid: gid_t) -> Bool {
        guard let adminGroup else { return false }
        if gid == adminGroup { return true }
        return (try? UnixSocket.Listener.peerGroups(connection))?.contains(adminGroup) ?? false
    }

    private struct NoSessions: Error, CustomStringConvertible {
        var description: String { "this server keeps no sessions" }
    }

    private func sessionControl() throws -> SessionControl {
        guard let sessions else { throw NoSessions() }
        return sessions
    }

    static func report(_ s: SessionSummary, command: String) -> SessionReport {
        SessionReport(id: s.id, command: command, shellPid: s.shell, ageSeconds: s.ageSeconds,
                      clients: s.clients.map { .init(client: $0.client, worker: $0.worker, mode: $0.writer ? "writer" : "viewer", lagBytes: $0.lag) },
                      bytesOut: s.bytesOut, ringBytes: s.ringHeld, ringCapacity: s.ringCapacity,
                      slowConsumerEvents: s.slowConsumerEvents, ignoredInputs: s.ignored, adoptions: s.adoptions)
    }

    static func report(_ w: RolePool.SlotStatus) -> WorkerReport {
        let sandbox = w.pid.flatMap { SandboxStatus.read(pid: $0) }
        let main = sandbox?.threads.first { $0.tid == w.pid }
        return WorkerReport(
            id: w.id, pid: w.pid, state: w.state.rawValue,
            uptimeSeconds: w.startedAt.map { (ContinuousClock.now - $0).inSeconds }, restarts: w.restarts,
            lastHeartbeatMilliseconds: w.lastHeartbeat.map { $0.inSeconds * 1000 }, violations: w.violations,
            connections: w.connections, client: w.client,
            sandboxConfined: sandbox?.isConfined, seccomp: main?.seccomp, noNewPrivileges: main?.noNewPrivileges,
            capEff: main.map { hex16($0.effective) },
            counters: w.counters.isEmpty ? nil : Dictionary(uniqueKeysWithValues: zip(WorkerCounter.allCases.map { "\($0)" }, w.counters)))
    }

    /// As /proc prints capability sets: 16 lower-case hex digits.
    private static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }

    private func reply<T: Encodable>(_ connection: FileDescriptor, _ value: T) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        guard let data = try? encoder.encode(value) else { return }
        _ = try? (data + Data("\n".utf8)).withUnsafeBytes { try connection.writeAll($0) }
    }

    private func reply(_ connection: FileDescriptor, error: String) {
        struct Failure: Encodable { var version: Int; var error: String }
        reply(connection, Failure(version: Self.protocolVersion, error: error))
    }
}

/// One control request: a line of at most 64 bytes from a local peer.
public enum ControlRequest: Equatable, Sendable {
    case status, workers, sessions, upgrade, recordings
    /// Stop as on SIGTERM, giving open connections at most this many seconds.
    case drain(seconds: Double)
    case kick(session: String, client: UInt32?)
    case hangUp(session: String)

    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ bytes: [UInt8]) -> Result<ControlRequest, Problem> {
        let words = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        let line = words.joined(separator: " ")
        // A session id the vault never issues: said here, and never sent to the vault.
        if ["kick", "hangup"].contains(words.first), words.count >= 2, words[1].utf8.count > LinkLimits.sessionField {
            return .failure(Problem(description: "\"\(words[1].prefix(16))…\" is not a session id (at most \(LinkLimits.sessionField) bytes)"))
        }
        switch (words.first, words.count) {
        case ("status", 1): return .success(.status)
        case ("workers", 1): return .success(.workers)
        case ("sessions", 1): return .success(.sessions)
        case ("upgrade", 1): return .success(.upgrade)
        case ("recordings", 1): return .success(.recordings)
        case ("kick", 2): return .success(.kick(session: words[1], client: nil))
        case ("kick", 3):
            guard let client = UInt32(words[2]) else { return .failure(Problem(description: "\"\(words[2].prefix(16))\" is not a client number")) }
            return .success(.kick(session: words[1], client: client))
        case ("hangup", 2): return .success(.hangUp(session: words[1]))
        case ("drain", 2):
            guard let seconds = Double(words[1]), seconds.isFinite, (0...604_800).contains(seconds) else {
                return .failure(Problem(description: "\"\(words[1].prefix(16))\" is not a number of seconds between 0 and 604800"))
            }
            return .success(.drain(seconds: seconds))
        default:
            return .failure(Problem(description: "unknown request \"\(line.prefix(64))\" (expected status, workers, sessions, recordings, upgrade, drain SECONDS, kick SESSION [CLIENT] or hangup SESSION)"))
        }
    }
}
