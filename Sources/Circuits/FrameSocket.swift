import CShim
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A received frame: header, payload, and the descriptors that came with it.
struct Frame {
    var header: FrameHeader
    var payload: [UInt8]
    var descriptors: ReceivedDescriptors?
}

/// Limits a receiver enforces on every frame.
struct FrameLimits {
    var idBytes: Int
    var maxCircuits: UInt64
    var maxPayload: Int
    var maxDescriptors: Int
    var headerSize: Int { FrameHeader.size(idBytes: idBytes) }
}

/// Writes frames to the transport's socket from any thread. The descriptor is closed only
/// once no write is in flight and the reader has stopped, so a number can never be reused
/// under a writer's feet.
final class FrameWriter: Sendable {
    let kind: TransportKind
    let idBytes: Int
    private struct Use {
        var fd: FileDescriptor?
        var users = 0
        var closing = false
    }
    private let use: Mutex<Use>
    /// Serialises frames on a byte stream, where a frame may take several sendmsg calls.
    private let streamLock = Mutex(())

    init(fd: FileDescriptor, kind: TransportKind, idBytes: Int) {
        self.kind = kind
        self.idBytes = idBytes
        use = Mutex(Use(fd: fd))
    }

    /// Runs `body` with the descriptor, or throws `.closed` when it is gone.
    func withDescriptor<R>(_ body: (FileDescriptor) throws(CircuitError) -> R) throws(CircuitError) -> R {
        let fd: FileDescriptor? = use.withLock { u in
            guard let fd = u.fd, !u.closing else { return nil }
            u.users += 1
            return fd
        }
        guard let fd else { throw .closed }
        defer { release() }
        return try body(fd)
    }

    private func release() {
        let toClose: FileDescriptor? = use.withLock { u in
            u.users -= 1
            guard u.closing, u.users == 0, let fd = u.fd else { return nil }
            u.fd = nil
            return fd
        }
        try? toClose?.close()
    }

    /// Wakes the reader (shutdown) without closing: the descriptor stays valid for writes in
    /// flight, which now fail with EPIPE.
    func shutdown() {
        let fd = use.withLock { $0.fd }
        if let fd { SocketCalls.shutdownBoth(fd) }
    }

    /// Closes the descriptor as soon as no write is in flight.
    func close() {
        let toClose: FileDescriptor? = use.withLock { u in
            u.closing = true
            guard u.users == 0, let fd = u.fd else { return nil }
            u.fd = nil
            return fd
        }
        if let toClose {
            SocketCalls.shutdownBoth(toClose)
            try? toClose.close()
        }
    }

    /// Sends one frame. With `nonBlocking`, returns false instead of waiting when the socket
    /// buffer is full (or another thread is mid-frame on a stream).
    @discardableResult
    func write(_ kind: FrameKind, circuit: UInt64, end: Bool = false, payload: UnsafeRawBufferPointer,
               descriptors: [FileDescriptor] = [], nonBlocking: Bool = false) throws(CircuitError) -> Bool {
        let headerSize = FrameHeader.size(idBytes: idBytes)
        let header = FrameHeader(kind: kind, end: end, descriptorCount: descriptors.count,
                                 length: payload.count, circuit: circuit)
        return try withDescriptor { (fd) throws(CircuitError) -> Bool in
            try withUnsafeTemporaryAllocation(byteCount: headerSize, alignment: 8) { (headerBuffer) throws(CircuitError) -> Bool in
                header.encode(into: headerBuffer, idBytes: idBytes)
                // FileDescriptor is a single CInt, so the array's storage is already what
                // SCM_RIGHTS wants.
                let raw = descriptors.withUnsafeBufferPointer {
                    UnsafeRawBufferPointer($0).bindMemory(to: CInt.self)
                }
                switch self.kind {
                case .seqpacket:
                    return try Self.sendAll(fd, headerBuffer, payload, raw, stream: false, nonBlocking: nonBlocking)
                case .stream:
                    if nonBlocking {
                        return try streamLock.withLockIfAvailable { _ throws(CircuitError) -> Bool in
                            try Self.sendAll(fd, headerBuffer, payload, raw, stream: true, nonBlocking: true)
                        } ?? false
                    }
                    return try streamLock.withLock { _ throws(CircuitError) -> Bool in
                        try Self.sendAll(fd, headerBuffer, payload, raw, stream: true, nonBlocking: false)
                    }
                }
            }
        }
    }

    private static func sendAll(_ fd: FileDescriptor, _ header: UnsafeMutableRawBufferPointer,
                                _ payload: UnsafeRawBufferPointer, _ fds: UnsafeBufferPointer<CInt>, stream: Bool,
                                nonBlocking: Bool) throws(CircuitError) -> Bool {
        var iov = (iovec(iov_base: header.baseAddress, iov_len: header.count),
                   iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count))
        let total = header.count + payload.count
        var sent = 0
        var first = true
        while sent < total {
            let n: Int
            do {
                n = try withUnsafeBytes(of: &iov) { (raw) throws(SystemCallError) -> Int in
                    let iovs = raw.bindMemory(to: iovec.self)
                    let start = iovs[0].iov_len == 0 ? 1 : 0
                    return try SocketCalls.send(fd, UnsafeBufferPointer(rebasing: iovs[start...]),
                                                descriptors: first ? fds : UnsafeBufferPointer(start: nil, count: 0),
                                                nonBlocking: nonBlocking && first)
                }
            } catch where error.errno == .wouldBlock && first {
                return false
            } catch {
                throw .system(error)
            }
            // Only a byte stream takes part of a message; continue where it stopped, and
            // never again attach the descriptors.
            guard stream else { return true }
            first = false
            sent += n
            let fromHeader = min(n, iov.0.iov_len)
            iov.0.iov_base = iov.0.iov_base.map { $0 + fromHeader }
            iov.0.iov_len -= fromHeader
            let fromPayload = n - fromHeader
            iov.1.iov_base = iov.1.iov_base.map { $0 + fromPayload }
            iov.1.iov_len -= fromPayload
        }
        return true
    }
}

/// Reads frames from the transport's socket. Owned by the transport's reader thread alone.
///
/// Frames come in batches: everything the kernel has ready is taken in one go
/// (`recvmmsg` with MSG_WAITFORONE for packets, one large `recv` for a stream), so the reader
/// wakes consumers once per batch instead of once per frame.
struct FrameReader: ~Copyable {
    let fd: FileDescriptor
    let kind: TransportKind
    let limits: FrameLimits
    /// Seqpacket: `slots` receive buffers of `slotSize` bytes, one packet each.
    /// Stream: one buffer accumulating bytes from `start` to `end`.
    private let buffer: UnsafeMutableRawBufferPointer
    private let slotSize: Int
    private let slots: Int
    private let iov: UnsafeMutableBufferPointer<iovec>
    private let fdRoom: Int
    private let fds: UnsafeMutableBufferPointer<CInt>
    private let nfds: UnsafeMutableBufferPointer<UInt32>
    private let lengths: UnsafeMutableBufferPointer<Int>
    private let flags: UnsafeMutableBufferPointer<CInt>
    private var start = 0
    private var end = 0
    /// Stream offset of `buffer[start]`, and descriptor sets not yet claimed, each with the
    /// stream range of the `recv` that brought it. The kernel attaches a frame's descriptors
    /// to the first bytes of that frame's write, and one `recv` returns at most one
    /// descriptor set (it stops after the first chunk carrying one), though it may join
    /// earlier bytes without descriptors in front of it. So the set belongs to the frame that
    /// declares descriptors and starts inside that range.
    private var offset: UInt64 = 0
    private var pending: [(from: UInt64, to: UInt64, fds: ReceivedDescriptors)] = []

    init(fd: FileDescriptor, kind: TransportKind, limits: FrameLimits) {
        self.fd = fd
        self.kind = kind
        self.limits = limits
        let largest = limits.headerSize + max(limits.maxPayload, Handshake.maxSize)
        slotSize = largest
        // About 1 MiB of packet buffers, between 1 and 16 packets per batch.
        slots = kind == .seqpacket ? min(16, max(1, (1 << 20) / largest)) : 1
        buffer = .allocate(byteCount: slotSize * slots, alignment: 16)
        iov = .allocate(capacity: slots)
        fdRoom = max(limits.maxDescriptors, 1)
        fds = .allocate(capacity: slots * fdRoom)
        nfds = .allocate(capacity: slots)
        lengths = .allocate(capacity: slots)
        flags = .allocate(capacity: slots)
    }

    deinit {
        buffer.deallocate()
        iov.deallocate()
        fds.deallocate()
        nfds.deallocate()
        lengths.deallocate()
        flags.deallocate()
    }

    /// Waits for at least one frame and appends every frame that is ready to `frames`.
    /// Returns false at a clean end of file (after appending what came before it).
    mutating func readBatch(into frames: inout [Frame]) throws(CircuitError) -> Bool {
        switch kind {
        case .seqpacket: return try readPackets(into: &frames, wait: true) ?? true
        case .stream: return try readStream(into: &frames)
        }
    }

    /// What is queued now, without waiting (seqpacket only): nil when nothing was, false at
    /// end of file.
    mutating func readQueued(into frames: inout [Frame]) throws(CircuitError) -> Bool? {
        guard kind == .seqpacket else { return nil }
        return try readPackets(into: &frames, wait: false)
    }

    private func readPackets(into frames: inout [Frame], wait: Bool) throws(CircuitError) -> Bool? {
        for i in 0..<slots {
            iov[i] = iovec(iov_base: buffer.baseAddress! + i * slotSize, iov_len: slotSize)
        }
        let n = cloister_recvmmsg_fds(fd.rawValue, iov.baseAddress, UInt32(slots), fds.baseAddress,
                                      UInt32(fdRoom), nfds.baseAddress, lengths.baseAddress, flags.baseAddress, wait ? 0 : 1)
        if n < 0 && !wait && (errno == EAGAIN || errno == EWOULDBLOCK) { return nil }
        guard n >= 0 else { throw .system(SystemCallError(call: "recvmmsg", errno: Errno(rawValue: errno))) }
        // Own every descriptor of the batch before looking at any packet, so an error in one
        // packet still closes those of the others.
        let owned: [ReceivedDescriptors?] = (0..<Int(n)).map { i in
            let count = Int(nfds[i])
            guard count > 0 else { return nil }
            return ReceivedDescriptors(Array(fds[(i * fdRoom)..<(i * fdRoom + count)]))
        }
        for i in 0..<Int(n) {
            let length = lengths[i]
            let descriptors = owned[i]
            if flags[i] & CInt(MSG_CTRUNC) != 0 {
                throw .truncatedControlData(receivedDescriptors: descriptors?.count ?? 0)
            }
            if length == 0 && descriptors == nil { return false }
            let packet = UnsafeRawBufferPointer(start: buffer.baseAddress! + i * slotSize, count: min(length, slotSize))
            frames.append(try Self.packetFrame(packet, fullLength: length, truncated: flags[i] & CInt(MSG_TRUNC) != 0,
                                               descriptors: descriptors, limits: limits))
        }
        return true
    }

    private static func packetFrame(_ packet: UnsafeRawBufferPointer, fullLength: Int, truncated: Bool,
                                    descriptors: ReceivedDescriptors?, limits: FrameLimits) throws(CircuitError) -> Frame {
        let headerSize = limits.headerSize
        guard fullLength >= headerSize else {
            throw .truncatedHeader(received: fullLength, required: headerSize)
        }
        let h = try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: packet[0..<headerSize]), idBytes: limits.idBytes,
                                       maxCircuits: limits.maxCircuits, maxPayload: limits.maxPayload)
        let actual = fullLength - headerSize
        let limit = h.kind == .handshake ? Handshake.maxSize : limits.maxPayload
        if truncated || actual > limit {
            throw .oversized(length: actual, limit: limit)
        }
        guard h.length == actual else {
            throw .lengthMismatch(declared: h.length, actual: actual)
        }
        try checkDescriptors(h, descriptors, limits)
        let payload = [UInt8](UnsafeRawBufferPointer(rebasing: packet[headerSize..<headerSize + h.length]))
        return Frame(header: h, payload: payload, descriptors: descriptors)
    }

    private mutating func readStream(into frames: inout [Frame]) throws(CircuitError) -> Bool {
        let headerSize = limits.headerSize
        while true {
            // Every complete frame in the buffer.
            while end - start >= headerSize {
                let h = try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: buffer[start..<start + headerSize]),
                                               idBytes: limits.idBytes, maxCircuits: limits.maxCircuits,
                                               maxPayload: limits.maxPayload)
                guard end - start >= headerSize + h.length else { break }
                if let first = pending.first, first.to <= offset {
                    // Every frame starting in that range is parsed and none declared them.
                    throw .descriptorCountMismatch(declared: 0, received: first.fds.count)
                }
                var descriptors: ReceivedDescriptors?
                if h.descriptorCount > 0, let first = pending.first, first.from <= offset {
                    descriptors = pending.removeFirst().fds
                }
                try Self.checkDescriptors(h, descriptors, limits)
                let bodyStart = start + headerSize
                let payload = [UInt8](UnsafeRawBufferPointer(rebasing: buffer[bodyStart..<bodyStart + h.length]))
                start += headerSize + h.length
                offset += UInt64(headerSize + h.length)
                frames.append(Frame(header: h, payload: payload, descriptors: descriptors))
            }
            if start == end { start = 0; end = 0 }
            if !frames.isEmpty { return true }
            if start > 0 && end == buffer.count {
                // Compact so the rest of the frame fits; a frame never exceeds the buffer.
                buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            }
            iov[0] = iovec(iov_base: buffer.baseAddress! + end, iov_len: buffer.count - end)
            let received: SocketCalls.Received
            do {
                received = try SocketCalls.receive(fd, UnsafeMutableBufferPointer(rebasing: iov[0..<1]),
                                                   maxDescriptors: limits.maxDescriptors, reportFullLength: false)
            } catch {
                throw .system(error)
            }
            let descriptors = received.descriptors.isEmpty ? nil : ReceivedDescriptors(received.descriptors)
            if received.controlTruncated {
                throw .truncatedControlData(receivedDescriptors: descriptors?.count ?? 0)
            }
            if let descriptors {
                let from = offset + UInt64(end - start)
                pending.append((from, from + UInt64(received.count), descriptors))
            }
            if received.count == 0 {
                let left = end - start
                if left == 0 && descriptors == nil { return false }
                if left < headerSize { throw .truncatedHeader(received: left, required: headerSize) }
                let h = try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: buffer[start..<start + headerSize]),
                                               idBytes: limits.idBytes, maxCircuits: limits.maxCircuits,
                                               maxPayload: limits.maxPayload)
                throw .truncatedPayload(received: left - headerSize, declared: h.length)
            }
            end += received.count
        }
    }

    private static func checkDescriptors(_ h: FrameHeader, _ fds: ReceivedDescriptors?, _ limits: FrameLimits) throws(CircuitError) {
        let count = fds?.count ?? 0
        if count > 0 && h.kind != .data {
            throw .unexpectedDescriptors(count: count, context: "on a \(h.kind) frame")
        }
        if count > limits.maxDescriptors || h.descriptorCount > limits.maxDescriptors {
            throw .unexpectedDescriptors(count: max(count, h.descriptorCount),
                                         context: "more than the \(limits.maxDescriptors) per message this transport accepts")
        }
        guard count == h.descriptorCount else {
            throw .descriptorCountMismatch(declared: h.descriptorCount, received: count)
        }
    }
}
