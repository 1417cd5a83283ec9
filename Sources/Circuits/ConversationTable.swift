/// Per-conversation state. Touched only with the transport's state locked.
final class Conversation: @unchecked Sendable {
    let id: UInt64
    let reserved: Bool
    /// The id's flow-control counters (shared by every conversation on the id).
    let credit: Credit
    var queue = FIFO<Message>()
    var waiter: Continuation<Void, Error>?
    /// This side is sending (or has sent) its end; no more sends.
    var ending = false
    /// This side's end frame is on the wire.
    var sentEnd = false
    /// The reader saw the peer's end frame.
    var peerEnded = false
    /// The consumer has taken the peer's end message.
    var consumedEnd = false
    /// The handle was dropped before the conversation finished: incoming data is discarded.
    var abandoned = false

    init(id: UInt64, reserved: Bool, credit: Credit) {
        self.id = id
        self.reserved = reserved
        self.credit = credit
    }
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
struct ConversationTable {
    let side: TransportSide
    let maxCircuits: UInt64
    /// The window this side grants per circuit.
    let window: UInt64
    /// The window the peer grants, once its handshake has arrived.
    private(set) var peerWindow: UInt64?
    private(set) var conversations: [UInt64: Conversation] = [:]
    private(set) var credits: [UInt64: Credit] = [:]
    /// Conversations the peer started that `accept` has not returned yet.
    private(set) var incoming = FIFO<Conversation>()
    var acceptWaiter: Continuation<Void, Error>?
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
            conversations[id] = Conversation(id: id, reserved: true, credit: credit)
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
    func reserved(_ id: UInt64) -> Conversation? {
        guard let c = conversations[id], c.reserved else { return nil }
        return c
    }

    // MARK: Opening and accepting

    /// Starts a conversation on an idle id of this side's parity.
    mutating func open() throws(CircuitError) -> Conversation {
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
        let conversation = Conversation(id: id, reserved: false, credit: credit(id))
        conversations[id] = conversation
        return conversation
    }

    mutating func nextIncoming() -> Conversation? { incoming.pop() }
    var hasIncoming: Bool { !incoming.isEmpty }

    // MARK: Routing what arrives

    /// A credit frame raised `id`'s sending limit; returns the senders to resume.
    mutating func raiseLimit(_ limit: UInt64, on id: UInt64) -> [Continuation<Void, Error>] {
        let credit = self.credit(id)
        credit.limit = max(credit.limit, limit)
        defer { credit.senders = [] }
        return credit.senders
    }

    /// Queues a data frame on its conversation, starting one when the peer opens an id.
    /// Returns a waiting consumer (or acceptor) to wake, and a credit grant to send when the
    /// conversation was abandoned (its data is dropped here, descriptors closed).
    mutating func route(_ frame: Frame) throws(CircuitError) -> (wake: Continuation<Void, Error>?, grant: UInt64?) {
        let h = frame.header
        let cost = TransportConfiguration<UInt64>.cost(payload: h.length, descriptors: h.descriptorCount, end: h.end)
        var wake: Continuation<Void, Error>?
        let conversation: Conversation
        if let existing = conversations[h.circuit] {
            conversation = existing
        } else {
            guard !side.owns(h.circuit) else { throw .messageOnIdleCircuit(id: h.circuit) }
            conversation = Conversation(id: h.circuit, reserved: false, credit: credit(h.circuit))
            conversations[h.circuit] = conversation
            incoming.push(conversation)
            wake = acceptWaiter
            acceptWaiter = nil
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
        if conversation.abandoned {
            return (wake, consume(cost, conversation.credit))
        }
        conversation.queue.push(Message(payload: frame.payload, descriptors: frame.descriptors, isEnd: h.end, cost: cost))
        // A conversation this frame started has no consumer waiting yet, so at most one of
        // the two is set.
        if let waiter = conversation.waiter {
            conversation.waiter = nil
            wake = waiter
        }
        return (wake, nil)
    }

    // MARK: Ending

    /// Stops routing frames to a conversation once both ends are done with it: the peer has
    /// ended, and this side has committed to its end (it may still be writing it). Any later
    /// frame on the id starts a new conversation, which the peer can only do after our end
    /// arrived. The handle keeps the messages it has not read yet.
    private mutating func unroute(_ conversation: Conversation) {
        guard conversations[conversation.id] === conversation else { return }
        conversations[conversation.id] = nil
    }

    /// Makes an id of ours available to `open()` again, once our end frame is on the wire and
    /// the peer's has arrived: a new first message can then never overtake our end. Called
    /// exactly once per conversation, by whichever of the two events comes second.
    private mutating func recycle(_ conversation: Conversation) {
        if side.owns(conversation.id) { idleOwnIds.push(conversation.id) }
    }

    /// This side commits to its end (before writing it).
    mutating func beginEnding(_ conversation: Conversation) {
        conversation.ending = true
        if conversation.peerEnded { unroute(conversation) }
    }

    /// This side's end frame has been written.
    mutating func endWritten(_ conversation: Conversation) {
        conversation.sentEnd = true
        if conversation.peerEnded { recycle(conversation) }
    }

    // MARK: Credit

    /// Accounts a consumed message; returns a new limit to grant when half a window has been
    /// consumed since the last grant.
    func consume(_ cost: Int, _ credit: Credit) -> UInt64? {
        credit.consumed += UInt64(cost)
        guard credit.consumed + window - credit.granted >= window / 2 else { return nil }
        credit.granted = credit.consumed + window
        return credit.granted
    }

    // MARK: Failing

    /// Takes every queued message out, for the caller to drop outside the lock.
    mutating func dropQueued() -> [Message] {
        var dropped: [Message] = []
        for conversation in conversations.values { dropped += conversation.queue.removeAll() }
        for incoming in incoming.removeAll() { dropped += incoming.queue.removeAll() }
        return dropped
    }

    /// Every task waiting on a conversation, for `accept`, or for credit.
    mutating func takeWaiters() -> [Continuation<Void, Error>] {
        var waiters: [Continuation<Void, Error>] = []
        if let w = acceptWaiter { waiters.append(w); acceptWaiter = nil }
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
