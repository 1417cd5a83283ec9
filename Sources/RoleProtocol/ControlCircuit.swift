import Circuits

/// The reserved control circuit (`Link.control`) between the supervisor and a role it
/// watches: the role says "ready" once it serves, then sends back every heartbeat as it came,
/// followed by its counters (u64 each, little-endian) when it keeps any. A role that stops
/// answering is killed and replaced by its pool.
public enum ControlCircuit {
    static let ready = Array("ready".utf8)

    // MARK: The role's side

    /// Says ready, then answers heartbeats while `body` serves the role's work; returns
    /// when `body` does (the heartbeat task is cancelled with it). Tasks `body` adds to the
    /// group are forgotten as they finish, so a role that adds one per request keeps none.
    public static func serve(_ transport: RoleTransport, counters: RoleCounters? = nil,
                             _ body: @Sendable (inout DiscardingTaskGroup) async -> Void) async throws {
        let control = try transport.reserved(Link.control)
        try await control.send(ready)
        await withDiscardingTaskGroup { group in
            group.addTask {
                while let ping = try? await control.receive() {
                    var reply = ping.payload
                    for value in counters?.snapshot ?? [] { withUnsafeBytes(of: value.littleEndian) { reply += $0 } }
                    guard (try? await control.send(reply)) != nil else { return }
                }
            }
            await body(&group)
            group.cancelAll()
        }
    }

    // MARK: The supervisor's side

    public struct NotReady: Error, CustomStringConvertible {
        public var role: Role
        public var said: [UInt8]
        public var description: String { "the \(role) said \(said) instead of ready" }
    }

    /// Waits for the role's "ready".
    public static func awaitReady(_ transport: RoleTransport, role: Role) async throws {
        let said = try await transport.reserved(Link.control).receive().payload
        guard said == ready else { throw NotReady(role: role, said: said) }
    }

    /// Sends heartbeat `sequence` and waits for it to come back; returns the role's counters
    /// (empty for a role that keeps none), or nil when the transport fails first. The caller
    /// bounds the wait.
    public static func heartbeat(_ control: RoleCircuit, sequence: UInt64) async -> [UInt64]? {
        let ping = withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
        guard (try? await control.send(ping)) != nil else { return nil }
        while let reply = try? await control.receive() {
            let payload = reply.payload
            guard payload.count >= ping.count, Array(payload[..<ping.count]) == ping else { continue }
            let rest = payload[ping.count...]
            // The role is not trusted to size this: whole u64s only, and a bounded number.
            guard rest.count % 8 == 0, rest.count <= 8 * 64 else { return [] }
            return stride(from: rest.startIndex, to: rest.endIndex, by: 8).map { start in
                rest[start..<start + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            }
        }
        return nil
    }
}
