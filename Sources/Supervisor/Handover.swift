import Logging
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a starting supervisor inherits: listening sockets, and the sessions (each one's PTY
/// master and kept ring) and shells an earlier supervisor kept, so that a restart or an
/// upgrade ends no shell. Two senders, one set of names:
/// - systemd: socket activation and the service's fd store hand descriptors 3… over with
///   `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`; the store holds what the supervisor gave
///   it with `FDSTORE=1` (`SessionKeeper`).
/// - `cloister ctl upgrade`: the supervisor execs the new binary in its own process, with
///   `CLOISTER_HANDOVER` (the format) and `CLOISTER_HANDOVER_FDS` naming each descriptor it
///   left open (`fd:name,…`), and the shells it reaps in `CLOISTER_HANDOVER_ORPHANS`.
///
/// Names: `session.ID.SHELL.master` and `session.ID.SHELL.ring` for a kept session,
/// `credential` for a memory file holding the credential the vault checks (so that a one-time
/// credential outlives an upgrade); any other name is a listening socket.
public struct Handover: Sendable {
    public struct KeptSession: Sendable {
        public var id: String
        public var shell: Int32
        public var master: FileDescriptor
        public var ring: FileDescriptor
    }

    public var listeners: [Listener] = []
    public var sessions: [KeptSession] = []
    /// Shells whose nursery died, now this process's children, with their ends if reaped.
    public var orphans: [(pid: pid_t, exit: Exit?)] = []
    /// The credential the server before this one checked (an upgrade only).
    public var credential: [UInt8]?
    /// The running vault's generation before the handover.
    public var vaultGeneration = 0
    /// The build that handed over, after an upgrade.
    public var upgradedFrom: String?
    /// What was inherited but not understood (closed), for the log.
    public var ignored: [String] = []

    public init() {}

    static func sessionName(_ id: String, shell: Int32, _ part: String) -> String { "session.\(id).\(shell).\(part)" }

    public struct Refusal: Error, CustomStringConvertible {
        public var description: String
    }

    /// What this process inherited, or an empty handover. The variables are removed so that
    /// nothing started later mistakes them for its own; every descriptor taken is made
    /// close-on-exec.
    public static func inherited() throws(Refusal) -> Handover {
        let variables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "CLOISTER_HANDOVER", "CLOISTER_HANDOVER_FDS",
                         "CLOISTER_HANDOVER_ORPHANS", "CLOISTER_HANDOVER_GENERATION", "CLOISTER_HANDOVER_FROM"]
        let env = Dictionary(uniqueKeysWithValues: variables.compactMap { name in getenv(name).map { (name, String(cString: $0)) } })
        for name in variables { unsetenv(name) }
        var named: [(fd: Int32, name: String)] = []
        var handover = Handover()
        if let format = env["CLOISTER_HANDOVER"] {
            guard format == "\(StateFormats.handover)" else {
                throw Refusal(description: "CLOISTER_HANDOVER: handed over in format \(format); this build takes format \(StateFormats.handover)")
            }
            for entry in (env["CLOISTER_HANDOVER_FDS"] ?? "").split(separator: ",") {
                guard let colon = entry.firstIndex(of: ":"), let fd = Int32(entry[..<colon]), fd > 2 else {
                    throw Refusal(description: "CLOISTER_HANDOVER_FDS: \"\(entry.prefix(80))\" is not fd:name")
                }
                named.append((fd, String(entry[entry.index(after: colon)...])))
            }
            for entry in (env["CLOISTER_HANDOVER_ORPHANS"] ?? "").split(separator: ",") {
                guard let orphan = parseOrphan(entry) else {
                    throw Refusal(description: "CLOISTER_HANDOVER_ORPHANS: \"\(entry.prefix(40))\" is not pid, pid=sCODE or pid=kSIGNAL")
                }
                handover.orphans.append(orphan)
            }
            handover.vaultGeneration = env["CLOISTER_HANDOVER_GENERATION"].flatMap { Int($0) } ?? 0
            handover.upgradedFrom = env["CLOISTER_HANDOVER_FROM"]
        } else if let pid = env["LISTEN_PID"].flatMap({ pid_t($0) }), pid == getpid(),
                  let count = env["LISTEN_FDS"].flatMap({ Int32($0) }), count > 0 {
            let names = env["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
            for (i, fd) in (3..<(3 + count)).enumerated() { named.append((fd, i < names.count ? names[i] : "unknown")) }
        }
        do throws(Refusal) {
            try handover.take(named)
        } catch {
            handover.closeAll()
            throw error
        }
        return handover
    }

    private static func parseOrphan(_ entry: Substring) -> (pid: pid_t, exit: Exit?)? {
        let parts = entry.split(separator: "=", maxSplits: 1)
        guard let pid = pid_t(parts[0]), pid > 1 else { return nil }
        guard parts.count == 2 else { return (pid, nil) }
        let how = parts[1].first, value = Int32(parts[1].dropFirst())
        switch (how, value) {
        case ("s", let code?): return (pid, .status(code))
        case ("k", let signal?): return (pid, .signal(signal))
        default: return nil
        }
    }

    private mutating func take(_ named: [(fd: Int32, name: String)]) throws(Refusal) {
        var halves: [String: (shell: Int32, master: FileDescriptor?, ring: FileDescriptor?)] = [:]
        for (fd, name) in named {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let parts = name.split(separator: ".", omittingEmptySubsequences: false)
            if parts.count == 4, parts[0] == "session", let shell = Int32(parts[2]), ["master", "ring"].contains(parts[3]) {
                let id = String(parts[1])
                var half = halves[id] ?? (shell, nil, nil)
                let descriptor = FileDescriptor(rawValue: fd)
                if parts[3] == "master" { half.master = descriptor } else { half.ring = descriptor }
                halves[id] = half
            } else if name == "credential" {
                defer { close(fd) }
                lseek(fd, 0, SEEK_SET)
                guard let bytes = try? FileDescriptor(rawValue: fd).readToEnd(limit: LinkLimits.token) else {
                    throw Refusal(description: "the handed-over credential (descriptor \(fd)) cannot be read")
                }
                credential = bytes
            } else {
                do {
                    listeners.append(try Listener(adopting: fd))
                } catch {
                    throw Refusal(description: "LISTEN_FDS: descriptor \(fd) (\(name)): \(error)")
                }
            }
        }
        for (id, half) in halves.sorted(by: { $0.key < $1.key }) {
            guard let master = half.master, let ring = half.ring else {
                ignored.append("session \(id): only its \(half.master == nil ? "ring" : "terminal") was handed over")
                try? half.master?.close()
                try? half.ring?.close()
                continue
            }
            sessions.append(KeptSession(id: id, shell: half.shell, master: master, ring: ring))
        }
    }

    func closeAll() {
        for listener in listeners { try? listener.descriptor.close() }
        for session in sessions {
            try? session.master.close()
            try? session.ring.close()
        }
    }
}
