import Circuits
import RoleProtocol
import Synchronization

/// What the worker asks of the vault. The worker decides nothing itself: it forwards what a
/// client presented and relays an attachment's messages. A protocol, so that the worker's
/// protocol handling is tested without a vault (`WorkerTests`).
public protocol TerminalService: Sendable {
    /// Whether `token` is the credential (HTTP basic auth on the page and `/token`).
    func check(token: [UInt8]) async -> Bool
    /// Starts an attachment conversation; nil when there is no vault to ask.
    func attachment() -> (any Attachment)?
}

/// One attachment conversation with the vault (see `WorkerToVault`).
public protocol Attachment: Sendable {
    func send(_ message: WorkerToVault) async throws
    /// The vault's next message; nil once it ended the conversation.
    func receive() async throws -> VaultToWorker?
    /// Ends this side: the client has gone.
    func end() async
}

/// The real service: the vault link the supervisor gives the worker, replaced when the vault
/// is.
public final class VaultLink: TerminalService {
    private let link = Mutex<RoleTransport?>(nil)

    public init() {}

    /// A new link replaces the old one (the vault was restarted).
    public func replace(with transport: RoleTransport) {
        let old = link.withLock { current in
            defer { current = transport }
            return current
        }
        old?.close()
    }

    private var transport: RoleTransport? {
        link.withLock { current in
            if current?.failure != nil { current = nil }
            return current
        }
    }

    /// Without a vault, nobody is let in.
    public func check(token: [UInt8]) async -> Bool {
        guard let circuit = try? transport?.open() else { return false }
        guard (try? await circuit.send(WorkerToVault.check(token: token), end: true)) != nil,
              let reply = try? await circuit.receive(VaultToWorker.self) else { return false }
        if case .accepted = reply.message { return true }
        return false
    }

    public func attachment() -> (any Attachment)? {
        (try? transport?.open()).map(CircuitAttachment.init)
    }
}

struct CircuitAttachment: Attachment {
    let circuit: RoleCircuit

    func send(_ message: WorkerToVault) async throws { try await circuit.send(message) }
    func receive() async throws -> VaultToWorker? { try await circuit.receive(VaultToWorker.self)?.message }
    func end() async { try? await circuit.send([], end: true) }
}
