import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Reads frames from the transport's socket. Owned by the transport's reader thread alone.
///
/// Frames come in batches: everything the kernel has ready is taken in one go (`recvmmsg`
/// with MSG_WAITFORONE), so the reader wakes consumers once per batch instead of once per
/// frame.
package struct FrameReader: ~Copyable {
    let fd: FileDescriptor
    package let limits: FrameLimits
    /// `slots` packets per batch, each scattered over a header area (`headers`, `headerSize`
    /// bytes per slot) and a body array (`bodies`, `bodySize` bytes), so that a large
    /// message's payload is received straight into the array that becomes its message.
    private let headers: UnsafeMutableRawBufferPointer
    private let bodies: [Body]
    private let bodySize: Int
    private let slots: Int
    private let iov: UnsafeMutableBufferPointer<iovec>
    private let fdRoom: Int
    private let fds: UnsafeMutableBufferPointer<CInt>
    private let nfds: UnsafeMutableBufferPointer<UInt32>
    private let lengths: UnsafeMutableBufferPointer<Int>
    private let flags: UnsafeMutableBufferPointer<CInt>
    /// Packets received so far.
    private(set) var reads = 0

    package init(fd: FileDescriptor, limits: FrameLimits, bufferBytes: Int = 1 << 20) {
        self.fd = fd
        self.limits = limits
        bodySize = max(limits.maxPayload, Handshake.maxSize)
        let largest = limits.headerSize + bodySize
        // About `bufferBytes` of packet buffers, between 1 and 16 packets per batch.
        slots = min(16, max(1, bufferBytes / largest))
        headers = .allocate(byteCount: limits.headerSize * slots, alignment: 16)
        bodies = (0..<slots).map { _ in Body(size: largest - limits.headerSize) }
        iov = .allocate(capacity: 2 * slots)
        // Room for one descriptor more than allowed, so that "unexpected" is told apart from
        // "truncated" when a transport accepts none.
        fdRoom = max(FrameLimits.packetDescriptors(limits.maxDescriptors), 1)
        fds = .allocate(capacity: slots * fdRoom)
        nfds = .allocate(capacity: slots)
        lengths = .allocate(capacity: slots)
        flags = .allocate(capacity: slots)
    }

    deinit {
        headers.deallocate()
        iov.deallocate()
        fds.deallocate()
        nfds.deallocate()
        lengths.deallocate()
        flags.deallocate()
    }

    /// Waits for at least one frame and appends every frame that is ready to `frames`.
    /// Returns false at a clean end of file (after appending what came before it).
    mutating func readBatch(into frames: inout [Frame]) throws(CircuitError) -> Bool {
        try readPackets(into: &frames, wait: true) ?? true
    }

    /// What is queued now, without waiting: nil when nothing was, false at end of file.
    package mutating func readQueued(into frames: inout [Frame]) throws(CircuitError) -> Bool? {
        try readPackets(into: &frames, wait: false)
    }

    /// One slot's body: an array whose storage the kernel writes into, and which becomes a
    /// large message's payload as it is. A class, so that each slot's array is borrowed on
    /// its own while the batch is received.
    final class Body {
        var bytes: [UInt8]
        init(size: Int) { bytes = Body.fresh(size) }

        /// An array of `size` bytes whose contents the kernel will write (UInt8 needs no
        /// initialisation, and only what was received is ever read).
        static func fresh(_ size: Int) -> [UInt8] {
            [UInt8](unsafeUninitializedCapacity: size) { _, count in count = size }
        }
    }

    /// recvmmsg with every slot's header area and body array as its two buffers. The arrays
    /// are borrowed one inside the other, so each pointer is valid for the call.
    private func receive(from slot: Int, wait: Bool) -> Int32 {
        guard slot < slots else {
            return cloister_recvmmsg_fds(fd.rawValue, iov.baseAddress, 2, UInt32(slots), fds.baseAddress, UInt32(fdRoom),
                                         nfds.baseAddress, lengths.baseAddress, flags.baseAddress, wait ? 0 : 1)
        }
        iov[2 * slot] = iovec(iov_base: headers.baseAddress! + slot * limits.headerSize, iov_len: limits.headerSize)
        return bodies[slot].bytes.withUnsafeMutableBytes { body in
            iov[2 * slot + 1] = iovec(iov_base: body.baseAddress, iov_len: body.count)
            return receive(from: slot + 1, wait: wait)
        }
    }

    private mutating func readPackets(into frames: inout [Frame], wait: Bool) throws(CircuitError) -> Bool? {
        let n = receive(from: 0, wait: wait)
        if n < 0 && !wait && (errno == EAGAIN || errno == EWOULDBLOCK) { return nil }
        guard n >= 0 else { throw .system(lastError("recvmmsg")) }
        reads += Int(n)
        // Own every descriptor of the batch before looking at any packet, so an error in one
        // packet still closes those of the others.
        let owned: [ReceivedDescriptors?] = (0..<Int(n)).map { i in
            let count = Int(nfds[i])
            guard count > 0 else { return nil }
            return ReceivedDescriptors(fds[(i * fdRoom)..<(i * fdRoom + count)])
        }
        for i in 0..<Int(n) {
            let length = lengths[i]
            let descriptors = owned[i]
            if flags[i] & CInt(MSG_CTRUNC) != 0 {
                throw .truncatedControlData(receivedDescriptors: descriptors?.count ?? 0)
            }
            if length == 0 && descriptors == nil { return false }
            let header = UnsafeRawBufferPointer(start: headers.baseAddress! + i * limits.headerSize,
                                                count: min(length, limits.headerSize))
            try Self.packetFrames(header: header, body: bodies[i], bodySize: bodySize, fullLength: length,
                                  truncated: flags[i] & CInt(MSG_TRUNC) != 0, descriptors: descriptors, limits: limits,
                                  into: &frames)
        }
        return true
    }

    /// The frames of one packet: a writer packs small frames sent close together into one
    /// packet (`FrameWriter`). The first frame's header is in `header`, everything after it
    /// in `body`. Descriptors go to the frames in order, as many as each declares; the last
    /// frame is checked against all that remain, so a single-frame packet is checked exactly
    /// against what arrived with it. A packet that is one large frame hands its body array
    /// over as the payload (a fresh one takes its place); other payloads are copied out.
    private static func packetFrames(header: UnsafeRawBufferPointer, body slot: Body, bodySize: Int, fullLength: Int,
                                     truncated: Bool, descriptors: ReceivedDescriptors?, limits: FrameLimits,
                                     into frames: inout [Frame]) throws(CircuitError) {
        let headerSize = limits.headerSize
        guard fullLength >= headerSize else {
            throw .truncatedHeader(received: fullLength, required: headerSize)
        }
        // The packet as a whole must fit what one frame of its first kind may be.
        let first = try decodeHeader(header, at: 0, limits: limits)
        let limit = first.kind == .handshake ? Handshake.maxSize : limits.maxPayload
        if truncated || fullLength - headerSize > limit {
            throw .oversized(length: fullLength - headerSize, limit: limit)
        }
        let bodyLength = fullLength - headerSize
        // Parse and check every header before any descriptor is handed out, so that a bad
        // frame anywhere leaves them all owned by `descriptors` (closed on the way out).
        // Positions are offsets into the body.
        var parsed: [(header: FrameHeader, payload: Int, descriptors: Int)] = []
        var available = descriptors?.count ?? 0
        let checked: Result<Void, CircuitError> = slot.bytes.withUnsafeBytes { body in Result { () throws(CircuitError) in
            var h = first
            var payloadStart = 0
            while true {
                let remaining = bodyLength - payloadStart
                guard h.length <= remaining else {
                    throw .lengthMismatch(declared: h.length, actual: remaining)
                }
                let next = payloadStart + h.length
                let isLast = next == bodyLength
                let count = isLast ? available : min(h.descriptorCount, available)
                try checkDescriptors(h, count, limits)
                available -= count
                parsed.append((h, payloadStart, count))
                if isLast { break }
                guard bodyLength - next >= headerSize else {
                    throw .truncatedHeader(received: bodyLength - next, required: headerSize)
                }
                h = try decodeHeader(UnsafeRawBufferPointer(rebasing: body[next..<next + headerSize]), at: 0, limits: limits)
                payloadStart = next + headerSize
            }
        } }
        try checked.get()
        // A packet of one frame keeps the object its descriptors arrived in.
        let all = parsed.count == 1 ? [] : descriptors?.takeAll() ?? []
        var used = 0
        for (h, start, count) in parsed {
            let payload: [UInt8]
            if parsed.count == 1 && h.length * 2 >= bodySize {
                // Received in place: no copy. At most half the array is unused.
                var taken = slot.bytes
                slot.bytes = Body.fresh(bodySize)
                taken.removeLast(taken.count - h.length)
                payload = taken
            } else {
                payload = slot.bytes.withUnsafeBytes { [UInt8]($0[start..<start + h.length]) }
            }
            let mine: ReceivedDescriptors?
            if count == 0 {
                mine = nil
            } else if parsed.count == 1 {
                mine = descriptors
            } else {
                mine = ReceivedDescriptors(all[used..<used + count].lazy.map(\.rawValue))
            }
            used += count
            frames.append(Frame(header: h, payload: payload, descriptors: mine))
        }
    }

    private static func decodeHeader(_ packet: UnsafeRawBufferPointer, at offset: Int, limits: FrameLimits) throws(CircuitError) -> FrameHeader {
        try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: packet[offset..<offset + limits.headerSize]),
                               idBytes: limits.idBytes, maxCircuits: limits.maxCircuits, maxPayload: limits.maxPayload)
    }

    private static func checkDescriptors(_ h: FrameHeader, _ count: Int, _ limits: FrameLimits) throws(CircuitError) {
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
