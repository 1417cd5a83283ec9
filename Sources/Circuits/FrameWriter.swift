import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Writes frames to the transport's socket, in the order they are submitted, from any thread.
///
/// The kernel's cost is per packet: about a microsecond on each side, nearly the same for
/// 64 bytes as for 64 KiB. So small frames that follow each other closely share packets:
///
/// - A frame that comes alone (nothing queued or being written, and the previous frame was
///   submitted more than `corkNanoseconds` ago) is written at once by the thread that submits
///   it: one `sendmsg`, no hand-off, so a keystroke pays no extra latency.
/// - A small frame (at most a quarter of the peer's packet) that follows another closely, or
///   finds the socket busy, is copied into the open packet of a queue. A sender whose frame
///   completes a packet writes the complete packets itself, so a burst costs one `sendmsg` per
///   peer-sized packet and no thread hand-off. The transport's writer thread writes the last,
///   incomplete packet once no frame has come for `corkNanoseconds`.
/// - A large frame, or one whose descriptors cannot be queued, is written by its own sender
///   (no copy; its own descriptors). On a packet socket it goes alongside the queue when
///   nothing of its circuit is queued or being written (packets are atomic, and the order
///   the protocol relies on is per circuit id); otherwise, and always on a byte stream, it
///   waits for its turn in the queue.
///
/// Every submitted frame is written unless the transport fails first; `drain` waits for the
/// queue before a close. A queued frame's descriptors are duplicated, so the sender keeps its
/// own copies exactly as with a direct write. On a byte stream a frame with descriptors
/// always starts a write of its own, because the receiver gives a descriptor set to the frame
/// that starts the write which carried it (`FrameReader`).
final class FrameWriter: @unchecked Sendable {
    /// How much one packet may carry, from the peer's handshake.
    struct PacketLimit {
        var bytes: Int
        var descriptors: Int
    }

    /// A reference, so that frames are appended to the queued packet in place.
    private final class Packet {
        var bytes: [UInt8]
        /// Duplicates the queue owns, in frame order.
        var descriptors: [CInt] = []
        /// The circuit ids of its data frames.
        var circuits: [UInt64] = []

        init(bytes: [UInt8]) { self.bytes = bytes }
    }

    private enum Entry {
        case packet(Packet)
        /// A sender waiting to write its own frame; resumed with true once the socket is
        /// its, false when the transport stopped.
        case turn(Continuation<Bool, Never>)

        var isTurn: Bool {
            if case .turn = self { return true }
            return false
        }
    }

    /// What the socket's next writer does, decided under the lock.
    private enum Next {
        case nothing
        case handOff(Continuation<Bool, Never>)
        case write(Packet, FileDescriptor)
    }

    private struct State {
        var fd: FileDescriptor?
        var failure: CircuitError?
        var stopping = false
        var entries: [Entry] = []
        var queuedBytes = 0
        var queuedDescriptors = 0
        /// One thread at a time writes queued frames or a frame that must keep its place;
        /// frames submitted meanwhile queue behind it, which is what keeps them in order.
        var writing = false
        /// Senders writing a frame alongside the queue (packet sockets only).
        var alongside = 0
        /// A queued packet being written (its frames still count as queued).
        var inFlight: Packet?
        /// The writer thread waits without a deadline: a new entry must wake it.
        var writerSleeping = false
        var drainWaiters = 0
        var roomWaiters: [Continuation<Void, Never>] = []
        /// Nil until the peer's handshake: no frames share a packet.
        var limit: PacketLimit?
        /// Emptied packet buffers, kept so that a steady stream does not allocate (and glibc
        /// does not trim and re-fault) a packet's worth of memory per packet.
        var spare: [[UInt8]] = []
        var thread: pthread_t?
        var onFailure: (@Sendable (CircuitError) -> Void)?
        /// Frames submitted, and sendmsg calls that sent something.
        var frames = 0
        var writes = 0
        var idle: Bool { entries.isEmpty && !writing }
    }

    let kind: TransportKind
    let idBytes: Int
    private let lock = ConditionLock()
    /// Behind a pointer: a stored property of a class is checked for exclusive access at run
    /// time on every use, which the lock already guarantees.
    private let storage: UnsafeMutablePointer<State>
    private var s: State {
        unsafeAddress { UnsafePointer(storage) }
        unsafeMutableAddress { storage }
    }
    /// When the last frame was submitted (monotonic nanoseconds). Written under the lock;
    /// the writer thread reads it without, so that watching a burst never holds up a sender.
    private let lastSubmit = Atomic<UInt64>(0)

    /// Frames closer together than this are taken for a burst and share packets; the last
    /// packet of a burst leaves this long (plus timer slack) after its last frame.
    static var corkNanoseconds: UInt64 { 20_000 }
    /// Queued descriptors (duplicates) allowed at once: each is an open file in this process.
    static var maxQueuedDescriptors: Int { 128 }
    /// Complete packets a sender writes for others before leaving the rest to the writer
    /// thread, so that no sender is held up indefinitely by the others' traffic.
    static var maxPacketsPerSender: Int { 4 }

    init(fd: FileDescriptor, kind: TransportKind, idBytes: Int) {
        self.kind = kind
        self.idBytes = idBytes
        storage = .allocate(capacity: 1)
        storage.initialize(to: State(fd: fd))
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    /// Starts the writer thread. `onFailure` learns of a failed write of a queued frame,
    /// which nobody waits for any more.
    func start(onFailure: @escaping @Sendable (CircuitError) -> Void) throws(CircuitError) {
        lock.withLock { s.onFailure = onFailure }
        let thread: pthread_t
        do { thread = try Threads.start("circuits-writer") { self.runWriter() } } catch { throw .system(error) }
        lock.withLock { s.thread = thread }
    }

    /// Frames submitted and writes (sendmsg calls) that carried them so far.
    var counts: (frames: Int, writes: Int) { lock.withLock { (s.frames, s.writes) } }

    /// The peer's limits are known: frames may share packets from now on.
    func setLimit(_ limit: PacketLimit) {
        lock.withLock { s.limit = limit }
    }

    private var maxQueuedBytes: Int { max(256 * 1024, 4 * (s.limit?.bytes ?? 0)) }

    // MARK: Submitting

    /// Sends a data frame: written at once, queued, or written by this task when its turn
    /// comes. Waits for its turn, and for room when the queue is over its bound; waits for
    /// the peer to read only while writing its own frame.
    func send(circuit: UInt64, end: Bool, payload: [UInt8], descriptors: [FileDescriptor]) async throws(CircuitError) {
        let header = EncodedHeader(.data, circuit: circuit, end: end, length: payload.count,
                                   descriptors: descriptors.count, idBytes: idBytes)
        enum Plan { case write(FileDescriptor, small: Bool), alongside(FileDescriptor), queued(Bool), waitForRoom, waitForTurn }
        while true {
            let plan: Plan = try header.with(payload) { h, p throws(CircuitError) in
                try lock.withLock { () throws(CircuitError) -> Plan in
                    let fd = try usableDescriptor()
                    let corked = noteSubmission()
                    s.frames += 1
                    if isSmall(h.count + p.count, descriptors.count) {
                        if s.idle && !corked {
                            s.writing = true
                            return .write(fd, small: true)
                        }
                        switch enqueue(h, p, descriptors, circuit: circuit) {
                        case .queued: return .queued(s.queuedBytes > maxQueuedBytes)
                        case .descriptorsOverShare:
                            s.frames -= 1  // counted again when it is submitted after the wait
                            return .waitForRoom
                        case .duplicateFailed: break
                        }
                    }
                    // Packets are atomic, so on a packet socket a frame whose circuit has
                    // nothing queued may be written alongside the queue: the order the
                    // protocol relies on is within a circuit id (a conversation's frames,
                    // then its end, then the next conversation's). Large frames thus cost
                    // no copy and no hand-off, and several may wait in sendmsg at once.
                    if kind == .seqpacket && !hasQueuedFrame(on: circuit) {
                        s.alongside += 1
                        return .alongside(fd)
                    }
                    if s.idle {
                        s.writing = true
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
                try writeOwn(fd, header, payload, descriptors, circuit: circuit, mayQueue: small)
            case .alongside(let fd):
                let result = try header.with(payload) { h, p throws(CircuitError) in
                    sendFrame(fd, h, p, descriptors, blocking: true)
                }
                let stopped = lock.withLock {
                    s.alongside -= 1
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
                        if s.idle {
                            s.writing = true
                            return true
                        }
                        s.entries.append(.turn(c))
                        wakeWriterIfSleeping()
                        return nil
                    }
                    if let now { c.resume(returning: now) }
                }
                guard mine, let fd = lock.withLock({ s.fd }) else { throw lock.withLock { s.failure ?? .closed } }
                try writeOwn(fd, header, payload, descriptors, circuit: circuit, mayQueue: false)
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
                if s.idle && !corked {
                    s.writing = true
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

    /// Whether a frame may be copied into a shared packet (lock held).
    private func isSmall(_ size: Int, _ descriptors: Int) -> Bool {
        guard let limit = s.limit else { return false }
        return size * 4 <= limit.bytes && descriptors <= min(limit.descriptors, Self.maxQueuedDescriptors / 4)
    }

    /// Writes a frame with the socket this thread owns, then hands the socket on. A small
    /// frame (`mayQueue`) is written without blocking and queued first in line if the
    /// socket is full; any other blocks until the peer makes room.
    private func writeOwn(_ fd: FileDescriptor, _ header: EncodedHeader, _ payload: [UInt8], _ descriptors: [FileDescriptor],
                          circuit: UInt64, mayQueue: Bool) throws(CircuitError) {
        try header.with(payload) { h, p throws(CircuitError) in
            try writeOwn(fd, h, p, descriptors, circuit: circuit, mayQueue: mayQueue)
        }
    }

    /// `circuit` is the id of a data frame, nil for a control frame.
    private func writeOwn(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                          _ descriptors: [FileDescriptor], circuit: UInt64?, mayQueue: Bool,
                          mayBlock: Bool = true) throws(CircuitError) {
        var result = sendFrame(fd, header, payload, descriptors, blocking: !mayQueue)
        if case .success(nil) = result {
            // The socket is full. Queue the frame in front of whatever was submitted
            // meanwhile, unless its descriptors cannot be queued: then wait for the peer.
            let queued = lock.withLock {
                enqueue(header, payload, descriptors, circuit: circuit, atFront: true)
            }
            if queued != .queued { result = sendFrame(fd, header, payload, descriptors, blocking: true) }
        } else if case .success(let sent?) = result, sent < header.count + payload.count {
            // A stream took part of the frame; its descriptors went with the first byte.
            var rest = [UInt8]()
            rest.reserveCapacity(header.count + payload.count)
            rest.append(contentsOf: header)
            rest.append(contentsOf: payload)
            rest.removeFirst(sent)
            lock.withLock {
                s.entries.insert(.packet(Packet(bytes: rest)), at: 0)
                s.queuedBytes += rest.count
            }
        }
        if case .failure(let error) = result {
            fail(error, releasing: true)
            throw error
        }
        if case .success(_?) = result { lock.withLock { s.writes += 1 } }
        flushCompletePackets(releasing: true, mayBlock: mayBlock)
    }

    private func sendFrame(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                           _ descriptors: [FileDescriptor], blocking: Bool) -> Result<Int?, CircuitError> {
        // FileDescriptor is a single CInt, so the array's storage is already what
        // SCM_RIGHTS wants.
        descriptors.withUnsafeBufferPointer { fds in
            let raw = UnsafeRawBufferPointer(fds).bindMemory(to: CInt.self)
            do throws(CircuitError) {
                return .success(try Self.send(fd, header, payload, raw, stream: kind == .stream, blocking: blocking))
            } catch {
                return .failure(error)
            }
        }
    }

    private enum Enqueued { case queued, descriptorsOverShare, duplicateFailed }

    /// Copies a small frame into the queue (lock held): into the open packet when it fits,
    /// else a new one. Not queued when its descriptors would exceed the queue's share or
    /// cannot be duplicated (EMFILE). `circuit` is the id of a data frame.
    private func enqueue(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                         _ descriptors: [FileDescriptor], circuit: UInt64?, atFront: Bool = false) -> Enqueued {
        var duplicates: [CInt] = []
        if !descriptors.isEmpty {
            if s.queuedDescriptors + descriptors.count > Self.maxQueuedDescriptors { return .descriptorsOverShare }
            duplicates.reserveCapacity(descriptors.count)
            for fd in descriptors {
                let copy = fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0)
                guard copy >= 0 else {
                    for d in duplicates { close(d) }
                    return .duplicateFailed
                }
                duplicates.append(copy)
            }
        }
        let size = header.count + payload.count
        let packet: Packet
        if !atFront, case .packet(let open)? = s.entries.last, fits(open, size, duplicates.count) {
            packet = open
        } else {
            var bytes = s.spare.popLast() ?? []
            bytes.reserveCapacity(max(s.limit?.bytes ?? 0, size))
            packet = Packet(bytes: bytes)
            s.entries.insert(.packet(packet), at: atFront ? 0 : s.entries.count)
        }
        packet.bytes.append(contentsOf: header)
        packet.bytes.append(contentsOf: payload)
        if !duplicates.isEmpty { packet.descriptors += duplicates }
        if let circuit { packet.circuits.append(circuit) }
        s.queuedBytes += size
        s.queuedDescriptors += duplicates.count
        wakeWriterIfSleeping()
        return .queued
    }

    /// Whether a data frame of `circuit` is queued or being written from the queue (lock
    /// held). A scan, not a count per circuit: it is needed only for large frames, and only
    /// while something is queued.
    private func hasQueuedFrame(on circuit: UInt64) -> Bool {
        if let packet = s.inFlight, packet.circuits.contains(circuit) { return true }
        return s.entries.contains { entry in
            if case .packet(let packet) = entry { return packet.circuits.contains(circuit) }
            return false
        }
    }

    /// Whether a frame of `size` bytes and `descriptors` descriptors may join `packet`.
    private func fits(_ packet: Packet, _ size: Int, _ descriptors: Int) -> Bool {
        guard let limit = s.limit, packet.bytes.count + size <= limit.bytes else { return false }
        switch kind {
        case .seqpacket: return packet.descriptors.count + descriptors <= limit.descriptors
        case .stream: return descriptors == 0
        }
    }

    private func wakeWriterIfSleeping() {
        if s.writerSleeping {
            s.writerSleeping = false
            lock.broadcast()
        }
    }

    // MARK: Handing the socket on

    /// Decides, with the socket free, who writes next (lock held). The socket is taken
    /// (`writing`) for a hand-off or a packet to write. The open packet (the last) is taken
    /// only with `takeOpen`, which the writer thread passes once the burst is over.
    private func next(takeOpen: Bool) -> Next {
        guard !s.writing, let fd = s.fd, !s.stopping, s.failure == nil, let head = s.entries.first else {
            if s.idle && s.drainWaiters > 0 { lock.broadcast() }
            return .nothing
        }
        switch head {
        case .turn(let c):
            s.entries.removeFirst()
            s.writing = true
            return .handOff(c)
        case .packet(let packet):
            guard s.entries.count > 1 || takeOpen else {
                // The writer thread flushes it when the burst ends.
                wakeWriterIfSleeping()
                return .nothing
            }
            s.entries.removeFirst()
            s.writing = true
            s.inFlight = packet
            s.queuedBytes -= packet.bytes.count
            s.queuedDescriptors -= packet.descriptors.count
            return .write(packet, fd)
        }
    }

    /// Writes complete packets at the head of the queue with this thread, at most
    /// `maxPacketsPerSender` (none without `mayBlock`), then hands the socket on. With
    /// `releasing`, this thread owns the socket on entry.
    private func flushCompletePackets(releasing: Bool = false, mayBlock: Bool = true) {
        var written = 0
        lock.lock()
        if releasing { s.writing = false }
        while true {
            let mine = mayBlock && written < Self.maxPacketsPerSender
            let step = mine || s.entries.first.map(\.isTurn) == true ? next(takeOpen: false) : .nothing
            if !mine && !s.writing && !s.entries.isEmpty {
                // Left to the writer thread, even if it is waiting for a burst to end.
                s.writerSleeping = false
                lock.broadcast()
            }
            switch step {
            case .nothing:
                let stopped = s.stopping && !s.writing
                lock.unlock()
                if stopped { closeIfDone() }
                return
            case .handOff(let c):
                lock.unlock()
                c.resume(returning: true)
                return
            case .write(let packet, let fd):
                lock.unlock()
                writePacket(packet, fd)
                written += 1
                lock.lock()
            }
        }
    }

    /// Writes a packet taken from the queue, closes its duplicates and releases the socket
    /// (leaves the lock unlocked). A failure stops the transport.
    private func writePacket(_ packet: Packet, _ fd: FileDescriptor) {
        var failure: CircuitError?
        packet.bytes.withUnsafeBytes { bytes in
            packet.descriptors.withUnsafeBufferPointer { fds in
                do throws(CircuitError) {
                    _ = try Self.send(fd, bytes, UnsafeRawBufferPointer(start: nil, count: 0), fds,
                                      stream: kind == .stream, blocking: true)
                } catch {
                    failure = error
                }
            }
        }
        for d in packet.descriptors { close(d) }
        var buffer = packet.bytes
        packet.bytes = []
        buffer.removeAll(keepingCapacity: true)
        if let failure {
            fail(failure, releasing: true)
            return
        }
        let (room, stopped): ([Continuation<Void, Never>], Bool) = lock.withLock {
            s.writing = false
            s.inFlight = nil
            s.writes += 1
            if s.spare.count < 4 { s.spare.append(buffer) }
            if s.idle && s.drainWaiters > 0 { lock.broadcast() }
            guard hasRoom else { return ([], s.stopping) }
            defer { s.roomWaiters = [] }
            return (s.roomWaiters, s.stopping)
        }
        for w in room { w.resume() }
        if stopped { closeIfDone() }
    }

    /// A write failed: the transport stops sending; everything queued is dropped and every
    /// waiter released. With `releasing`, this thread owned the socket.
    private func fail(_ error: CircuitError, releasing: Bool) {
        let (dropped, turns, room, report) = lock.withLock {
            if releasing {
                s.writing = false
                s.inFlight = nil
            }
            if s.failure == nil { s.failure = error }
            return takeEverything()
        }
        release(dropped, turns, room)
        report?(error)
        closeIfDone()
    }

    /// Empties the queue and the waiter lists (lock held).
    private func takeEverything() -> ([Packet], [Continuation<Bool, Never>], [Continuation<Void, Never>],
                                      (@Sendable (CircuitError) -> Void)?) {
        var dropped: [Packet] = []
        var turns: [Continuation<Bool, Never>] = []
        for entry in s.entries {
            switch entry {
            case .packet(let p): dropped.append(p)
            case .turn(let c): turns.append(c)
            }
        }
        s.entries = []
        s.queuedBytes = 0
        s.queuedDescriptors = 0
        let room = s.roomWaiters
        s.roomWaiters = []
        lock.broadcast()
        return (dropped, turns, room, s.onFailure)
    }

    private func release(_ dropped: [Packet], _ turns: [Continuation<Bool, Never>], _ room: [Continuation<Void, Never>]) {
        for packet in dropped { packet.descriptors.forEach { close($0) } }
        for c in turns { c.resume(returning: false) }
        for w in room { w.resume() }
    }

    // MARK: Waiting

    /// Whether the queue is back under half its bounds (lock held).
    private var hasRoom: Bool {
        s.queuedBytes <= maxQueuedBytes / 2 && s.queuedDescriptors <= Self.maxQueuedDescriptors / 2
    }

    /// Returns once the queue is back under half its bounds (or the writer stopped).
    private func waitForRoom() async {
        await withContinuation { (c: Continuation<Void, Never>) in
            let ready = lock.withLock {
                if s.failure != nil || s.stopping || hasRoom { return true }
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
            while s.failure == nil && !s.stopping && !s.idle {
                s.drainWaiters += 1
                wakeWriterIfSleeping()
                let woken = lock.wait(until: deadline)
                s.drainWaiters -= 1
                if !woken { break }
            }
            return s.idle
        }
    }

    // MARK: The writer thread

    /// Hands the socket on when a sender left the queue's head waiting, and writes the open
    /// packet once a burst is over.
    private func runWriter() {
        lock.lock()
        while !s.stopping {
            if s.entries.isEmpty {
                s.writerSleeping = true
                lock.wait()
                continue
            }
            let quiet = Self.monotonicNanoseconds() &- lastSubmit.load(ordering: .relaxed)
            let burstOver = quiet >= Self.corkNanoseconds || s.drainWaiters > 0
            switch next(takeOpen: burstOver) {
            case .nothing where burstOver:
                // Another thread is writing; it wakes this one if it leaves a packet behind.
                s.writerSleeping = true
                lock.wait()
            case .nothing:
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
            case .handOff(let c):
                lock.unlock()
                c.resume(returning: true)
                lock.lock()
            case .write(let packet, let fd):
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
        let (fd, thread, dropped, turns, room) = lock.withLock {
            s.stopping = true
            if s.failure == nil { s.failure = .closed }
            let (dropped, turns, room, _) = takeEverything()
            s.onFailure = nil
            let thread = s.thread
            s.thread = nil
            return (s.fd, thread, dropped, turns, room)
        }
        // A sender blocked on a peer that stopped reading returns (EPIPE) once shut down.
        if let fd { SocketCalls.shutdownBoth(fd) }
        release(dropped, turns, room)
        // Called by the reader thread or by `close`, never by the writer thread itself.
        if let thread { pthread_join(thread, nil) }
        closeIfDone()
    }

    /// Closes the socket once stopped and no thread writes (the last writer out calls it).
    private func closeIfDone() {
        let toClose: FileDescriptor? = lock.withLock {
            guard s.stopping, !s.writing, s.alongside == 0, let fd = s.fd else { return nil }
            s.fd = nil
            return fd
        }
        try? toClose?.close()
    }

    // MARK: sendmsg

    /// Sends `header` and `payload` as one message with `fds`. Non-blocking: nil when the
    /// socket is full and nothing was sent. A byte stream may take part of it: without
    /// `blocking` the count sent is returned, with it the rest follows (the descriptors only
    /// with the first byte).
    private static func send(_ fd: FileDescriptor, _ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                             _ fds: UnsafeBufferPointer<CInt>, stream: Bool, blocking: Bool) throws(CircuitError) -> Int? {
        var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                   iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count))
        let total = header.count + payload.count
        var sent = 0
        var first = true
        while true {
            let n: Int
            do {
                n = try withUnsafeBytes(of: &iov) { (raw) throws(SystemCallError) -> Int in
                    let iovs = raw.bindMemory(to: iovec.self)
                    let from = iovs[0].iov_len == 0 ? 1 : 0
                    let to = iovs[1].iov_len == 0 ? 1 : 2
                    return try DescriptorPassing.send(fd.rawValue, UnsafeBufferPointer(rebasing: iovs[from..<max(from, to)]),
                                                      descriptors: first ? fds : UnsafeBufferPointer(start: nil, count: 0),
                                                      nonBlocking: !blocking)
                }
            } catch where error.errno == .wouldBlock && !blocking {
                return nil
            } catch where error.errno == .brokenPipe || error.errno == .connectionReset {
                // The peer went away; its end of file may reach the reader only later.
                throw .peerClosed
            } catch {
                throw .system(error)
            }
            sent += n
            // Only a byte stream takes part of a message.
            guard stream, blocking, sent < total else { return sent }
            first = false
            let fromHeader = min(n, iov.0.iov_len)
            iov.0.iov_base = iov.0.iov_base.map { $0 + fromHeader }
            iov.0.iov_len -= fromHeader
            let fromPayload = n - fromHeader
            iov.1.iov_base = iov.1.iov_base.map { $0 + fromPayload }
            iov.1.iov_len -= fromPayload
        }
    }
}
