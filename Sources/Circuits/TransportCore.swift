import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The machinery behind a `Transport`: its lifecycle (handshake, failure, close), the
/// conversation API `Circuit` calls (open, accept, send with credit, receive, abandon), and
/// the reader thread (`TransportCore+Reader.swift`). The routing and flow-control state is a
/// `ConversationTable` under `state`'s lock; writing is `FrameWriter`'s.
final class TransportCore: Sendable {
    struct Layout {
        var idBytes: Int
        var maxCircuits: UInt64
        var band: UInt64
        var reserved: [UInt64: String]
        var side: TransportSide
        var window: UInt64
        var handshake: Handshake
        var receiveBufferBytes: Int
        var limits: FrameLimits { FrameLimits(idBytes: idBytes, maxCircuits: maxCircuits, maxPayload: handshake.maxPayload, maxDescriptors: handshake.maxDescriptors) }

        init<Id>(_ c: TransportConfiguration<Id>) {
            idBytes = Id.bitWidth / 8
            handshake = Handshake(intent: c.intent, build: c.build, side: c.side, idBytes: idBytes,
                                  maxCircuits: c.maxCircuits, reservedBand: UInt64(c.reservedBand),
                                  reserved: Dictionary(uniqueKeysWithValues: c.reserved.map { (UInt64($0.key), $0.value) }),
                                  window: UInt64(c.window), maxPayload: c.maxPayload,
                                  maxDescriptors: c.maxDescriptorsPerMessage)
            (maxCircuits, band, reserved, side, window) = (c.maxCircuits, UInt64(c.reservedBand), handshake.reserved, c.side, UInt64(c.window))
            receiveBufferBytes = c.receiveBufferBytes
        }
    }

    struct State {
        var failure: CircuitError?
        var peer: Handshake?
        var handshakeWaiter: Continuation<Void, Error>?
        var closeWaiters: [Continuation<CircuitError, Never>] = []
        var table: ConversationTable<QueuedConversation>
        /// The task in `accept`, waiting for the peer to start a conversation.
        var acceptWaiter: Continuation<Void, Error>?
        var readerThread: Threads.Handle?
        /// A `close` took `readerThread` to join it: the reader closes the socket itself.
        var readerTaken = false
    }

    let layout: Layout
    let writer: FrameWriter
    let socket: FileDescriptor
    let state: Mutex<State>
    let framesReceived = Atomic<Int>(0)
    let reads = Atomic<Int>(0)
    let handshakeTimeout: Int
    private let lingerMilliseconds: Int

    init<Id>(socket: FileDescriptor, configuration c: TransportConfiguration<Id>) {
        layout = Layout(c)
        let handshake = layout.handshake
        self.socket = socket
        writer = FrameWriter(fd: socket, idBytes: layout.idBytes)
        handshakeTimeout = c.handshakeTimeoutMilliseconds
        lingerMilliseconds = c.closeLingerMilliseconds
        state = Mutex(State(table: ConversationTable(side: c.side, maxCircuits: c.maxCircuits, window: UInt64(c.window),
                                                     reservedBand: UInt64(c.reservedBand), reserved: handshake.reserved.keys)))
    }

    var peer: Handshake { state.withLock { $0.peer! } }

    // MARK: Start and stop

    func start() async throws {
        try SocketCalls.setReceiveTimeout(socket, milliseconds: handshakeTimeout)
        // Our handshake goes out before we read theirs: a peer that rejects us then still
        // has its own handshake on the wire before it closes, so both ends name the mismatch.
        try writer.start { [weak self] error in self?.failFromWriter(error) }
        let encoded = layout.handshake.encode()
        try encoded.withUnsafeBytes { bytes in
            try writer.submitControl(.handshake, circuit: 0, payload: bytes)
        }
        try startReader()
        try await withThrowingContinuation { (continuation: Continuation<Void, Error>) in
            state.withLock { s in
                if s.peer != nil {
                    continuation.resume()
                } else if let failure = s.failure {
                    continuation.resume(throwing: failure)
                } else {
                    s.handshakeWaiter = continuation
                }
            }
        }
    }

    /// Marks the transport failed (first cause wins) and wakes everything that waits.
    /// What arrived before a clean end of file stays readable (a peer may send its last
    /// words and exit) until the transport is closed here; any other failure drops it at once.
    func fail(_ error: CircuitError) {
        var dropped: [Message] = []
        var waiters: [Continuation<Void, Error>] = []
        var closeWaiters: [Continuation<CircuitError, Never>] = []
        var endActions: [@Sendable () -> Void] = []
        let cause: CircuitError = state.withLock { s in
            if s.failure == nil { s.failure = error }
            let cause = s.failure!
            if let w = s.handshakeWaiter { waiters.append(w); s.handshakeWaiter = nil }
            if cause != .peerClosed { dropped = s.table.dropQueued() }
            if let w = s.acceptWaiter { waiters.append(w); s.acceptWaiter = nil }
            waiters += s.table.takeWaiters()
            endActions = s.table.takeEndActions()
            closeWaiters = s.closeWaiters
            s.closeWaiters = []
            return cause
        }
        for w in waiters { w.resume(throwing: cause) }
        for w in closeWaiters { w.resume(returning: cause) }
        for action in endActions { action() }
        dropped.removeAll()  // closes their descriptors
    }

    func close(error: CircuitError) {
        // Messages already sent may still be queued in the writer: they go out first, unless
        // the peer has stopped reading for longer than the linger.
        if state.withLock({ $0.failure == nil && $0.readerThread != nil }) {
            writer.drain(milliseconds: lingerMilliseconds)
        }
        // Set first so that waiters learn the local close, not the EOF it causes.
        state.withLock { s in if s.failure == nil { s.failure = error } }
        writer.shutdown()
        enum Step { case join(Threads.Handle), nothing, cleanUp }
        let step: Step = state.withLock { s in
            if let thread = s.readerThread {
                s.readerThread = nil
                s.readerTaken = true
                return .join(thread)
            }
            // Another close is joining the reader, which cleans up on its way out.
            return s.readerTaken ? .nothing : .cleanUp
        }
        switch step {
        case .join(let thread):
            if thread.isCurrent {
                thread.detach()
            } else {
                thread.join()
            }
            // Kept after the peer's end of file until now.
            var dropped = state.withLock { $0.table.dropQueued() }
            dropped.removeAll()
        case .nothing:
            break
        case .cleanUp:
            // The reader never started.
            fail(error)
            writer.stop()
        }
    }

    func waitClosed() async -> CircuitError {
        await withContinuation { (c: Continuation<CircuitError, Never>) in
            let done: CircuitError? = state.withLock { s in
                if let failure = s.failure { return failure }
                s.closeWaiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    func sendGrant(_ limit: UInt64, on id: UInt64, fromReader: Bool = false) throws(CircuitError) {
        var value = limit.littleEndian
        try withUnsafeBytes(of: &value) { (bytes) throws(CircuitError) in
            try writer.submitControl(.credit, circuit: id, payload: bytes, mayBlock: !fromReader)
        }
    }

    // MARK: Conversations

    func open() throws(CircuitError) -> QueuedConversation {
        try state.withLock { (s) throws(CircuitError) -> QueuedConversation in
            if let failure = s.failure { throw failure }
            return try s.table.open()
        }
    }

    func accept() async throws -> QueuedConversation {
        while true {
            let next: QueuedConversation? = try state.withLock { s in
                if let c = s.table.nextIncoming() { return c }
                if let failure = s.failure { throw failure }
                return nil
            }
            if let next { return next }
            try await suspend { (s, c) throws(CircuitError) in
                // A conversation may have arrived since the check above.
                if s.table.hasIncoming { c.resume(); return }
                if s.acceptWaiter != nil { throw .concurrentAccept }
                s.acceptWaiter = c
            } cancel: { s in
                defer { s.acceptWaiter = nil }
                return s.acceptWaiter.map { [$0] } ?? []
            }
        }
    }

    func reserved(_ id: UInt64) throws(CircuitError) -> QueuedConversation {
        guard let c = state.withLock({ $0.table.reserved(id) }) else { throw .notReserved(id: id) }
        return c
    }

    /// Registers a continuation under the lock (unless the task is already cancelled or the
    /// transport failed) and waits for it.
    private func suspend(register: @escaping (inout State, Continuation<Void, Error>) throws(CircuitError) -> Void,
                         cancel: @escaping @Sendable (inout State) -> [Continuation<Void, Error>]) async throws {
        try await withTaskCancellationHandler {
            try await withThrowingContinuation { (c: Continuation<Void, Error>) in
                let failure: Error? = state.withLock { s in
                    if let failure = s.failure { return failure }
                    if Task.isCancelled { return CancellationError() }
                    do { try register(&s, c) } catch { return error }
                    return nil
                }
                if let failure { c.resume(throwing: failure) }
            }
        } onCancel: {
            for waiter in state.withLock({ cancel(&$0) }) { waiter.resume(throwing: CancellationError()) }
        }
    }

    /// Waits for credit for a message of `length` bytes and `descriptors` descriptors on the
    /// conversation, and takes it. Must be followed by `write`.
    func acquire(_ conversation: QueuedConversation, length: Int, descriptors: Int, end: Bool) async throws {
        while !(try reserve(conversation, length: length, descriptors: descriptors, end: end)) {
            let cost = TransportConfiguration<UInt64>.cost(payload: length, descriptors: descriptors, end: end)
            do {
                try await suspend { (s, c) throws(CircuitError) in
                    // Credit may have arrived between the check and now.
                    let credit = conversation.credit
                    if credit.sent + UInt64(cost) <= credit.limit {
                        c.resume()
                        return
                    }
                    credit.senders.append(c)
                } cancel: { _ in
                    // Which of the circuit's waiting senders is the cancelled one is not kept:
                    // all are woken with the error, and the others, not cancelled, wait again.
                    defer { conversation.credit.senders = [] }
                    return conversation.credit.senders
                }
            } catch is CancellationError where !Task.isCancelled {
                continue
            }
        }
    }

    /// Takes the credit for a message if the window has room; false when the sender must
    /// wait. Synchronous, so the common case costs no suspension point.
    func reserve(_ conversation: QueuedConversation, length: Int, descriptors: Int, end: Bool) throws(CircuitError) -> Bool {
        try state.withLock { (s) throws(CircuitError) -> Bool in
            if let failure = s.failure { throw failure }
            return try s.table.reserve(conversation, length: length, descriptors: descriptors, end: end, peer: s.peer!)
        }
    }

    /// Sends a message whose credit `acquire` took.
    func write(_ conversation: QueuedConversation, payload: [UInt8], descriptors: [FileDescriptor], end: Bool) async throws(CircuitError) {
        do {
            try await writer.send(circuit: conversation.id, end: end, payload: payload, descriptors: descriptors)
        } catch {
            failFromWriter(error)
            // The first cause, as every other waiter learns it (a local close, say, rather
            // than the EPIPE it caused).
            throw state.withLock { $0.failure } ?? error
        }
        // Submitted frames leave in order, so a queued end counts as written: nothing this
        // side submits later can overtake it.
        if end {
            state.withLock { $0.table.endWritten(conversation) }
        }
    }

    /// The next message.
    func receive(_ conversation: QueuedConversation) async throws -> Message {
        try await take(upTo: 1, from: conversation)[0]
    }

    /// Every message queued on the conversation, waiting for at least one; the end message, if
    /// any, is last. One lock, one credit update and one wake-up for the whole batch.
    func receiveAvailable(_ conversation: QueuedConversation) async throws -> [Message] {
        try await take(upTo: .max, from: conversation)
    }

    /// Up to `limit` queued messages (never past the peer's end), waiting for at least one.
    private func take(upTo limit: Int, from conversation: QueuedConversation) async throws -> [Message] {
        while true {
            let taken: ([Message], UInt64?)? = try state.withLock { (s) throws(CircuitError) in
                if !conversation.queue.isEmpty {
                    var batch: [Message] = []
                    batch.reserveCapacity(min(limit, conversation.queue.count))
                    var cost = 0
                    while batch.count < limit, let message = conversation.queue.pop() {
                        batch.append(message)
                        cost += message.cost
                        if message.isEnd {
                            conversation.consumedEnd = true
                            break
                        }
                    }
                    return (batch, s.table.consume(cost, conversation.credit))
                }
                if let failure = s.failure { throw failure }
                if conversation.consumedEnd { throw .conversationEnded(id: conversation.id) }
                return nil
            }
            if let (batch, grant) = taken {
                // The batch is the caller's whatever happens to the grant: a failed write
                // fails the transport (through the writer), which the next call reports.
                if let grant, state.withLock({ $0.failure == nil }) { try? sendGrant(grant, on: conversation.id) }
                return batch
            }
            try await suspend { (s, c) throws(CircuitError) in
                if !conversation.queue.isEmpty { c.resume(); return }
                if conversation.waiter != nil { throw .concurrentReceive(id: conversation.id) }
                conversation.waiter = c
            } cancel: { _ in
                defer { conversation.waiter = nil }
                return conversation.waiter.map { [$0] } ?? []
            }
        }
    }

    /// Runs `action` once the peer's end arrives, reading nothing until then (what comes is
    /// dropped, its credit returned): a conversation that only waits for its end keeps no
    /// task. At once if the end already came or the transport has stopped.
    func whenPeerEnds(_ conversation: QueuedConversation, _ action: @escaping @Sendable () -> Void) {
        var dropped: [Message] = []
        let (now, grant): (Bool, UInt64?) = state.withLock { s in
            if s.failure != nil || conversation.peerEnded { return (true, nil) }
            dropped = conversation.queue.removeAll()
            var grant: UInt64?
            for m in dropped { grant = s.table.consume(m.cost, conversation.credit) ?? grant }
            conversation.peerEndAction = action
            return (false, grant)
        }
        dropped.removeAll()
        if let grant { try? sendGrant(grant, on: conversation.id) }
        if now { action() }
    }

    /// The handle of an unfinished conversation went away: discard what it would have read,
    /// return the credit, and end this side so the circuit can become idle.
    func abandon(_ conversation: QueuedConversation) {
        guard !conversation.reserved else { return }
        var dropped: [Message] = []
        let (grant, needsEnd): (UInt64?, Bool) = state.withLock { s in
            if s.failure != nil || (conversation.sentEnd && conversation.consumedEnd) { return (nil, false) }
            conversation.abandoned = true
            dropped = conversation.queue.removeAll()
            var grant: UInt64?
            for m in dropped { grant = s.table.consume(m.cost, conversation.credit) ?? grant }
            let needsEnd = !conversation.ending
            if needsEnd { s.table.beginEnding(conversation) }
            return (grant, needsEnd)
        }
        dropped.removeAll()
        do {
            if let grant { try sendGrant(grant, on: conversation.id) }
            if needsEnd {
                // A bare end needs no credit, so this never waits.
                try writer.submitControl(.data, circuit: conversation.id, end: true, payload: UnsafeRawBufferPointer(start: nil, count: 0))
                state.withLock { $0.table.endWritten(conversation) }
            }
        } catch {
            failFromWriter(error)
        }
    }

    /// A write failed. A peer that went away is the reader's to report, once it has read
    /// everything the peer sent before it left; anything else fails the transport now.
    func failFromWriter(_ error: CircuitError) {
        if error != .peerClosed { fail(error) }
    }
}
