import Circuits
import Foundation
import Logging
import Processes
import Sandbox
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The control socket: a unix stream socket, mode 0600, that answers one request per
/// connection. Only a peer with this process's uid, or root, is served (SO_PEERCRED).
///
/// Protocol (version 1): the client sends one line, `status` or `workers`, and reads one
/// JSON document until the server closes. Errors are `{"version": 1, "error": "…"}`.
public final class ControlServer: Sendable {
    public static let protocolVersion = 1

    public struct Status: Codable, Sendable {
        public var version: Int
        public var pid: Int32
        public var workers: Int
        public var running: Int
        public var degraded: Bool
        public var connections: Int
        public var vault: WorkerReport?
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
        /// From /proc/PID/task/*/status: every thread confined (seccomp filter, no_new_privs,
        /// no effective capability), and the values of the main thread.
        public var sandboxConfined: Bool?
        public var seccomp: Int?
        public var noNewPrivileges: Bool?
        public var capEff: String?
    }

    public struct Workers: Codable, Sendable {
        public var version: Int
        public var workers: [WorkerReport]
    }

    private let listener: UnixSocket.Listener
    private let pool: RolePool
    private let vault: RolePool?
    private let logger: Logger
    private let stopped = Mutex(false)

    public init(path: String, pool: RolePool, vault: RolePool? = nil, logger: Logger) throws(SystemCallError) {
        listener = try UnixSocket.listen(path: path, kind: .stream)
        self.pool = pool
        self.vault = vault
        self.logger = logger
        Task.detached { [self] in _ = try? await onOwnThread { self.serve() } }
    }

    public var path: String { listener.path }

    /// Stops serving and removes the socket file. The serving thread closes the listening
    /// descriptor itself on its way out, so the number is never reused under its `accept`.
    public func close() {
        stopped.withLock { $0 = true }
        shutdown(listener.descriptor.rawValue, Int32(SHUT_RDWR))
        unlink(listener.path)
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
        guard peer.uid == getuid() || peer.uid == 0 else {
            logger.warning("control connection refused", metadata: ["peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)"])
            reply(connection, error: "permission denied: uid \(peer.uid) is neither \(getuid()) nor root")
            return
        }
        switch String(decoding: request, as: UTF8.self).trimmingCharacters(in: .whitespaces) {
        case "status":
            let workers = pool.slots
            reply(connection, Status(version: Self.protocolVersion, pid: getpid(), workers: workers.count,
                                     running: workers.filter { $0.state == .running }.count,
                                     degraded: pool.isDegraded || vault?.isDegraded == true,
                                     connections: workers.reduce(0) { $0 + $1.connections },
                                     vault: vault?.slots.first.map(Self.report)))
        case "workers":
            reply(connection, Workers(version: Self.protocolVersion, workers: pool.slots.map(Self.report)))
        case let other:
            reply(connection, error: "unknown request \"\(other.prefix(64))\" (expected status or workers)")
        }
    }

    static func report(_ w: RolePool.SlotStatus) -> WorkerReport {
        let sandbox = w.pid.flatMap { SandboxStatus.read(pid: $0) }
        let main = sandbox?.threads.first { $0.tid == w.pid }
        return WorkerReport(
            id: w.id, pid: w.pid, state: w.state.rawValue,
            uptimeSeconds: w.startedAt.map { seconds(ContinuousClock.now - $0) }, restarts: w.restarts,
            lastHeartbeatMilliseconds: w.lastHeartbeat.map { seconds($0) * 1000 }, violations: w.violations,
            connections: w.connections,
            sandboxConfined: sandbox?.isConfined, seccomp: main?.seccomp, noNewPrivileges: main?.noNewPrivileges,
            capEff: main.map { String(format: "%016llx", $0.effective) })
    }

    private static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
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
