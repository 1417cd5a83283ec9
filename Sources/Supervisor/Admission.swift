/// Which connections that have not yet presented a valid credential the supervisor takes, as
/// OpenSSH takes unauthenticated connections (`MaxStartups start:rate:full`,
/// `PerSourceMaxStartups`, `LoginGraceTime`): below `start` of them every one; from `start`
/// on each is refused with a chance that grows from `rate` % to 100 % at `full`; never more
/// than `perSource` from one source (an IPv4 address, an IPv6 /64). A connection leaves the
/// count once its worker reports that the vault accepted its credential, or when it ends. The
/// supervisor decides from the peer's address alone, never from a client byte.
///
/// A value: the supervisor keeps it under a lock and acts on what each call returns
/// (`AdmissionTests`).
public struct Admission: Sendable {
    public struct Limits: Sendable, Equatable, CustomStringConvertible {
        public var start: Int
        public var rate: Int
        public var full: Int
        public var perSource: Int
        /// Time a connection has to present a valid credential before it is closed.
        public var deadline: Duration

        public init(start: Int = 32, rate: Int = 30, full: Int = 128, perSource: Int = 16, deadline: Duration = .seconds(30)) {
            (self.start, self.rate, self.full, self.perSource, self.deadline) = (start, rate, full, perSource, deadline)
        }

        /// "start:rate:full", as `--max-unauthenticated` and sshd_config(5) write it.
        public init(startRateFull text: String, perSource: Int, deadline: Duration) throws(AdmissionError) {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { Int($0) }
            guard parts.count == 3, let start = parts[0], let rate = parts[1], let full = parts[2] else {
                throw AdmissionError(problem: "\"\(text)\" is not START:RATE:FULL (three whole numbers)")
            }
            self.init(start: start, rate: rate, full: full, perSource: perSource, deadline: deadline)
            try check()
        }

        public func check() throws(AdmissionError) {
            guard start >= 1, start <= full else { throw AdmissionError(problem: "START must be at least 1 and at most FULL (\(start):\(rate):\(full))") }
            guard (1...100).contains(rate) else { throw AdmissionError(problem: "RATE is a percentage from 1 to 100 (\(start):\(rate):\(full))") }
            guard perSource >= 1 else { throw AdmissionError(problem: "the limit per source must be at least 1") }
            guard deadline > .zero else { throw AdmissionError(problem: "the deadline must be positive") }
        }

        public var description: String { "\(start):\(rate):\(full)" }
    }

    public struct AdmissionError: Error, CustomStringConvertible, Equatable {
        public var problem: String
        public var description: String { problem }
    }

    /// Why a connection was refused or closed.
    public enum Refusal: String, Sendable, CaseIterable {
        /// `full` unauthenticated connections already.
        case full
        /// Between `start` and `full`, by chance.
        case early
        /// `perSource` unauthenticated connections from its source already.
        case source
        /// Admitted, but no valid credential within the deadline.
        case deadline
    }

    /// The outcome of `admit`.
    public enum Decision: Equatable, Sendable {
        case admit
        case refuse(Refusal)
    }

    public let limits: Limits
    /// Unauthenticated connections now, in all and per source.
    public private(set) var unauthenticated = 0
    private var bySource: [String: Int] = [:]
    /// Connections admitted, refused (by reason), authenticated, since start.
    public private(set) var admitted: UInt64 = 0
    public private(set) var authenticated: UInt64 = 0
    public private(set) var refused: [Refusal: UInt64] = [:]
    /// When a refusal from a source was last logged, so that a flood is one line per
    /// source per `logInterval`, with the count since.
    private var logged: [String: (at: ContinuousClock.Instant, since: UInt64)] = [:]
    public static let logInterval: Duration = .seconds(10)

    public init(limits: Limits) { self.limits = limits }

    /// Where a unix listener's clients come from.
    public static let unixSource = "unix"

    /// The key a peer is counted under: an IPv4 address, an IPv6 address's /64 (a host has a
    /// /64 to itself), or "unix" for a local reverse proxy (one source, with no limit of
    /// its own).
    public static func source(of peer: String) -> String {
        guard peer.hasPrefix("[") else {
            guard let colon = peer.lastIndex(of: ":") else { return peer }
            return String(peer[..<colon])
        }
        let host = peer.dropFirst().prefix { $0 != "]" }
        // IPv4-mapped addresses count as their IPv4 address.
        if host.lowercased().hasPrefix("::ffff:"), host.contains(".") { return String(host.dropFirst(7)) }
        return Self.prefix64(String(host)).map { $0 + "::/64" } ?? String(host)
    }

    /// The first four groups of an IPv6 address, `::` expanded.
    static func prefix64(_ address: String) -> String? {
        let groups: [String]
        if let gap = address.firstRange(of: "::") {
            let head = address[..<gap.lowerBound].split(separator: ":").map(String.init)
            let rest = address[gap.upperBound...]
            guard rest.firstRange(of: "::") == nil else { return nil }
            let tail = rest.split(separator: ":").map(String.init)
            guard head.count + tail.count <= 7 else { return nil }
            groups = head + Array(repeating: "0", count: 8 - head.count - tail.count) + tail
        } else {
            groups = address.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        }
        guard groups.count == 8, groups.allSatisfy({ UInt16($0, radix: 16) != nil }) else { return nil }
        return groups.prefix(4).map { String(UInt16($0, radix: 16)!, radix: 16) }.joined(separator: ":")
    }

    /// A new connection from `source`. `chance` is a random number in 0..<1 (drawn by the
    /// caller, so the decision is a function of its inputs).
    public mutating func admit(source: String, chance: Double) -> Decision {
        if unauthenticated >= limits.full { return refuse(.full) }
        // A local reverse proxy (a unix listener's clients) is one source for all its users.
        if source != Self.unixSource, bySource[source, default: 0] >= limits.perSource { return refuse(.source) }
        if unauthenticated >= limits.start {
            // sshd's rule: rate % at start, growing linearly to 100 % at full.
            let span = Double(max(1, limits.full - limits.start))
            let probability = (Double(limits.rate) + Double(100 - limits.rate) * Double(unauthenticated - limits.start) / span) / 100
            if chance < probability { return refuse(.early) }
        }
        unauthenticated += 1
        bySource[source, default: 0] += 1
        admitted += 1
        return .admit
    }

    private mutating func refuse(_ reason: Refusal) -> Decision {
        refused[reason, default: 0] += 1
        return .refuse(reason)
    }

    /// The worker reported that the vault accepted the connection's credential: it leaves
    /// the count for good.
    public mutating func authenticatedConnection(source: String) {
        authenticated += 1
        leave(source)
    }

    /// An admitted connection ended (or was closed at its deadline) without authenticating.
    public mutating func endedUnauthenticated(source: String, expired: Bool) {
        if expired { refused[.deadline, default: 0] += 1 }
        leave(source)
    }

    private mutating func leave(_ source: String) {
        unauthenticated -= 1
        bySource[source, default: 1] -= 1
        if bySource[source] == 0 { bySource[source] = nil }
    }

    /// Whether a refusal from `source` at `now` is to be logged: the first in each interval
    /// is, with how many were refused since the last line.
    public mutating func shouldLog(source: String, at now: ContinuousClock.Instant) -> (log: Bool, suppressed: UInt64) {
        if let last = logged[source], now - last.at < Self.logInterval {
            logged[source]!.since += 1
            return (false, 0)
        }
        let suppressed = logged[source]?.since ?? 0
        logged[source] = (now, 0)
        // Old sources are forgotten, so that the table stays as small as one interval's.
        if logged.count > 4096 { logged = logged.filter { now - $0.value.at < Self.logInterval } }
        return (true, suppressed)
    }
}

#if canImport(Glibc)
import Glibc
#endif
