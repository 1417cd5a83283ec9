import SystemPackage

/// One conversation on one circuit of a transport.
///
/// ## Life cycle: idle, busy, idle again
///
/// Every circuit is virtually open; no message opens or closes one. A circuit is *idle*
/// until a conversation uses it and *busy* while one does. Reserved circuits (the ids the
/// handshake agreed on, such as 0 for health) are never idle: each carries one endless
/// conversation.
///
/// 1. **Starting.** Each end starts conversations only on ids of its own parity (opener:
///    even, acceptor: odd), so the two ends can never pick the same idle id at once.
///    `Transport.open()` takes an idle id of this side's parity and marks it busy; the first
///    message sent on it is, for the peer, the start of a conversation, which the peer's
///    `accept()` returns. Idle ids are interchangeable: any may be picked.
/// 2. **Talking.** Both ends send and receive any number of messages, each possibly with
///    descriptors, under per-circuit flow control.
/// 3. **Ending.** Each end sends exactly one message with `end: true` (it may carry a
///    payload) and sends nothing after it. A side's circuit stays busy until it has both
///    *sent* its end and *seen* the peer's end arrive; only then is the id idle on that side.
///
/// Why the two ends can never disagree: frames on a transport arrive in order, and each end
/// acts on two separate moments.
/// - It stops routing frames to the conversation as soon as the peer's end has arrived *and*
///   it has committed to its own end (possibly still writing it). The peer cannot start a new
///   conversation on the id before our end reaches it, so nothing of a new conversation can
///   be mistaken for the old one.
/// - The owner (the end whose parity the id has) hands the id out again only once its own end
///   frame is on the wire *and* the peer's end has arrived, so a new first message can never
///   overtake the end of the previous conversation.
/// A message on an idle id of the receiver's own parity is a protocol error
/// (`.messageOnIdleCircuit`), and so is a message after the peer's end (`.messageAfterEnd`).
///
/// Messages that arrived before the end stay readable on this handle after the id went idle.
/// Dropping a handle before its conversation finished *abandons* it: unread messages are
/// discarded (descriptors closed), an end is sent if this side had not sent one, and what
/// the peer still sends until its end is discarded.
///
/// ## Flow control
///
/// Each end grants the other a window per circuit (credit units: payload bytes plus a fixed
/// cost per message and per descriptor). A sender waits, on that circuit only, when its credit
/// is used up; the receiver grants more as its consumer reads. The transport's reader thread
/// always drains the socket into per-circuit queues bounded by those windows, so a consumer
/// that stops reading stalls its own circuit and nothing else.
public final class Circuit<Id: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    let core: TransportCore
    let conversation: QueuedConversation

    init(core: TransportCore, conversation: QueuedConversation) {
        self.core = core
        self.conversation = conversation
    }

    deinit {
        if !conversation.reserved { core.abandon(conversation) }
    }

    public var id: Id { Id(conversation.id) }
    public var isReserved: Bool { conversation.reserved }

    /// Sends one message. Waits while this circuit has no credit (other circuits are
    /// unaffected). Returns once the message is written, or queued behind earlier ones for the
    /// transport to write in order (`Transport.close()` waits for it). The descriptors are
    /// duplicated into the peer; the caller still owns its copies and may close them at once.
    /// `end: true` makes it this side's last message of the conversation.
    /// Cancelling the task while it waits for credit throws `CancellationError` and sends
    /// nothing: a peer that stopped reading cannot hold its sender forever.
    public func send(_ payload: [UInt8], descriptors: [FileDescriptor] = [], end: Bool = false) async throws {
        if !(try core.reserve(conversation, length: payload.count, descriptors: descriptors.count, end: end)) {
            try await core.acquire(conversation, length: payload.count, descriptors: descriptors.count, end: end)
        }
        try await core.write(conversation, payload: payload, descriptors: descriptors, end: end)
    }

    /// Leaves the conversation at once, as dropping the handle does: what arrived unread and
    /// what still comes is discarded, and this side's end is sent if it was not. Never waits,
    /// so it may be called from any thread (a callback, a NIO future).
    public func abandon() {
        if !conversation.reserved { core.abandon(conversation) }
    }

    /// Runs `action` once the peer has ended the conversation (or the transport stopped),
    /// reading nothing meanwhile: what the peer sends until then is dropped. No task waits:
    /// the action runs on the transport's reader thread, so it must not block. The handle
    /// is kept until then.
    public func whenPeerEnds(_ action: @escaping @Sendable () -> Void) {
        core.whenPeerEnds(conversation) { withExtendedLifetime(self) { action() } }
    }

    /// The next message. After the peer's end message has been returned, throws
    /// `.conversationEnded`.
    public func receive() async throws -> Message {
        try await core.receive(conversation)
    }

    /// Every message already queued, waiting for at least one: for consumers that stream
    /// (one wake-up and one credit update per batch instead of per message). The peer's end
    /// message, if present, is the last element; after it, throws `.conversationEnded`.
    public func receiveAvailable() async throws -> [Message] {
        try await core.receiveAvailable(conversation)
    }
}
