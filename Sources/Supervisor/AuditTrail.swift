import FoundationEssentials
import Logging
import RoleProtocol
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Who did what: every audited fact once, as one structured log line (swift-log, so journald
/// receives the fields) and, with `--audit-log FILE`, as one JSON line appended to the file
/// for a SIEM. Each says which role vouches for it: the vault for credentials and sessions
/// (it decides both), the supervisor for the control socket, violations, restarts, and the
/// address a per-client worker's connection came from (the supervisor accepted it; a worker
/// is never asked). Refused credentials are written once per source per interval, then
/// counted: a burst of bad logins is a few lines, each with its count.
public final class AuditTrail: Sendable {
    struct State {
        /// The address of the client each per-client worker served, by worker id: kept after
        /// the worker ends (the vault's facts about its client may arrive after), the oldest
        /// let go past `maxSources`.
        var sources: [Int: String] = [:]
        var order: [Int] = []
        var oldest = 0
        /// Refusals not written, by source, since the source's last written one.
        var refusals: [String: (written: ContinuousClock.Instant, unwritten: Int)] = [:]
    }

    private let logger: Logger
    private let file: FileDescriptor?
    private let state = Mutex(State())
    private let interval: Duration
    /// `--trusted-proxy` addresses: a forwarded address is kept only from their connections.
    private let trustedProxies: Set<String>

    /// `file`: the trail's file, opened by `open(path:)` (owned and closed by the trail).
    public init(file: FileDescriptor?, logger: Logger, interval: Duration = .seconds(10), trustedProxies: Set<String> = []) {
        self.file = file
        self.logger = logger
        self.interval = interval
        self.trustedProxies = trustedProxies
    }

    deinit { try? file?.close() }

    /// Opens (creating it, mode 0600) the file the trail appends to.
    public static func open(path: String) throws(SystemCallError) -> FileDescriptor {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemCallError(call: "open", errno: Errno(rawValue: errno), detail: path) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw SystemCallError(call: "open", errno: .invalidArgument, detail: "\(path) is not a regular file")
        }
        guard info.st_mode & 0o022 == 0 else {
            close(fd)
            throw SystemCallError(call: "open", errno: .permissionDenied, detail: "\(path) may be written by others than its owner")
        }
        return FileDescriptor(rawValue: fd)
    }

    /// The connection a per-client worker now serves came from `source`.
    static let maxSources = 65536

    func clientHanded(worker: Int, source: String) {
        state.withLock { s in
            s.sources[worker] = source
            s.order.append(worker)
            if s.order.count - s.oldest > Self.maxSources {
                s.sources[s.order[s.oldest]] = nil
                s.oldest += 1
            }
            if s.oldest > Self.maxSources {
                s.order.removeFirst(s.oldest)
                s.oldest = 0
            }
        }
    }

    /// A fact `role` vouches for. A record naming a worker gets the address of that worker's
    /// client when the supervisor knows it (a worker per client), vouched for by the supervisor.
    public func record(_ record: AuditRecord, vouchedBy role: String) {
        var fields: [(String, String)] = [("event", "\(record.kind)"), ("vouched_by", role)] + record.fields.map { ($0.name, $0.value) }
        // Only a worker whose connection came from a --trusted-proxy sends it (the vault
        // passes on what the worker said); from a worker whose client the supervisor knows
        // came from elsewhere, it is a compromised worker's word and is dropped.
        var forwarded = record["forwarded_for"]
        if let worker = record["worker"].flatMap(Int.init), let source = state.withLock({ $0.sources[worker] }) {
            fields.append(("source", source))
            fields.append(("source_vouched_by", "supervisor"))
            if forwarded != nil, !trustedProxies.contains(Self.host(of: source)) {
                fields.removeAll { $0.0 == "forwarded_for" }
                forwarded = nil
            }
        }
        if forwarded != nil { fields.append(("forwarded_for_vouched_by", "worker")) }
        if record.kind == .credentialRefused {
            // Behind a proxy every client has the proxy's address: counted by the one it forwarded.
            let (name, source) = forwarded.map { ("forwarded_for", $0) } ?? ("source", Self.host(of: fields.first { $0.0 == "source" }?.1 ?? "unknown"))
            let now = ContinuousClock.now
            let (write, unwritten) = state.withLock { s -> (Bool, Int) in
                guard let last = s.refusals[source], now - last.written < interval else {
                    let unwritten = s.refusals[source]?.unwritten ?? 0
                    s.refusals[source] = (now, 0)
                    return (true, unwritten)
                }
                s.refusals[source]!.unwritten += 1
                return (false, 0)
            }
            guard write else { return }
            if unwritten > 0 {
                emit([("event", "\(AuditRecord.Kind.refusalsSummarised)"), ("vouched_by", "supervisor"), (name, source),
                      ("count", "\(unwritten)"), ("interval_seconds", "\(interval.components.seconds)")])
            }
        }
        emit(fields)
    }

    /// Refusals counted but not written yet, one line per source (at stop, and now and then).
    public func flushRefusals() {
        let pending = state.withLock { s -> [(String, Int)] in
            defer { for key in s.refusals.keys { s.refusals[key]!.unwritten = 0 } }
            return s.refusals.filter { $0.value.unwritten > 0 }.map { ($0.key, $0.value.unwritten) }.sorted { $0.0 < $1.0 }
        }
        for (source, count) in pending {
            emit([("event", "\(AuditRecord.Kind.refusalsSummarised)"), ("vouched_by", "supervisor"), ("source", source),
                  ("count", "\(count)"), ("interval_seconds", "\(interval.components.seconds)")])
        }
    }

    /// `flushRefusals` every interval until cancelled.
    func flushRefusalsPeriodically() async {
        while !Task.isCancelled {
            await Wait.sleep(for: interval)
            flushRefusals()
        }
    }

    private func emit(_ fields: [(String, String)]) {
        var metadata: Logger.Metadata = ["audit": .string(fields[0].1)]
        for (name, value) in fields.dropFirst() { metadata[name] = .string(value) }
        logger.notice("audit", metadata: metadata)
        guard let file else { return }
        var line = "{\"time\":\"\(Self.timestamp())\""
        for (name, value) in fields { line += ",\"\(name)\":\"\(Self.escaped(value))\"" }
        line += "}\n"
        // One write per line on an O_APPEND file: lines from concurrent events never interleave.
        let bytes = Array(line.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(file.rawValue, $0.baseAddress, $0.count) }
        if written != bytes.count {
            logger.error("audit line not written", metadata: ["error": "\(SystemCallError(call: "write", errno: Errno(rawValue: errno)))"])
        }
    }

    /// A source's address without its port ("[::1]:80" and "10.0.0.1:80" as "::1" and
    /// "10.0.0.1"): refusals are counted per address, each connection having a port of its own.
    static func host(of source: String) -> String {
        if source.hasPrefix("["), let close = source.firstIndex(of: "]") { return String(source[source.index(after: source.startIndex)..<close]) }
        if source.filter({ $0 == ":" }).count == 1, let colon = source.lastIndex(of: ":") { return String(source[..<colon]) }
        return source
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// UTC, RFC 3339 with milliseconds.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let millis = now.tv_nsec / 1_000_000
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }
}
