import Synchronization

/// What a worker counts for the operator's metrics, in the order its heartbeat replies carry
/// them (`ControlCircuit`): each a u64, little-endian, after the echoed ping.
public enum WorkerCounter: Int, CaseIterable, Sendable {
    /// Payload bytes of the clients' WebSocket messages.
    case bytesFromClients
    /// Payload bytes of the WebSocket messages sent to clients.
    case bytesToClients
    /// Requests refused before any WebSocket existed, by cause: malformed (400), without the
    /// credential (401, or 407 without the proxy's header), a foreign Origin (403), a WebSocket
    /// version other than 13 (426), headers over the limit (431), anything else.
    case refusedMalformed
    case refusedUnauthenticated
    case refusedOrigin
    case refusedVersion
    case refusedTooLarge
    case refusedOther

    /// The cause label of a refusal counter (nil for the byte counters).
    public var refusalCause: String? {
        switch self {
        case .bytesFromClients, .bytesToClients: return nil
        case .refusedMalformed: return "malformed"
        case .refusedUnauthenticated: return "unauthenticated"
        case .refusedOrigin: return "origin"
        case .refusedVersion: return "version"
        case .refusedTooLarge: return "too_large"
        case .refusedOther: return "other"
        }
    }

    /// The refusal counter for an HTTP status a worker answered with.
    public static func refusal(status: Int) -> WorkerCounter {
        switch status {
        case 400: return .refusedMalformed
        case 401, 407: return .refusedUnauthenticated
        case 403: return .refusedOrigin
        case 426: return .refusedVersion
        case 431: return .refusedTooLarge
        default: return .refusedOther
        }
    }
}

/// Counters a role keeps for its heartbeat replies; they only grow, and start at zero with
/// each process.
public final class RoleCounters: Sendable {
    private let values: Mutex<[UInt64]>

    public init(count: Int) {
        values = Mutex([UInt64](repeating: 0, count: count))
    }

    public func add(_ amount: Int, to index: Int) {
        values.withLock { $0[index] &+= UInt64(amount) }
    }

    public var snapshot: [UInt64] { values.withLock { $0 } }
}

extension RoleCounters {
    public func add(_ amount: Int, to counter: WorkerCounter) { add(amount, to: counter.rawValue) }
}
