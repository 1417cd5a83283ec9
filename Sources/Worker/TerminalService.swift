import Circuits
import NIOCore
import RoleProtocol
import SystemPackage

/// One conversation with the vault, as the worker uses it on its client's event loop: a
/// circuit of the vault link (`ChannelCircuit`), or a fake in `WorkerTests`. Messages come to
/// `onMessage` as they are read; `send` says at once whether the vault has granted room.
public protocol VaultConversation: AnyObject {
    /// Sends one message; false when the vault has not granted room for it yet
    /// (`onWritable` follows).
    func send(_ bytes: [UInt8], end: Bool) throws(CircuitError) -> Bool
    /// This side's end.
    func end()
    /// Leaves the conversation: what still comes is dropped, this side's end is sent.
    func abandon()
    /// While true, the vault's messages wait (unacknowledged, so the vault stops within its
    /// window) instead of reaching `onMessage`.
    var isDeliveryPaused: Bool { get set }
    var onMessage: ((ByteBuffer, _ isEnd: Bool) -> Void)? { get set }
    var onWritable: (() -> Void)? { get set }
    var onFailure: ((CircuitError) -> Void)? { get set }
}

extension ChannelCircuit: VaultConversation {}

/// What the worker asks of the vault, always on the event loop of the client it asks for.
/// The worker decides nothing itself: it forwards what a client presented and relays an
/// attachment's messages.
public protocol TerminalService: Sendable {
    /// A new conversation with the vault on `loop`; nil when there is no vault to ask.
    func conversation(on loop: EventLoop) -> (any VaultConversation)?
}

/// The vault's answer on a credential, or that there is no vault to ask (it is restarting).
public enum CredentialCheck: Sendable, Equatable { case accepted, refused, unavailable }

extension TerminalService {
    /// Whether `token` is the credential (HTTP basic auth on the page and `/token`). Without a
    /// vault nobody is let in, and the answer says the service is unavailable, not that the
    /// credential is wrong.
    public func check(token: [UInt8], on loop: EventLoop) -> EventLoopFuture<CredentialCheck> {
        guard let conversation = conversation(on: loop) else { return loop.makeSucceededFuture(.unavailable) }
        let answer = loop.makePromise(of: CredentialCheck.self)
        conversation.onMessage = { payload, isEnd in
            let reply = try? VaultToWorker(decoding: Array(buffer: payload), descriptors: 0)
            if case .accepted? = reply { answer.succeed(.accepted) } else { answer.succeed(.refused) }
            if !isEnd { conversation.abandon() }
        }
        conversation.onFailure = { _ in answer.succeed(.unavailable) }
        // A new conversation has a whole window of credit.
        guard (try? conversation.send(WorkerToVault.check(token: token).encoded, end: true)) == true else {
            conversation.abandon()
            return loop.makeSucceededFuture(.unavailable)
        }
        return answer.futureResult
    }
}

/// The real service: the vault link the supervisor gives the worker, on the worker's one
/// event loop, replaced when the vault is.
public final class VaultLink: TerminalService, @unchecked Sendable {
    public let loop: EventLoop
    /// On `loop`.
    private var transport: RoleChannelTransport?

    public init(loop: EventLoop) { self.loop = loop }

    /// A new link replaces the old one (the vault was restarted). Takes ownership of `socket`.
    public func replace(with socket: SystemPackage.FileDescriptor) async throws {
        let fresh = try await Link.workerVault.start(socket: socket, side: .opener, on: loop).get()
        loop.execute { [self] in
            transport?.close()
            transport = fresh
        }
    }

    public func conversation(on loop: EventLoop) -> (any VaultConversation)? {
        loop.assertInEventLoop()
        precondition(loop === self.loop, "the vault link belongs to the worker's one event loop")
        guard let transport, transport.failure == nil else { return nil }
        return try? transport.open()
    }
}
