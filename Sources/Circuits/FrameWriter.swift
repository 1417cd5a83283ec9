import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Writes frames to the transport's socket, in the order they are submitted, from any thread:
/// the I/O around a `WriteQueue`, which decides the rest.
///
/// The kernel's cost is per packet: about a microsecond on each side, nearly the same for
/// 64 bytes as for 64 KiB. So small frames that follow each other closely share packets:
///
/// - A frame that comes alone (nothing queued or being written, and the previous frame was
///   submitted more than `corkNanoseconds` ago) is written at once by the thread that submits
///   it: one `sendmsg`, no hand-off, so a keystroke pays no extra latency.
/// - A small frame (at most a quarter of the peer's packet) that follows another closely, or
///   finds the socket busy, is copied into the open packet of the queue. A sender whose frame
///   completes a packet writes the complete packets itself, so a burst costs one `sendmsg` per
///   peer-sized packet and no thread hand-off. The transport's writer thread writes the last,
///   incomplete packet once no frame has come for `corkNanoseconds`.
/// - A large frame, or one whose descriptors cannot be queued, is written by its own sender
///   (no copy; its own descriptors). It goes alongside the queue when nothing of its circuit
///   is queued or being written (packets are atomic, and the order the protocol relies on is
///   per circuit id); otherwise it waits for its turn in the queue.
///
/// Every submitted frame is written unless the transport fails first; `drain` waits for the
/// queue before a close. A queued frame's descriptors are duplicated, so the sender keeps its
/// own copies exactly as with a direct write.
final class FrameWriter: @unchecked Sendable {
    typealias Queue = WriteQueue<Continuation<Bool, Never>>

    private struct State {
        var fd: FileDescriptor?
        var failure: CircuitError?
        var stopping = false
        var queue = Queue()
        /// The writer thread waits without a deadline: a new entry must wake it.
        var writerSleeping = false
        var drainWaiters = 0
        var roomWaiters: [Continuation<Void, Never>] = []
        var thread: Threads.Handle?
        var onFailure: (@Sendable (CircuitError) -> Void)?
        /// Frames submitted, and sendmsg calls that sent something.
        var frames = 0
        var writes = 0
    }

    let idBytes: Int
    private let lock = ConditionLock()
    /// Guarded by `lock`. (The module's release build skips run-time exclusivity checks,
    /// which cost several percent of the per-message path.)
    private var s: State
    /// When the last frame was submitted (monotonic nanoseconds). Written under the lock;
    /// the writer thread reads it without, so that watching a burst never holds up a sender.
    private let lastSubmit = Atomic<UInt64>(0)

    /// Frames closer together than this are taken for a burst and share packets; the last
    /// packet of a burst leaves this long (plus timer slack) after its last frame.
    static var corkNanoseconds: UInt64 { 20_000 }
    /// Complete packets a sender writes for others before leaving the rest to the writer
    /// thread, so that no sender is held up indefinitely by the others' traffic.
    static var maxPacketsPerSender: Int { 4 }

    init(fd: FileDescriptor, idBytes: Int) {
        self.idBytes = idBytes
        s = State(fd: fd)
    }

    /// Starts the writer thread. `onFailure` learns of a failed write of a queued frame,
    /// which nobody waits for any more.
    func start(onFailure: @escaping @Sendable (CircuitError) -> Void) throws(CircuitError) {
        lock.withLock { s.onFailure = onFailure }
        let thread: Threads.Handle
        do { thread = try Threads.start("circuits-writer") { self.runWriter() } } catch { throw .system(error) }
        lock.withLock { s.thread = thread }
    }

    /// Frames submitted and writes (sendmsg calls) that carried them so far.
    var counts: (frames: Int, writes: Int) { lock.withLock { (s.frames, s.writes) } }

    /// The peer's limits are known: frames may share packets from now on.
    func setLimit(_ limit: Queue.PacketLimit) {
        lock.withLock { s.queue.limit = limit }
    }

    // MARK: Submitting

    /// Sends a data frame: written at once, queued, or written by this task when its turn
    /// comes. Waits for its turn, and for room when the queue is over its bound; waits for
    /// the peer to read only while writing its own frame.
    func send(circuit: UInt64, end: Bool, payload: [UInt8], descriptors: [FileDescriptor]) async throws(CircuitError) {
        let header = EncodedHeader(.data, circuit: circuit, end: end, length: payload.count,
                                   descriptors: descriptors.count, idBytes: idBytes)
        enum Plan { case write(FileDescriptor, small: Bool), alongside(FileDescriptor), queued(overBound: Bool), waitForRoom, waitForTurn }
        while true {
            let plan: Plan = try header.with(payload) { h, p throws(CircuitError) in
                try lock.withLock { () throws(CircuitError) -> Plan in
                    let fd = try usableDescriptor()
                    let corked = noteSubmission()
                    s.frames += 1
                    if s.queue.isSmall(size: h.count + p.count, descriptors: descriptors.count) {
                        if s.queue.idle && !corked {
                            s.queue.writing = true
                            return .write(fd, small: true)
                        }
                        switch enqueue(h, p, descriptors, circuit: circuit) {
                        case .queued: return .queued(overBound: s.queue.isOverBound)
                        case .descriptorsOverShare:
                            s.frames -= 1  // counted again when it is submitted after the wait
                            return .waitForRoom
                        case .duplicateFailed: break
                        }
                    }
                    // Large frames thus cost no copy and no hand-off, and several may wait in
                    // sendmsg at once.
                    if !s.queue.hasQueuedFrame(on: circuit) {
                        s.queue.alongside += 1
                        return .alongside(fd)
                    }
                    if s.queue.idle {
                        s.queue.writing = true
                        return .write(fd, small: false)
                    }
                    return .waitForTurn
                }
            }
            switch plan {
            case .queued(let overBound):
                flushCompletePackets()
                if overBound { await waitForRoom() }
            case .waitForRoom:
                await waitForRoom()
                continue
            case .write(let fd, let small):
                try header.with(payload) { h, p throws(CircuitError) in
                    try writeOwn(fd, h, p, descriptors, circuit: circuit, mayQueue: small)
                }
            case .alongside(let fd):
                let result = try header.with(payload) { h, p throws(CircuitError) in
                    sendFrame(fd, h, p, descriptors, blocking: true)
                }
                let stopped = lock.withLock {
                    s.queue.alongside -= 1
                    if case .success = result { s.writes += 1 }
                    return s.stopping
                }
                if case .failure(let error) = result {
                    fail(error, releasing: false)
                    throw error
                }
                if stopped { closeIfDone() }
            case .waitForTurn:
                let mine = await withContinuation { (c: Continuation<Bool, Never>) in
                    let now: Bool? = lock.withLock {
                        if s.failure != nil || s.stopping { return false }
                        if s.queue.idle {
                            s.queue.writing = true
                            return true
                        }
                        s.queue.appendTurn(c)
                        wakeWriterIfSleeping()
                        return nil
                    }
                    if let now { c.resume(returning: now) }
                }
                guard mine, let fd = lock.withLock({ s.fd }) else { throw lock.withLock { s.failure ?? .closed } }
                try header.with(payload) { h, p throws(CircuitError) in
                    try writeOwn(fd, h, p, descriptors, circuit: circuit, mayQueue: false)
                }
            }
            return
        }
    }

    /// Sends a control frame (handshake, credit, a bare end): written at once when it comes
    /// alone, queued otherwise; these are small and carry no descriptors. Never waits for
    /// its own frame; with `mayBlock` the caller may write other senders' complete packets
    /// (as any sender does), without it (the reader thread, which must never block on the
    /// peer) those are left to the writer thread.
    func submitControl(_ kind: FrameKind, circuit: UInt64, end: Bool = false, payload: UnsafeRawBufferPointer,
                       mayBlock: Bool = true) throws(CircuitError) {
        let header = EncodedHeader(kind, circuit: circuit, end: end, length: payload.count, descriptors: 0, idBytes: idBytes)
        // Only data frames take part in the per-circuit order (see `send`).
        let dataCircuit = kind == .data ? circuit : nil
        let direct: FileDescriptor? = try header.with([]) { h, _ throws(CircuitError) in
            try lock.withLock { () throws(CircuitError) -> FileDescriptor? in
                let fd = try usableDescriptor()
                let corked = noteSubmission()
                s.frames += 1
                if s.queue.idle && !corked {
                    s.queue.writing = true
                    return fd
                }
                _ = enqueue(h, payload, [], circuit: dataCircuit)
                return nil
            }
        }
        if let direct {
            try header.with([]) { h, _ throws(CircuitError) in
                try writeOwn(direct, h, payload, [], circuit: dataCircuit, mayQueue: true, mayBlock: mayBlock)
            }
        } else {
            flushCompletePackets(mayBlock: mayBlock)
        }
    }

    /// A frame header in place, so that sending allocates nothing for it.
    private struct EncodedHeader {
        private var storage: (UInt64, UInt64) = (0, 0)
        private let count: Int

        init(_ kind: FrameKind, circuit: UInt64, end: Bool, length: Int, descriptors: Int, idBytes: Int) {
            count = FrameHeader.size(idBytes: idBytes)
            precondition(count <= MemoryLayout.size(ofValue: storage))
            let header = FrameHeader(kind: kind, end: end, descriptorCount: descriptors, length: length, circuit: circuit)
            withUnsafeMutableBytes(of: &storage) { header.encode(into: $0, idBytes: idBytes) }
        }

        /// Runs `body` with the header's bytes and the payload's.
        func with<R>(_ payload: [UInt8], _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws(CircuitError) -> R) throws(CircuitError) -> R {
            let result: Result<R, CircuitError> = withUnsafeBytes(of: storage) { h in
                payload.withUnsafeBytes { p in
                    Result { () throws(CircuitError) -> R in try body(UnsafeRawBufferPointer(rebasing: h[..<count]), p) }
                }
            }
            return try result.get()
        }
    }

    /// The socket, or why frames can no longer be sent (lock held).
    private func usableDescriptor() throws(CircuitError) -> FileDescriptor {
        if let failure = s.failure { throw failure }
        guard let fd = s.fd, !s.stopping else { throw .closed }
        return fd
    }

    /// Records a submission; true when it follows the previous one closely (lock held).
    private func noteSubmission() -> Bool {
        let now = Self.monotonicNanoseconds()
        let previous = lastSubmit.exchange(now, ordering: .relaxed)
        return now &- previous < Self.corkNanoseconds
    }

    private static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }

    /// Writes a frame with the socket this thread owns, then hands the socket on. A small
    /// frame (`mayQueue`) is written without blocking and queued first in line if the
    /// socket is full; any other blocks until the peer makes room. `circuit` is the id of a
    /// data frame, nil for a control frame.
    private func writeOwn(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                          _ descriptors: [FileDescriptor], circuit: UInt64?, mayQueue: Bool,
                          mayBlock: Bool = true) throws(CircuitError) {
        var result = sendFrame(fd, header, payload, descriptors, blocking: !mayQueue)
        if case .success(false) = result {
            // The socket is full. Queue the frame in front of whatever was submitted
            // meanwhile, unless its descriptors cannot be queued: then wait for the peer.
            let queued = lock.withLock {
                enqueue(header, payload, descriptors, circuit: circuit, atFront: true)
            }
            if queued != .queued { result = sendFrame(fd, header, payload, descriptors, blocking: true) }
        }
        if case .failure(let error) = result {
            fail(error, releasing: true)
            throw error
        }
        if case .success(true) = result { lock.withLock { s.writes += 1 } }
        flushCompletePackets(releasing: true, mayBlock: mayBlock)
    }

    /// One sendmsg of the frame; `.success(false)` when the socket was full (not blocking).
    private func sendFrame(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                           _ descriptors: [FileDescriptor], blocking: Bool) -> Result<Bool, CircuitError> {
        // FileDescriptor is a single CInt, so the array's storage is already what
        // SCM_RIGHTS wants.
        descriptors.withUnsafeBufferPointer { fds in
            let raw = UnsafeRawBufferPointer(fds).bindMemory(to: CInt.self)
            do throws(CircuitError) {
                return .success(try Self.send(fd, header, payload, raw, blocking: blocking))
            } catch {
                return .failure(error)
            }
        }
    }

    private enum Enqueued { case queued, descriptorsOverShare, duplicateFailed }

    /// Copies a small frame into the queue (lock held), with duplicates of its descriptors.
    /// Not queued when they would exceed the queue's share or cannot be made (EMFILE).
    private func enqueue(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                         _ descriptors: [FileDescriptor], circuit: UInt64?, atFront: Bool = false) -> Enqueued {
        var duplicates: [CInt] = []
        if !descriptors.isEmpty {
            guard s.queue.admits(descriptors: descriptors.count) else { return .descriptorsOverShare }
            duplicates.reserveCapacity(descriptors.count)
            for fd in descriptors {
                guard let copy = try? valueOrErrno("fcntl(F_DUPFD_CLOEXEC)", { fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0) }) else {
                    for d in duplicates { close(d) }
                    return .duplicateFailed
                }
                duplicates.append(copy)
            }
        }
        s.queue.append(header: header, payload: payload, duplicates: duplicates, circuit: circuit, atFront: atFront)
        wakeWriterIfSleeping()
        return .queued
    }

    private func wakeWriterIfSleeping() {
        if s.writerSleeping {
            s.writerSleeping = false
            lock.broadcast()
        }
    }

    // MARK: Handing the socket on

    /// Who writes next (lock held); nothing once stopped or failed.
    private func next(takeOpen: Bool) -> (Queue.Next, FileDescriptor?) {
        guard let fd = s.fd, !s.stopping, s.failure == nil else { return (.nothing, nil) }
        let next = s.queue.next(takeOpen: takeOpen)
        switch next {
        case .nothing:
            if s.queue.idle && s.drainWaiters > 0 { lock.broadcast() }
        case .openPacketWaits:
            wakeWriterIfSleeping()
        case .handOff, .write:
            break
        }
        return (next, fd)
    }

    /// Writes complete packets at the head of the queue with this thread, at most
    /// `maxPacketsPerSender` (none without `mayBlock`), then hands the socket on. With
    /// `releasing`, this thread owns the socket on entry.
    private func flushCompletePackets(releasing: Bool = false, mayBlock: Bool = true) {
        var written = 0
        lock.lock()
        if releasing { s.queue.writing = false }
        while true {
            let mine = mayBlock && written < Self.maxPacketsPerSender
            let step = mine || s.queue.headIsTurn ? next(takeOpen: false) : (.nothing, nil)
            if !mine && !s.queue.writing && !s.queue.isEmpty {
                // Left to the writer thread, even if it is waiting for a burst to end.
                s.writerSleeping = false
                lock.broadcast()
            }
            switch step {
            case (.nothing, _), (.openPacketWaits, _), (.write, nil):
                let stopped = s.stopping && !s.queue.writing
                lock.unlock()
                if stopped { closeIfDone() }
                return
            case (.handOff(let c), _):
                lock.unlock()
                c.resume(returning: true)
                return
            case (.write(let packet), let fd?):
                lock.unlock()
                writePacket(packet, fd)
                written += 1
                lock.lock()
            }
        }
    }

    /// Writes a packet taken from the queue, closes its duplicates and releases the socket
    /// (leaves the lock unlocked). A failure stops the transport.
    private func writePacket(_ packet: Queue.Packet, _ fd: FileDescriptor) {
        var failure: CircuitError?
        packet.bytes.withUnsafeBytes { bytes in
            packet.descriptors.withUnsafeBufferPointer { fds in
                do throws(CircuitError) {
                    _ = try Self.send(fd, bytes, UnsafeRawBufferPointer(start: nil, count: 0), fds, blocking: true)
                } catch {
                    failure = error
                }
            }
        }
        for d in packet.descriptors { close(d) }
        if let failure {
            fail(failure, releasing: true)
            return
        }
        let (room, stopped): ([Continuation<Void, Never>], Bool) = lock.withLock {
            s.queue.finishWriting()
            s.writes += 1
            if s.queue.idle && s.drainWaiters > 0 { lock.broadcast() }
            guard s.queue.hasRoom else { return ([], s.stopping) }
            defer { s.roomWaiters = [] }
            return (s.roomWaiters, s.stopping)
        }
        for w in room { w.resume() }
        if stopped { closeIfDone() }
    }

    /// A write failed: the transport stops sending; everything queued is dropped and every
    /// waiter released. With `releasing`, this thread owned the socket.
    private func fail(_ error: CircuitError, releasing: Bool) {
        let (dropped, report) = lock.withLock {
            if releasing { s.queue.finishWriting() }
            if s.failure == nil { s.failure = error }
            return (takeEverything(), s.onFailure)
        }
        release(dropped)
        report?(error)
        closeIfDone()
    }

    private struct Dropped {
        var packets: [Queue.Packet]
        var turns: [Continuation<Bool, Never>]
        var room: [Continuation<Void, Never>]
    }

    /// Empties the queue and the waiter lists (lock held).
    private func takeEverything() -> Dropped {
        let (packets, turns) = s.queue.removeAll()
        let room = s.roomWaiters
        s.roomWaiters = []
        lock.broadcast()
        return Dropped(packets: packets, turns: turns, room: room)
    }

    private func release(_ dropped: Dropped) {
        for packet in dropped.packets { packet.descriptors.forEach { close($0) } }
        for c in dropped.turns { c.resume(returning: false) }
        for w in dropped.room { w.resume() }
    }

    // MARK: Waiting

    /// Returns once the queue is back under half its bounds (or the writer stopped).
    private func waitForRoom() async {
        await withContinuation { (c: Continuation<Void, Never>) in
            let ready = lock.withLock {
                if s.failure != nil || s.stopping || s.queue.hasRoom { return true }
                s.roomWaiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }

    /// Waits until every submitted frame is written, the writer failed, or `milliseconds`
    /// passed (a peer that stopped reading must not hold a close forever). True when the
    /// queue emptied.
    @discardableResult
    func drain(milliseconds: Int) -> Bool {
        let deadline = ConditionLock.deadline(milliseconds: milliseconds)
        return lock.withLock {
            while s.failure == nil && !s.stopping && !s.queue.idle {
                s.drainWaiters += 1
                wakeWriterIfSleeping()
                let woken = lock.wait(until: deadline)
                s.drainWaiters -= 1
                if !woken { break }
            }
            return s.queue.idle
        }
    }

    // MARK: The writer thread

    /// Hands the socket on when a sender left the queue's head waiting, and writes the open
    /// packet once a burst is over.
    private func runWriter() {
        lock.lock()
        while !s.stopping {
            if s.queue.isEmpty {
                s.writerSleeping = true
                lock.wait()
                continue
            }
            let quiet = Self.monotonicNanoseconds() &- lastSubmit.load(ordering: .relaxed)
            let burstOver = quiet >= Self.corkNanoseconds || s.drainWaiters > 0
            switch next(takeOpen: burstOver) {
            case (.nothing, _) where burstOver, (.openPacketWaits, _) where burstOver, (.write, nil):
                // Another thread is writing; it wakes this one if it leaves a packet behind.
                s.writerSleeping = true
                lock.wait()
            case (.nothing, _), (.openPacketWaits, _):
                // Watch the burst without the lock: senders never wait for this thread, and
                // it wakes about once per cork period, not once per packet.
                lock.unlock()
                var left = Self.corkNanoseconds - quiet
                while left > 0 {
                    var nap = timespec(tv_sec: 0, tv_nsec: Int(left))
                    _ = nanosleep(&nap, nil)
                    let since = Self.monotonicNanoseconds() &- lastSubmit.load(ordering: .relaxed)
                    left = since >= Self.corkNanoseconds ? 0 : Self.corkNanoseconds - since
                }
                lock.lock()
            case (.handOff(let c), _):
                lock.unlock()
                c.resume(returning: true)
                lock.lock()
            case (.write(let packet), let fd?):
                lock.unlock()
                writePacket(packet, fd)
                lock.lock()
            }
        }
        lock.unlock()
    }

    // MARK: Stopping

    /// Wakes the reader (shutdown) without closing: the descriptor stays valid for writes in
    /// flight, which now fail with EPIPE.
    func shutdown() {
        if let fd = lock.withLock({ s.fd }) { SocketCalls.shutdownBoth(fd) }
    }

    /// Stops for good: drops what is queued (closing its descriptors), stops the writer
    /// thread and closes the socket once no sender is inside `sendmsg`. Called once the
    /// reader has stopped.
    func stop() {
        let (fd, thread, dropped) = lock.withLock {
            s.stopping = true
            if s.failure == nil { s.failure = .closed }
            let dropped = takeEverything()
            s.onFailure = nil
            let thread = s.thread
            s.thread = nil
            return (s.fd, thread, dropped)
        }
        // A sender blocked on a peer that stopped reading returns (EPIPE) once shut down.
        if let fd { SocketCalls.shutdownBoth(fd) }
        release(dropped)
        // Called by the reader thread or by `close`, never by the writer thread itself.
        thread?.join()
        closeIfDone()
    }

    /// Closes the socket once stopped and no thread writes (the last writer out calls it).
    private func closeIfDone() {
        let toClose: FileDescriptor? = lock.withLock {
            guard s.stopping, !s.queue.writing, s.queue.alongside == 0, let fd = s.fd else { return nil }
            s.fd = nil
            return fd
        }
        try? toClose?.close()
    }

    // MARK: sendmsg

    /// Sends `header` and `payload` as one packet with `fds`. Not blocking: false when the
    /// socket is full and nothing was sent.
    private static func send(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                             _ fds: UnsafeBufferPointer<CInt>, blocking: Bool) throws(CircuitError) -> Bool {
        var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                   iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count))
        do {
            _ = try withUnsafeBytes(of: &iov) { (raw) throws(SystemCallError) -> Int in
                let iovs = raw.bindMemory(to: iovec.self)
                return try DescriptorPassing.send(fd.rawValue, UnsafeBufferPointer(rebasing: iovs[..<(payload.isEmpty ? 1 : 2)]),
                                                  descriptors: fds, nonBlocking: !blocking)
            }
            return true
        } catch where error.errno == .wouldBlock && !blocking {
            return false
        } catch where error.errno == .brokenPipe || error.errno == .connectionReset {
            // The peer went away; its end of file may reach the reader only later.
            throw .peerClosed
        } catch {
            throw .system(error)
        }
    }
}
