import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One end of a transport: many circuits over one socket.
///
/// The API is Swift concurrency (`async` send, receive and accept). The socket itself is read
/// by one dedicated thread per transport, not by an event loop: SwiftNIO channels can neither
/// carry SCM_RIGHTS nor use SOCK_SEQPACKET, and a blocking `recvmmsg` on a thread of its own
/// takes every packet that is ready in one syscall with no readiness round trip. That thread
/// only demultiplexes frames into per-circuit queues; it never runs user code and never waits
/// for a consumer, which is what keeps one stalled circuit from stalling the others. Sending
/// is done by the sending task itself, or by a second thread per transport that writes the
/// tail of a burst (`FrameWriter`: small frames sent close together share packets).
///
/// `close()` writes what senders already handed over first (for at most
/// `closeLingerMilliseconds` when the peer stops reading), then drops what arrived but was
/// not read. After the peer's clean end of file, what arrived before it stays readable until
/// `close()`.
///
/// The conversation life cycle (idle, busy, idle again) and flow control are documented on
/// `Circuit`.
public final class Transport<Id: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    let core: TransportCore

    /// Takes ownership of `socket` (closed on every path, failure included), exchanges
    /// handshakes and returns once the peer's handshake has been checked.
    public static func start(socket: FileDescriptor, kind: TransportKind,
                             configuration: TransportConfiguration<Id>) async throws -> Transport {
        do {
            try configuration.validate()
        } catch {
            try? socket.close()
            throw error
        }
        let core = TransportCore(socket: socket, kind: kind, configuration: configuration)
        let transport = Transport(core: core)
        do {
            try await core.start()
        } catch {
            transport.close()
            throw error
        }
        return transport
    }

    init(core: TransportCore) { self.core = core }

    deinit { core.close(error: .closed) }

    /// Starts a conversation on an idle circuit this side may start on. Throws
    /// `.noIdleCircuit` when all are busy.
    public func open() throws -> Circuit<Id> {
        Circuit(core: core, conversation: try core.open())
    }

    /// Waits for the next conversation the peer starts.
    public func accept() async throws -> Circuit<Id> {
        Circuit(core: core, conversation: try await core.accept())
    }

    /// The agreed reserved circuit `id`.
    public func reserved(_ id: Id) throws -> Circuit<Id> {
        Circuit(core: core, conversation: try core.reserved(UInt64(id)))
    }

    /// The peer's declared intent and build, once the handshake is done.
    public var peerBuild: String { core.peer.build }

    /// Why the transport stopped, or nil while it runs.
    public var failure: CircuitError? { core.state.withLock { $0.failure } }

    /// Waits until the transport stops and returns why (`.peerClosed` when the peer went away).
    public func closed() async -> CircuitError { await core.waitClosed() }

    /// Closes the transport: messages already sent are written first (waiting at most the
    /// configured linger for a peer that does not read), then every waiter fails with
    /// `.closed`, received messages not yet read are dropped (their descriptors closed) and
    /// the socket is closed. Returns once the reader and writer threads have stopped.
    public func close() { core.close(error: .closed) }

    /// What has crossed the socket so far: frames (messages, credit grants, handshakes) and
    /// the writes and reads that carried them. Small frames that follow each other share a
    /// packet, so a busy transport shows fewer writes than frames.
    public var statistics: TransportStatistics {
        let (frames, writes) = core.writer.counts
        return TransportStatistics(framesSent: frames, writes: writes,
                                   framesReceived: core.framesReceived.load(ordering: .relaxed),
                                   reads: core.reads.load(ordering: .relaxed))
    }

    /// Number of circuits currently busy (reserved ones excluded).
    public var busyCircuits: Int {
        core.state.withLock { s in s.conversations.values.filter { !$0.reserved }.count }
    }
}

/// Per-conversation state. Touched only with `TransportCore.state` locked.
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
/// A reference, so conversations reach theirs without a lookup. Touched only with
/// `TransportCore.state` locked.
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

/// Counters of one transport's traffic (see `Transport.statistics`).
public struct TransportStatistics: Sendable, Equatable {
    public var framesSent: Int
    /// sendmsg calls (packets on a packet socket).
    public var writes: Int
    public var framesReceived: Int
    /// Packets received (recv calls on a stream).
    public var reads: Int
}

final class TransportCore: Sendable {
    struct Layout {
        var idBytes: Int
        var maxCircuits: UInt64
        var band: UInt64
        var reserved: [UInt64: String]
        var side: TransportSide
        var window: UInt64
        var handshake: Handshake
        var limits: FrameLimits { FrameLimits(idBytes: idBytes, maxCircuits: maxCircuits, maxPayload: handshake.maxPayload, maxDescriptors: handshake.maxDescriptors) }
    }

    struct State {
        var failure: CircuitError?
        var peer: Handshake?
        var handshakeWaiter: Continuation<Void, Error>?
        var closeWaiters: [Continuation<CircuitError, Never>] = []
        var conversations: [UInt64: Conversation] = [:]
        var credits: [UInt64: Credit] = [:]
        var incoming = FIFO<Conversation>()
        var acceptWaiter: Continuation<Void, Error>?
        var idleOwnIds = FIFO<UInt64>()
        var nextFreshId: UInt64
        var readerThread: pthread_t?
        /// A `close` took `readerThread` to join it: the reader closes the socket itself.
        var readerTaken = false
    }

    let layout: Layout
    let writer: FrameWriter
    let kind: TransportKind
    let socket: FileDescriptor
    let state: Mutex<State>
    let framesReceived = Atomic<Int>(0)
    let reads = Atomic<Int>(0)
    private let handshakeTimeout: Int
    private let lingerMilliseconds: Int

    init<Id>(socket: FileDescriptor, kind: TransportKind, configuration c: TransportConfiguration<Id>) {
        let idBytes = Id.bitWidth / 8
        let handshake = Handshake(intent: c.intent, build: c.build, side: c.side, idBytes: idBytes,
                                  maxCircuits: c.maxCircuits, reservedBand: UInt64(c.reservedBand),
                                  reserved: Dictionary(uniqueKeysWithValues: c.reserved.map { (UInt64($0.key), $0.value) }),
                                  window: UInt64(c.window), maxPayload: c.maxPayload,
                                  maxDescriptors: c.maxDescriptorsPerMessage)
        layout = Layout(idBytes: idBytes, maxCircuits: c.maxCircuits, band: UInt64(c.reservedBand),
                        reserved: handshake.reserved, side: c.side, window: UInt64(c.window), handshake: handshake)
        self.kind = kind
        self.socket = socket
        writer = FrameWriter(fd: socket, kind: kind, idBytes: idBytes)
        handshakeTimeout = c.handshakeTimeoutMilliseconds
        lingerMilliseconds = c.closeLingerMilliseconds
        // The first id this side owns at or above the band.
        var first = UInt64(c.reservedBand)
        if !c.side.owns(first) { first += 1 }
        var initial = State(nextFreshId: first)
        for id in handshake.reserved.keys {
            // The peer's window is not known yet; `start` sets the limit after the handshake.
            let credit = Credit(limit: 0, granted: UInt64(c.window))
            initial.credits[id] = credit
            initial.conversations[id] = Conversation(id: id, reserved: true, credit: credit)
        }
        state = Mutex(initial)
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

    private func startReader() throws(CircuitError) {
        let thread: pthread_t
        do { thread = try Threads.start("circuits-reader") { self.runReader() } } catch { throw .system(error) }
        state.withLock { $0.readerThread = thread }
    }

    /// While more is ready, the reader dispatches up to 64 frames and 64 KiB of payload per
    /// consumer it will wake (256 frames at most) before waking them. Per consumer: with
    /// many busy circuits every wake-up is a task of its own, and waking them in larger
    /// groups made 4 KiB over 64 circuits 10–15 % faster, while a single bulk circuit still
    /// gets its messages (and returns credit) every 64 KiB. Measured and not kept: 1024
    /// frames for any number of consumers (descriptor traffic over 64 circuits 5 % slower),
    /// 256 frames for one consumer (64 B with descriptors on one circuit slower).
    static var drainFramesPerWake: Int { 64 }
    static var drainFrames: Int { 256 }
    static var drainBytesPerWake: Int { 64 * 1024 }

    /// The reader thread: frames in, dispatched to circuits, until end of file or an error.
    private func runReader() {
        var reader = FrameReader(fd: socket, kind: kind, limits: layout.limits)
        var error: CircuitError
        // Consumers to wake. Waking a task costs a thread hand-off, so wake-ups wait until
        // the whole batch the kernel had ready is dispatched: a burst of frames costs one
        // wake-up per circuit, while a lone frame is handed over at once.
        var wakes: [Continuation<Void, Error>] = []
        var frames: [Frame] = []
        var handshakeDone = false
        defer { for w in wakes { w.resume() } }
        do {
            while true {
                frames.removeAll(keepingCapacity: true)
                var more = try reader.readBatch(into: &frames)
                try dispatchBatch(frames, handshakeDone: &handshakeDone, wakes: &wakes)
                // Before handing over, take what arrived meanwhile: a receive queue holds
                // only about ten packets (net.unix.max_dgram_qlen), and every hand-over is a
                // context switch on the consumer's side. Bounded per consumer in bytes too:
                // large messages gain nothing from waiting together, and held-back payloads
                // are memory (and credit) the consumer cannot return yet.
                var taken = frames.count
                var bytes = frames.reduce(0) { $0 + $1.payload.count }
                while more {
                    let waking = max(1, wakes.count)
                    guard taken < min(Self.drainFrames, Self.drainFramesPerWake * waking),
                          bytes < Self.drainBytesPerWake * waking else { break }
                    frames.removeAll(keepingCapacity: true)
                    guard let queued = try reader.readQueued(into: &frames) else { break }
                    more = queued
                    taken += frames.count
                    bytes += frames.reduce(0) { $0 + $1.payload.count }
                    try dispatchBatch(frames, handshakeDone: &handshakeDone, wakes: &wakes)
                }
                framesReceived.add(taken, ordering: .relaxed)
                reads.store(reader.reads, ordering: .relaxed)
                for w in wakes { w.resume() }
                wakes.removeAll(keepingCapacity: true)
                if !more {
                    error = .peerClosed
                    break
                }
            }
        } catch let e {
            // After a local close the socket was shut down under us; report that, not the
            // EOF or EPIPE it caused.
            if case .system(let s) = e, s.errno == .wouldBlock || s.errno == .resourceTemporarilyUnavailable,
               state.withLock({ $0.peer == nil }) {
                error = .handshakeTimeout(milliseconds: handshakeTimeout)
            } else if case .system(let s) = e, s.errno == .connectionReset {
                // A stream peer that exits with our data unread resets the connection.
                error = .peerClosed
            } else {
                error = e
            }
        }
        _ = consume reader
        fail(error)
        writer.stop()
    }

    /// Marks the transport failed (first cause wins) and wakes everything that waits.
    /// What arrived before a clean end of file stays readable (a peer may send its last
    /// words and exit) until the transport is closed here; any other failure drops it at once.
    func fail(_ error: CircuitError) {
        var dropped: [Message] = []
        var waiters: [Continuation<Void, Error>] = []
        var closeWaiters: [Continuation<CircuitError, Never>] = []
        let cause: CircuitError = state.withLock { s in
            if s.failure == nil { s.failure = error }
            let cause = s.failure!
            if let w = s.handshakeWaiter { waiters.append(w); s.handshakeWaiter = nil }
            if let w = s.acceptWaiter { waiters.append(w); s.acceptWaiter = nil }
            for conversation in s.conversations.values {
                if let w = conversation.waiter { waiters.append(w); conversation.waiter = nil }
            }
            if cause != .peerClosed { dropped = dropQueued(&s) }
            for credit in s.credits.values {
                waiters += credit.senders
                credit.senders = []
            }
            closeWaiters = s.closeWaiters
            s.closeWaiters = []
            return cause
        }
        for w in waiters { w.resume(throwing: cause) }
        for w in closeWaiters { w.resume(returning: cause) }
        dropped.removeAll()  // closes their descriptors
    }

    /// Takes every queued message out (lock held), for the caller to drop outside the lock.
    private func dropQueued(_ s: inout State) -> [Message] {
        var dropped: [Message] = []
        for conversation in s.conversations.values { dropped += conversation.queue.removeAll() }
        for incoming in s.incoming.removeAll() { dropped += incoming.queue.removeAll() }
        return dropped
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
        enum Step { case join(pthread_t), nothing, cleanUp }
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
            if pthread_equal(thread, pthread_self()) != 0 {
                pthread_detach(thread)
            } else {
                pthread_join(thread, nil)
            }
            // Kept after the peer's end of file until now.
            var dropped = state.withLock { dropQueued(&$0) }
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

    // MARK: Reader side

    /// Dispatches one batch from the socket. Handshake frames are handled alone; everything
    /// else is delivered under one lock for the whole batch.
    private func dispatchBatch(_ frames: [Frame], handshakeDone: inout Bool,
                               wakes: inout [Continuation<Void, Error>]) throws(CircuitError) {
        var start = 0
        for (i, frame) in frames.enumerated() where frame.header.kind == .handshake {
            try deliver(frames[start..<i], handshakeDone: handshakeDone, wakes: &wakes)
            try acceptHandshake(frame)
            handshakeDone = true
            start = i + 1
        }
        try deliver(frames[start...], handshakeDone: handshakeDone, wakes: &wakes)
    }

    private func acceptHandshake(_ frame: Frame) throws(CircuitError) {
        let peer = try Handshake.decode(frame.payload)
        try layout.handshake.check(peer: peer)
        do { try SocketCalls.setReceiveTimeout(socket, milliseconds: 0) } catch { throw .system(error) }
        // From now on frames may share packets, within what the peer receives in one.
        writer.setLimit(FrameWriter.PacketLimit(bytes: layout.limits.headerSize + peer.maxPayload,
                                                descriptors: FrameLimits.packetDescriptors(peer.maxDescriptors)))
        let waiter: Continuation<Void, Error>? = try state.withLock { (s) throws(CircuitError) in
            guard s.peer == nil else { throw .malformedHandshake("second handshake") }
            s.peer = peer
            for credit in s.credits.values { credit.limit = max(credit.limit, peer.window) }
            defer { s.handshakeWaiter = nil }
            return s.handshakeWaiter
        }
        waiter?.resume()
    }

    /// Data and credit frames, under one lock. Consumers to wake are added to `wakes`;
    /// senders waiting for credit are resumed right away.
    private func deliver(_ frames: ArraySlice<Frame>, handshakeDone: Bool,
                         wakes: inout [Continuation<Void, Error>]) throws(CircuitError) {
        guard let first = frames.first else { return }
        guard handshakeDone else {
            throw .malformedHandshake("a \(first.header.kind) frame arrived before the handshake")
        }
        var senders: [Continuation<Void, Error>] = []
        var grants: [(UInt64, UInt64)] = []
        try state.withLock { (s) throws(CircuitError) in
            for frame in frames {
                let h = frame.header
                if h.circuit < layout.band && layout.reserved[h.circuit] == nil {
                    throw .unagreedReservedCircuit(id: h.circuit)
                }
                switch h.kind {
                case .handshake:
                    preconditionFailure("handled by dispatchBatch")
                case .credit:
                    guard frame.payload.count == 8 else { throw .malformedCredit(id: h.circuit) }
                    let limit = frame.payload.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    let credit = self.credit(h.circuit, &s)
                    credit.limit = max(credit.limit, limit)
                    senders += credit.senders
                    credit.senders = []
                case .data:
                    let (wake, grant) = try deliver(frame, &s)
                    if let wake { wakes.append(wake) }
                    if let grant { grants.append((h.circuit, grant)) }
                }
            }
        }
        for sender in senders { sender.resume() }
        // Submitting never waits for the peer, so the reader cannot block here (two readers
        // blocked on each other's full buffers would deadlock).
        // A grant for an abandoned conversation that cannot be written (the peer is gone)
        // must not stop the reader before it has read what the peer sent.
        for (id, grant) in grants { try? sendGrant(grant, on: id, fromReader: true) }
    }

    /// The counters of `id`, created on first use.
    private func credit(_ id: UInt64, _ s: inout State) -> Credit {
        if let existing = s.credits[id] { return existing }
        let created = Credit(limit: s.peer?.window ?? 0, granted: layout.window)
        s.credits[id] = created
        return created
    }

    /// Queues a data frame on its conversation (lock held). Returns a waiting consumer to
    /// wake, and a credit grant to send when the conversation was abandoned.
    private func deliver(_ frame: Frame, _ s: inout State) throws(CircuitError) -> (Continuation<Void, Error>?, UInt64?) {
        let h = frame.header
        let cost = TransportConfiguration<UInt64>.cost(payload: h.length, descriptors: h.descriptorCount, end: h.end)
        var wake: Continuation<Void, Error>?
        let conversation: Conversation
        if let existing = s.conversations[h.circuit] {
            conversation = existing
        } else {
            guard !layout.side.owns(h.circuit) else { throw .messageOnIdleCircuit(id: h.circuit) }
            conversation = Conversation(id: h.circuit, reserved: false, credit: credit(h.circuit, &s))
            s.conversations[h.circuit] = conversation
            s.incoming.push(conversation)
            wake = s.acceptWaiter
            s.acceptWaiter = nil
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
            if conversation.ending { unroute(conversation, &s) }
            if conversation.sentEnd { recycle(conversation, &s) }
        }
        if conversation.abandoned {
            // Not queued: dropped (descriptors closed) here.
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

    /// Stops routing frames to a conversation once both ends are done with it: the peer has
    /// ended, and this side has committed to its end (it may still be writing it). Any later
    /// frame on the id starts a new conversation, which the peer can only do after our end
    /// arrived. The handle keeps the messages it has not read yet.
    private func unroute(_ conversation: Conversation, _ s: inout State) {
        guard s.conversations[conversation.id] === conversation else { return }
        s.conversations[conversation.id] = nil
    }

    /// Makes an id of ours available to `open()` again, once our end frame is on the wire and
    /// the peer's has arrived: a new first message can then never overtake our end. Called
    /// exactly once per conversation, by whichever of the two events comes second.
    private func recycle(_ conversation: Conversation, _ s: inout State) {
        if layout.side.owns(conversation.id) { s.idleOwnIds.push(conversation.id) }
    }

    /// This side commits to its end (before writing it).
    private func beginEnding(_ conversation: Conversation, _ s: inout State) {
        conversation.ending = true
        if conversation.peerEnded { unroute(conversation, &s) }
    }

    /// This side's end frame has been written.
    private func endWritten(_ conversation: Conversation, _ s: inout State) {
        conversation.sentEnd = true
        if conversation.peerEnded { recycle(conversation, &s) }
    }

    /// Accounts a consumed message; returns a new limit to grant when half a window has been
    /// consumed since the last grant.
    private func consume(_ cost: Int, _ credit: Credit) -> UInt64? {
        credit.consumed += UInt64(cost)
        guard credit.consumed + layout.window - credit.granted >= layout.window / 2 else { return nil }
        credit.granted = credit.consumed + layout.window
        return credit.granted
    }

    private func sendGrant(_ limit: UInt64, on id: UInt64, fromReader: Bool = false) throws(CircuitError) {
        var value = limit.littleEndian
        try withUnsafeBytes(of: &value) { (bytes) throws(CircuitError) in
            try writer.submitControl(.credit, circuit: id, payload: bytes, mayBlock: !fromReader)
        }
    }

    // MARK: Conversations

    func open() throws(CircuitError) -> Conversation {
        try state.withLock { (s) throws(CircuitError) -> Conversation in
            if let failure = s.failure { throw failure }
            let id: UInt64
            if let reused = s.idleOwnIds.pop() {
                id = reused
            } else if s.nextFreshId < layout.maxCircuits {
                id = s.nextFreshId
                s.nextFreshId = s.nextFreshId &+ 2
                if s.nextFreshId < id { s.nextFreshId = layout.maxCircuits }  // wrapped at UInt64.max
            } else {
                throw .noIdleCircuit
            }
            let conversation = Conversation(id: id, reserved: false, credit: credit(id, &s))
            s.conversations[id] = conversation
            return conversation
        }
    }

    func accept() async throws -> Conversation {
        while true {
            let next: Conversation? = try state.withLock { s in
                if let c = s.incoming.pop() { return c }
                if let failure = s.failure { throw failure }
                return nil
            }
            if let next { return next }
            try await suspend { (s, c) throws(CircuitError) in
                // A conversation may have arrived since the check above.
                if !s.incoming.isEmpty { c.resume(); return }
                if s.acceptWaiter != nil { throw .concurrentAccept }
                s.acceptWaiter = c
            } cancel: { s in
                defer { s.acceptWaiter = nil }
                return s.acceptWaiter
            }
        }
    }

    func reserved(_ id: UInt64) throws(CircuitError) -> Conversation {
        guard let c = state.withLock({ $0.conversations[id] }), c.reserved else { throw .notReserved(id: id) }
        return c
    }

    /// Registers a continuation under the lock (unless the task is already cancelled or the
    /// transport failed) and waits for it.
    private func suspend(register: @escaping (inout State, Continuation<Void, Error>) throws(CircuitError) -> Void,
                         cancel: @escaping @Sendable (inout State) -> Continuation<Void, Error>?) async throws {
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
            state.withLock { cancel(&$0) }?.resume(throwing: CancellationError())
        }
    }

    /// Waits for credit for a message of `length` bytes and `descriptors` descriptors on the
    /// conversation, and takes it. Must be followed by `write`.
    func acquire(_ conversation: Conversation, length: Int, descriptors: Int, end: Bool) async throws {
        while !(try reserve(conversation, length: length, descriptors: descriptors, end: end)) {
            let cost = TransportConfiguration<UInt64>.cost(payload: length, descriptors: descriptors, end: end)
            try await suspend { (s, c) throws(CircuitError) in
                // Credit may have arrived between the check and now.
                let credit = conversation.credit
                if credit.sent + UInt64(cost) <= credit.limit {
                    c.resume()
                    return
                }
                credit.senders.append(c)
            } cancel: { _ in nil }
        }
    }

    /// Takes the credit for a message if the window has room; false when the sender must
    /// wait. Synchronous, so the common case costs no suspension point.
    func reserve(_ conversation: Conversation, length: Int, descriptors: Int, end: Bool) throws(CircuitError) -> Bool {
        let cost = TransportConfiguration<UInt64>.cost(payload: length, descriptors: descriptors, end: end)
        let id = conversation.id
        return try state.withLock { (s) throws(CircuitError) -> Bool in
            if let failure = s.failure { throw failure }
            let peer = s.peer!
            if conversation.ending { throw .conversationEnded(id: id) }
            if end && conversation.reserved { throw .endOnReservedCircuit(id: id) }
            if length > peer.maxPayload || descriptors > peer.maxDescriptors || UInt64(cost) > peer.window {
                throw .messageTooLarge(length: length, descriptors: descriptors,
                                       peerLimit: peer.maxPayload, peerDescriptorLimit: peer.maxDescriptors)
            }
            let credit = conversation.credit
            guard credit.sent + UInt64(cost) <= credit.limit else { return false }
            credit.sent += UInt64(cost)
            if end { beginEnding(conversation, &s) }
            return true
        }
    }

    /// Sends a message whose credit `acquire` took.
    func write(_ conversation: Conversation, payload: [UInt8], descriptors: [FileDescriptor], end: Bool) async throws(CircuitError) {
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
            state.withLock { endWritten(conversation, &$0) }
        }
    }

    /// The next message.
    func receive(_ conversation: Conversation) async throws -> Message {
        try await take(upTo: 1, from: conversation)[0]
    }

    /// Every message queued on the conversation, waiting for at least one; the end message, if
    /// any, is last. One lock, one credit update and one wake-up for the whole batch.
    func receiveAvailable(_ conversation: Conversation) async throws -> [Message] {
        try await take(upTo: .max, from: conversation)
    }

    /// Up to `limit` queued messages (never past the peer's end), waiting for at least one.
    private func take(upTo limit: Int, from conversation: Conversation) async throws -> [Message] {
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
                    return (batch, consume(cost, conversation.credit))
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
                return conversation.waiter
            }
        }
    }

    /// The handle of an unfinished conversation went away: discard what it would have read,
    /// return the credit, and end this side so the circuit can become idle.
    func abandon(_ conversation: Conversation) {
        guard !conversation.reserved else { return }
        var dropped: [Message] = []
        let (grant, needsEnd): (UInt64?, Bool) = state.withLock { s in
            if s.failure != nil || (conversation.sentEnd && conversation.consumedEnd) { return (nil, false) }
            conversation.abandoned = true
            dropped = conversation.queue.removeAll()
            var grant: UInt64?
            for m in dropped { grant = consume(m.cost, conversation.credit) ?? grant }
            let needsEnd = !conversation.ending
            if needsEnd { beginEnding(conversation, &s) }
            return (grant, needsEnd)
        }
        dropped.removeAll()
        do {
            if let grant { try sendGrant(grant, on: conversation.id) }
            if needsEnd {
                // A bare end needs no credit, so this never waits.
                try writer.submitControl(.data, circuit: conversation.id, end: true, payload: UnsafeRawBufferPointer(start: nil, count: 0))
                state.withLock { endWritten(conversation, &$0) }
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
