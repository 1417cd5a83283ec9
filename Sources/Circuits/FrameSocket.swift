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
struct FrameReader: ~Copyable {
    let fd: FileDescriptor
    let kind: TransportKind
    let limits: FrameLimits
    /// Seqpacket: header and payload are received straight into these (no staging copy).
    /// Stream: `buffer` accumulates bytes from `start` to `end`.
    private let header: UnsafeMutableRawBufferPointer
    private let buffer: UnsafeMutableRawBufferPointer
    private let iov: UnsafeMutableBufferPointer<iovec>
    private var start = 0
    private var end = 0
    /// Stream offset of `buffer[start]`, and the descriptors that arrived with the frame
    /// starting at each offset. The kernel attaches a frame's descriptors to its first byte
    /// and never merges them into another write's bytes, so they belong to exactly the frame
    /// starting there.
    private var offset: UInt64 = 0
    private var pending: [(offset: UInt64, fds: ReceivedDescriptors)] = []

    init(fd: FileDescriptor, kind: TransportKind, limits: FrameLimits) {
        self.fd = fd
        self.kind = kind
        self.limits = limits
        header = .allocate(byteCount: limits.headerSize, alignment: 8)
        let largest = max(limits.maxPayload, Handshake.maxSize)
        let capacity = kind == .stream ? limits.headerSize + largest : largest
        buffer = .allocate(byteCount: capacity, alignment: 16)
        iov = .allocate(capacity: 2)
    }

    deinit {
        header.deallocate()
        buffer.deallocate()
        iov.deallocate()
    }

    enum Result {
        case frame(Frame)
        /// Nothing to read right now (only with `nonBlocking`).
        case wouldBlock
        /// Clean end of file at a frame boundary.
        case end
    }

    /// The next frame. With `nonBlocking`, `.wouldBlock` instead of waiting for one.
    mutating func read(nonBlocking: Bool) throws(CircuitError) -> Result {
        switch kind {
        case .seqpacket: return try readPacket(nonBlocking: nonBlocking)
        case .stream: return try readStream(nonBlocking: nonBlocking)
        }
    }

    private func readPacket(nonBlocking: Bool) throws(CircuitError) -> Result {
        iov[0] = iovec(iov_base: header.baseAddress, iov_len: header.count)
        iov[1] = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let received: SocketCalls.Received
        do {
            guard let r = try SocketCalls.receive(fd, UnsafeMutableBufferPointer(rebasing: iov[0..<2]),
                                                  maxDescriptors: limits.maxDescriptors, reportFullLength: true,
                                                  nonBlocking: nonBlocking) else { return .wouldBlock }
            received = r
        } catch {
            throw .system(error)
        }
        // Owned from here on: any error below closes what arrived.
        let fds = received.descriptors.isEmpty ? nil : ReceivedDescriptors(received.descriptors)
        if received.controlTruncated {
            throw .truncatedControlData(receivedDescriptors: fds?.count ?? 0)
        }
        if received.count == 0 && fds == nil { return .end }
        let headerSize = limits.headerSize
        guard received.count >= headerSize else {
            throw .truncatedHeader(received: received.count, required: headerSize)
        }
        let h = try FrameHeader.decode(UnsafeRawBufferPointer(header), idBytes: limits.idBytes,
                                       maxCircuits: limits.maxCircuits, maxPayload: limits.maxPayload)
        let actual = received.count - headerSize
        let limit = h.kind == .handshake ? Handshake.maxSize : limits.maxPayload
        if received.dataTruncated || actual > limit {
            throw .oversized(length: actual, limit: limit)
        }
        guard h.length == received.count - headerSize else {
            throw .lengthMismatch(declared: h.length, actual: received.count - headerSize)
        }
        try Self.checkDescriptors(h, fds, limits)
        let payload = [UInt8](UnsafeRawBufferPointer(rebasing: buffer[0..<h.length]))
        return .frame(Frame(header: h, payload: payload, descriptors: fds))
    }

    private mutating func readStream(nonBlocking: Bool) throws(CircuitError) -> Result {
        let headerSize = limits.headerSize
        while true {
            let available = end - start
            if available >= headerSize {
                let h = try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: buffer[start..<start + headerSize]),
                                               idBytes: limits.idBytes, maxCircuits: limits.maxCircuits,
                                               maxPayload: limits.maxPayload)
                if available >= headerSize + h.length {
                    var fds: ReceivedDescriptors?
                    if let first = pending.first, first.offset == offset {
                        fds = pending.removeFirst().fds
                    }
                    try Self.checkDescriptors(h, fds, limits)
                    let bodyStart = start + headerSize
                    let payload = [UInt8](UnsafeRawBufferPointer(rebasing: buffer[bodyStart..<bodyStart + h.length]))
                    start += headerSize + h.length
                    offset += UInt64(headerSize + h.length)
                    if start == end { start = 0; end = 0 }
                    return .frame(Frame(header: h, payload: payload, descriptors: fds))
                }
            }
            if start > 0 && end == buffer.count {
                // Compact so the rest of the frame fits; a frame never exceeds the buffer.
                buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            }
            iov[0] = iovec(iov_base: buffer.baseAddress! + end, iov_len: buffer.count - end)
            let received: SocketCalls.Received
            do {
                guard let r = try SocketCalls.receive(fd, UnsafeMutableBufferPointer(rebasing: iov[0..<1]),
                                                      maxDescriptors: limits.maxDescriptors, reportFullLength: false,
                                                      nonBlocking: nonBlocking) else { return .wouldBlock }
                received = r
            } catch {
                throw .system(error)
            }
            let fds = received.descriptors.isEmpty ? nil : ReceivedDescriptors(received.descriptors)
            if received.controlTruncated {
                throw .truncatedControlData(receivedDescriptors: fds?.count ?? 0)
            }
            if let fds {
                pending.append((offset + UInt64(end - start), fds))
            }
            if received.count == 0 {
                let left = end - start
                if left == 0 && fds == nil { return .end }
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
