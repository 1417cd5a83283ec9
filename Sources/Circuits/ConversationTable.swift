/// Per-conversation state of the life cycle and flow control, whichever driver moves its
/// frames. Touched only by its transport's owner: under the lock of a threaded transport
/// (`TransportCore`), on the event loop of a channel transport (`ChannelTransport`). Each
/// driver subclasses it with what its consumers need.
public class Conversation: @unchecked Sendable {
    let id: UInt64
    let reserved: Bool
    /// The id's flow-control counters (shared by every conversation on the id).
    let credit: Credit
    /// This side is sending (or has sent) its end; no more sends.
    var ending = false
    /// This side's end frame is on the wire.
    var sentEnd = false
    /// The reader saw the peer's end frame.
    var peerEnded = false
    /// The handle was dropped before the conversation finished: incoming data is discarded.
    var abandoned = false

    required init(id: UInt64, reserved: Bool, credit: Credit) {
        self.id = id
        self.reserved = reserved
        self.credit = credit
    }
}

/// A conversation of a threaded transport: what arrived waits in `queue` for a task.
final class QueuedConversation: Conversation, @unchecked Sendable {
    var queue = FIFO<Message>()
    var waiter: Continuation<Void, Error>?
    /// The consumer has taken the peer's end message.
    var consumedEnd = false
    /// Set by `Circuit.whenPeerEnds`: nothing is read, and this runs once the peer's end
    /// arrives (or the transport fails).
    var peerEndAction: (@Sendable () -> Void)?
}

/// Cumulative flow-control counters of one circuit id, kept across conversations so that a
/// credit frame that crosses the end of a conversation can never over-grant: limits only grow.
/// A reference, so conversations reach theirs without a lookup. Touched only with the
/// transport's state locked.
final class Credit: @unchecked Sendable {
    /// Outgoing: what we sent and what the peer allows.
    var sent: UInt64 = 0
    var limit: UInt64
    var senders: [Continuation<Void, Error>] = []
    /// Incoming: what arrived, what our consumer took, what we allowed.
    var received: UInt64 = 0
    var consumed: UInt64 = 0
    var granted: UInt64

    init(limit: UInt64, granted: UInt64) {
        self.limit = limit
        self.granted = granted
    }
}

/// Which conversation each circuit id carries, and its flow control: the transport's state
/// machine, without I/O. `TransportCore` holds one under its lock; the reader routes frames
/// through it, senders and receivers account credit with it.
///
/// The life cycle of an id (idle, busy, idle again) is documented on `Circuit`: each side
/// opens conversations only on ids of its own parity; an id is routed to a conversation until
/// both ends have ended it, and is reused by its owner only once its own end is on the wire
/// and the peer's has arrived.
struct ConversationTable<C: Conversation> {
    let side: TransportSide
    let maxCircuits: UInt64
    /// The window this side grants per circuit.
    let window: UInt64
    /// The window the peer grants, once its handshake has arrived.
    private(set) var peerWindow: UInt64?
    private(set) var conversations: [UInt64: C] = [:]
    private(set) var credits: [UInt64: Credit] = [:]
    /// Conversations the peer started that `accept` has not returned yet.
    private(set) var incoming = FIFO<C>()
    private var idleOwnIds = FIFO<UInt64>()
    private var nextFreshId: UInt64

    init(side: TransportSide, maxCircuits: UInt64, window: UInt64, reservedBand: UInt64, reserved: some Sequence<UInt64>) {
        self.side = side
        self.maxCircuits = maxCircuits
        self.window = window
        // The first id this side owns at or above the band.
        nextFreshId = side.owns(reservedBand) ? reservedBand : reservedBand + 1
        for id in reserved {
            // The peer's window is not known yet; `peerHandshake` sets the limit.
            let credit = Credit(limit: 0, granted: window)
            credits[id] = credit
            conversations[id] = C(id: id, reserved: true, credit: credit)
        }
    }

    /// The peer's handshake arrived: its window becomes every circuit's sending limit.
    mutating func peerHandshake(window peer: UInt64) {
        peerWindow = peer
        for credit in credits.values { credit.limit = max(credit.limit, peer) }
    }

    /// The counters of `id`, created on first use.
    mutating func credit(_ id: UInt64) -> Credit {
        if let existing = credits[id] { return existing }
        let created = Credit(limit: peerWindow ?? 0, granted: window)
        credits[id] = created
        return created
    }

    /// The reserved conversation on `id`, if the handshake agreed on it.
    func reserved(_ id: UInt64) -> C? {
        guard let c = conversations[id], c.reserved else { return nil }
        return c
    }

    // MARK: Opening and accepting

    /// Starts a conversation on an idle id of this side's parity.
    mutating func open() throws(CircuitError) -> C {
        let id: UInt64
        if let reused = idleOwnIds.pop() {
            id = reused
        } else if nextFreshId < maxCircuits {
            id = nextFreshId
            nextFreshId = nextFreshId &+ 2
            if nextFreshId < id { nextFreshId = maxCircuits }  // wrapped at UInt64.max
        } else {
            throw .noIdleCircuit
        }
        let conversation = C(id: id, reserved: false, credit: credit(id))
        conversations[id] = conversation
        return conversation
    }

    mutating func nextIncoming() -> C? { incoming.pop() }
    var hasIncoming: Bool { !incoming.isEmpty }

    // MARK: Routing what arrives

    /// A credit frame raised `id`'s sending limit; returns the senders to resume.
    mutating func raiseLimit(_ limit: UInt64, on id: UInt64) -> [Continuation<Void, Error>] {
        let credit = self.credit(id)
        credit.limit = max(credit.limit, limit)
        defer { credit.senders = [] }
        return credit.senders
    }

    /// Where a data frame goes.
    struct Routed {
        var conversation: C
        /// The frame started the conversation (the peer opened the id): it is in `incoming`.
        var started: Bool
        /// What the frame costs in credit.
        var cost: Int
        /// The conversation was abandoned: the payload is to be dropped (descriptors closed).
        var discard: Bool { conversation.abandoned }
        /// Credit to grant the peer for a dropped payload.
        var grant: UInt64?
    }

    /// Accounts a data frame to its conversation, starting one when the peer opens an id, and
    /// applies its end. The caller delivers the payload unless the routing says to discard it.
    mutating func route(_ h: FrameHeader) throws(CircuitError) -> Routed {
        let cost = TransportConfiguration<UInt64>.cost(payload: h.length, descriptors: h.descriptorCount, end: h.end)
        var started = false
        let conversation: C
        if let existing = conversations[h.circuit] {
            conversation = existing
        } else {
            guard !side.owns(h.circuit) else { throw .messageOnIdleCircuit(id: h.circuit) }
            conversation = C(id: h.circuit, reserved: false, credit: credit(h.circuit))
            conversations[h.circuit] = conversation
            incoming.push(conversation)
            started = true
        }
        let credit = conversation.credit
        credit.received += UInt64(cost)
        guard credit.received <= credit.granted else {
            throw .creditExceeded(id: h.circuit, received: credit.received, granted: credit.granted)
        }
        if conversation.peerEnded { throw .messageAfterEnd(id: h.circuit) }
        if h.end {
            guard !conversation.reserved else { throw .peerEndedReservedCircuit(id: h.circuit) }
            conversation.peerEnded = true
            if conversation.ending { unroute(conversation) }
            if conversation.sentEnd { recycle(conversation) }
        }
        let grant = conversation.abandoned ? consume(cost, credit) : nil
        return Routed(conversation: conversation, started: started, cost: cost, grant: grant)
    }

    // MARK: Ending

    /// Stops routing frames to a conversation once both ends are done with it: the peer has
    /// ended, and this side has committed to its end (it may still be writing it). Any later
    /// frame on the id starts a new conversation, which the peer can only do after our end
    /// arrived. The handle keeps the messages it has not read yet.
    private mutating func unroute(_ conversation: C) {
        guard conversations[conversation.id] === conversation else { return }
        conversations[conversation.id] = nil
    }

    /// Makes an id of ours available to `open()` again, once our end frame is on the wire and
    /// the peer's has arrived: a new first message can then never overtake our end. Called
    /// exactly once per conversation, by whichever of the two events comes second.
    private mutating func recycle(_ conversation: C) {
        if side.owns(conversation.id) { idleOwnIds.push(conversation.id) }
    }

    /// This side commits to its end (before writing it).
    mutating func beginEnding(_ conversation: C) {
        conversation.ending = true
        if conversation.peerEnded { unroute(conversation) }
    }

    /// This side's end frame has been written.
    mutating func endWritten(_ conversation: C) {
        conversation.sentEnd = true
        if conversation.peerEnded { recycle(conversation) }
    }

    // MARK: Credit

    /// Takes the credit for a message on `conversation` if its window has room (false when
    /// the sender must wait), after checking what no message may break: a conversation this
    /// side ended, an end on a reserved circuit, more than `peer` accepts. A message that
    /// ends the conversation commits this side to its end. Inlined: called from a driver
    /// generic over its id type, a call would look up this table's type metadata at run time
    /// on every message.
    @inline(__always)
    mutating func reserve(_ conversation: C, length: Int, descriptors: Int, end: Bool, peer: Handshake) throws(CircuitError) -> Bool {
        let cost = TransportConfiguration<UInt64>.cost(payload: length, descriptors: descriptors, end: end)
        if conversation.ending { throw .conversationEnded(id: conversation.id) }
        if end && conversation.reserved { throw .endOnReservedCircuit(id: conversation.id) }
        if length > peer.maxPayload || descriptors > peer.maxDescriptors || UInt64(cost) > peer.window {
            throw .messageTooLarge(length: length, descriptors: descriptors,
                                   peerLimit: peer.maxPayload, peerDescriptorLimit: peer.maxDescriptors)
        }
        let credit = conversation.credit
        guard credit.sent + UInt64(cost) <= credit.limit else { return false }
        credit.sent += UInt64(cost)
        if end { beginEnding(conversation) }
        return true
    }

    /// Accounts a consumed message; returns a new limit to grant when half a window has been
    /// consumed since the last grant.
    func consume(_ cost: Int, _ credit: Credit) -> UInt64? {
        credit.consumed += UInt64(cost)
        guard credit.consumed + window - credit.granted >= window / 2 else { return nil }
        credit.granted = credit.consumed + window
        return credit.granted
    }

    /// Every conversation the table still routes to, and those not accepted yet.
    var live: [C] { Array(conversations.values) + incoming.peekAll() }
}

/// The threaded transport's side: messages queue on their conversation for a task to take.
extension ConversationTable where C == QueuedConversation {
    /// Queues a data frame on its conversation (`route`). Returns a waiting consumer to wake,
    /// a credit grant to send when the conversation's data is dropped here (it was abandoned,
    /// or nobody reads it: descriptors closed), and the action `whenPeerEnds` left for the
    /// peer's end, once that has come.
    mutating func route(_ frame: Frame) throws(CircuitError)
        -> (wake: Continuation<Void, Error>?, grant: UInt64?, ended: (@Sendable () -> Void)?) {
        let routed = try route(frame.header)
        if routed.discard { return (nil, routed.grant, nil) }
        let conversation = routed.conversation
        if let action = conversation.peerEndAction {
            let grant = consume(routed.cost, conversation.credit)
            guard frame.header.end else { return (nil, grant, nil) }
            conversation.consumedEnd = true
            conversation.peerEndAction = nil
            return (nil, grant, action)
        }
        conversation.queue.push(Message(payload: frame.payload, descriptors: frame.descriptors, isEnd: frame.header.end,
                                        cost: routed.cost))
        guard let waiter = conversation.waiter else { return (nil, nil, nil) }
        conversation.waiter = nil
        return (waiter, nil, nil)
    }

    /// Takes every queued message out, for the caller to drop outside the lock; conversations
    /// not accepted yet are forgotten.
    mutating func dropQueued() -> [Message] {
        var dropped: [Message] = []
        for conversation in conversations.values { dropped += conversation.queue.removeAll() }
        for incoming in incoming.removeAll() { dropped += incoming.queue.removeAll() }
        return dropped
    }

    /// Every action waiting for a peer's end (`whenPeerEnds`), for a transport that failed.
    mutating func takeEndActions() -> [@Sendable () -> Void] {
        var actions: [@Sendable () -> Void] = []
        for conversation in live {
            if let action = conversation.peerEndAction { actions.append(action) }
            conversation.peerEndAction = nil
        }
        return actions
    }

    /// Every task waiting on a conversation or for credit.
    mutating func takeWaiters() -> [Continuation<Void, Error>] {
        var waiters: [Continuation<Void, Error>] = []
        for conversation in conversations.values {
            if let w = conversation.waiter { waiters.append(w); conversation.waiter = nil }
        }
        for credit in credits.values {
            waiters += credit.senders
            credit.senders = []
        }
        return waiters
    }
}
