import NIOCore

/// One conversation on one circuit of a `ChannelTransport`, driven by events on the
/// transport's event loop instead of awaited: what arrives is handed to `onMessage` as it is
/// read, and `send` says at once whether the circuit has credit. Every property and method
/// belongs to that event loop.
///
/// The life cycle (idle, busy, idle again: each end sends one message flagged `end`) and flow
/// control are the ones documented on `Circuit`. Credit for a message returns to the peer when
/// it is handed to `onMessage`; a consumer that cannot take more for a while (its own output
/// is full) pauses delivery, and what arrives meanwhile waits here, within the window.
///
/// The closures are released once the conversation has finished (both ends seen), failed or
/// been abandoned, so a consumer may capture itself in them.
public final class ChannelCircuit<Id: FixedWidthInteger & UnsignedInteger & Sendable>: Conversation, @unchecked Sendable {
    weak var transport: ChannelTransport<Id>?
    /// Messages not handed over yet (delivery paused, or no `onMessage`), with their cost.
    private var inbox = FIFO<(payload: ByteBuffer, isEnd: Bool, cost: Int)>()
    /// A send found no credit: `onWritable` is owed once credit comes.
    var wantsCredit = false
    /// The peer's end has been handed over.
    private var deliveredEnd = false

    /// A message arrived; `isEnd` on the peer's last one. Setting it hands over what waited.
    public var onMessage: ((ByteBuffer, _ isEnd: Bool) -> Void)? {
        didSet { deliverWaiting() }
    }
    /// Credit arrived after `send` returned false: the message may be sent now.
    public var onWritable: (() -> Void)?
    /// The transport failed (or was closed) before this conversation finished.
    public var onFailure: ((CircuitError) -> Void)?

    /// The circuit the conversation is on.
    public var circuitID: Id { Id(truncatingIfNeeded: id) }

    /// While true, messages wait here (their credit not returned) instead of reaching
    /// `onMessage`; setting it back to false hands them over in order.
    public var isDeliveryPaused = false {
        didSet { if !isDeliveryPaused { deliverWaiting() } }
    }

    /// Both ends are done with the conversation: nothing more comes or may be sent.
    public var isFinished: Bool { sentEnd && deliveredEnd }

    /// Sends one message: `kind`, when given, is its first byte, then `payload` (not copied
    /// when large). False when the circuit has no credit for it: nothing was sent, and
    /// `onWritable` is called once there is. `end: true` makes it this side's last message.
    public func send(_ payload: ByteBuffer, kind: UInt8? = nil, end: Bool = false) throws(CircuitError) -> Bool {
        guard let transport else { throw .closed }
        return try transport.send(on: self, kind: kind, payload: payload, end: end)
    }

    /// Sends one message given as bytes.
    public func send(_ bytes: [UInt8], end: Bool = false) throws(CircuitError) -> Bool {
        guard let transport else { throw .closed }
        return try transport.send(on: self, kind: nil, payload: transport.buffer(bytes), end: end)
    }

    /// This side's end without a payload: it needs no credit, so it is always sent (unless
    /// the transport has failed, or this side already ended).
    public func end() {
        guard !ending, let transport, transport.failure == nil else { return }
        _ = try? transport.send(on: self, kind: nil, payload: ByteBuffer(), end: true)
    }

    /// Leaves the conversation before it finished: what arrived unread and what still comes
    /// is dropped (its credit returned), and this side's end is sent if it was not.
    public func abandon() {
        guard !isFinished else { return release() }
        let dropped = inbox.removeAll().reduce(0) { $0 + $1.cost }
        release()
        transport?.abandon(self, droppedCost: dropped)
    }

    // MARK: The transport's side

    /// What the transport read for this conversation.
    func received(_ payload: ByteBuffer, isEnd: Bool, cost: Int) {
        inbox.push((payload, isEnd, cost))
        deliverWaiting()
    }

    private func deliverWaiting() {
        while !isDeliveryPaused, !abandoned, let onMessage, let (payload, isEnd, cost) = inbox.pop() {
            transport?.consumed(cost, on: self)
            if isEnd { deliveredEnd = true }
            onMessage(payload, isEnd)
            if isFinished { release() }
        }
    }

    /// The transport's credit for this id rose.
    func creditArrived() {
        guard wantsCredit else { return }
        wantsCredit = false
        onWritable?()
    }

    /// The end this side sent is on its way.
    func sentItsEnd() {
        if isFinished { release() }
    }

    func failed(_ error: CircuitError) {
        let report = isFinished ? nil : onFailure
        _ = inbox.removeAll()
        release()
        report?(error)
    }

    /// Drops the closures (and whatever they hold).
    private func release() {
        onMessage = nil
        onWritable = nil
        onFailure = nil
    }
}
