import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The reader thread: frames in, routed to circuits through the `ConversationTable`, until
/// end of file or an error. It never runs user code and never waits for a consumer, which is
/// what keeps one stalled circuit from stalling the others.
extension TransportCore {
    func startReader() throws(CircuitError) {
        let thread: Threads.Handle
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
    func runReader() {
        var reader = FrameReader(fd: socket, limits: layout.limits, bufferBytes: layout.receiveBufferBytes)
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
            } else {
                error = e
            }
        }
        _ = consume reader
        fail(error)
        writer.stop()
    }

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
        writer.setLimit(FrameWriter.Queue.PacketLimit(bytes: layout.limits.headerSize + peer.maxPayload,
                                                descriptors: FrameLimits.packetDescriptors(peer.maxDescriptors)))
        let waiter: Continuation<Void, Error>? = try state.withLock { (s) throws(CircuitError) in
            guard s.peer == nil else { throw .malformedHandshake("second handshake") }
            s.peer = peer
            s.table.peerHandshake(window: peer.window)
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
        var endActions: [@Sendable () -> Void] = []
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
                    senders += s.table.raiseLimit(limit, on: h.circuit)
                case .data:
                    let (wake, grant, ended) = try s.table.route(frame)
                    if let wake { wakes.append(wake) }
                    if let ended { endActions.append(ended) }
                    if s.table.hasIncoming, let acceptor = s.acceptWaiter {
                        s.acceptWaiter = nil
                        wakes.append(acceptor)
                    }
                    if let grant { grants.append((h.circuit, grant)) }
                }
            }
        }
        for sender in senders { sender.resume() }
        for action in endActions { action() }
        // Submitting never waits for the peer, so the reader cannot block here (two readers
        // blocked on each other's full buffers would deadlock).
        // A grant for an abandoned conversation that cannot be written (the peer is gone)
        // must not stop the reader before it has read what the peer sent.
        for (id, grant) in grants { try? sendGrant(grant, on: id, fromReader: true) }
    }
}
