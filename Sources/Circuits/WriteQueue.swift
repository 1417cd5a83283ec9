/// The state of a transport's write queue, without any I/O: which frames share which
/// packet, the order packets and waiting senders leave in, who may write next, and what the
/// queue holds (bytes, and descriptor duplicates it owns). `FrameWriter` keeps one under its
/// lock and issues the syscalls; this type is tested on its own, bytes in, packets out.
///
/// `Waiter` is what a sender waiting for its turn to write is resumed through (a
/// continuation in the transport, anything in a test).
struct WriteQueue<Waiter> {
    /// How much one packet may carry, from the peer's handshake.
    struct PacketLimit: Equatable {
        var bytes: Int
        var descriptors: Int
    }

    /// A reference, so that frames are appended to the open packet in place.
    final class Packet {
        var bytes: [UInt8]
        /// Duplicates the queue owns, in frame order.
        var descriptors: [CInt] = []
        /// The circuit ids of its data frames.
        var circuits: [UInt64] = []

        init(bytes: [UInt8]) { self.bytes = bytes }
    }

    enum Entry {
        case packet(Packet)
        /// A sender waiting to write its own frame once everything before it is written.
        case turn(Waiter)
    }

    /// Who writes next, when the socket is free.
    enum Next {
        case nothing
        /// Only the open packet is queued, and the burst that fills it is not over: the
        /// writer thread writes it once it is.
        case openPacketWaits
        /// The socket is the waiting sender's (`writing` is now true).
        case handOff(Waiter)
        /// This packet is to be written (`writing` is now true; it is `inFlight`).
        case write(Packet)
    }

    /// Queued descriptors (duplicates) allowed at once: each is an open file in this process.
    static var maxQueuedDescriptors: Int { 128 }

    private(set) var entries: [Entry] = []
    private(set) var queuedBytes = 0
    private(set) var queuedDescriptors = 0
    /// One thread at a time writes queued packets, or a frame that must keep its place;
    /// frames submitted meanwhile queue behind it, which is what keeps them in order.
    var writing = false
    /// Senders writing a frame alongside the queue.
    var alongside = 0
    /// A packet taken from the queue and being written (its frames still count as queued
    /// for `hasQueuedFrame`).
    private(set) var inFlight: Packet?
    /// Nil until the peer's handshake: no frames share a packet.
    var limit: PacketLimit?
    /// Emptied packet buffers, kept so that a steady stream does not allocate (and glibc
    /// does not trim and re-fault) a packet's worth of memory per packet.
    private var spare: [[UInt8]] = []

    var isEmpty: Bool { entries.isEmpty }
    /// Nothing queued and nobody writing: a frame may go out at once.
    var idle: Bool { entries.isEmpty && !writing }
    var maxQueuedBytes: Int { max(256 * 1024, 4 * (limit?.bytes ?? 0)) }
    var isOverBound: Bool { queuedBytes > maxQueuedBytes }
    /// Back under half its bounds: senders waiting for room may go on.
    var hasRoom: Bool {
        queuedBytes <= maxQueuedBytes / 2 && queuedDescriptors <= Self.maxQueuedDescriptors / 2
    }

    var headIsTurn: Bool {
        if case .turn? = entries.first { return true }
        return false
    }

    /// Whether a frame of `size` bytes (header included) and `descriptors` descriptors may be
    /// copied into a shared packet: at most a quarter of a packet, and a small share of the
    /// descriptors the queue may hold.
    func isSmall(size: Int, descriptors: Int) -> Bool {
        guard let limit else { return false }
        return size * 4 <= limit.bytes && descriptors <= min(limit.descriptors, Self.maxQueuedDescriptors / 4)
    }

    /// Whether `count` more duplicates stay within the queue's share.
    func admits(descriptors count: Int) -> Bool {
        queuedDescriptors + count <= Self.maxQueuedDescriptors
    }

    /// Copies a frame into the queue: into the open packet (the last) when it fits, else into
    /// a new packet, which goes first in line with `atFront` (a frame the socket had no room
    /// for keeps its place ahead of what was submitted meanwhile). The queue takes ownership
    /// of `duplicates`. `circuit` is the id of a data frame, nil for a control frame.
    mutating func append(header: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer, duplicates: [CInt],
                         circuit: UInt64?, atFront: Bool = false) {
        let size = header.count + payload.count
        let packet: Packet
        if !atFront, case .packet(let open)? = entries.last, fits(open, size, duplicates.count) {
            packet = open
        } else {
            var bytes = spare.popLast() ?? []
            bytes.reserveCapacity(max(limit?.bytes ?? 0, size))
            packet = Packet(bytes: bytes)
            entries.insert(.packet(packet), at: atFront ? 0 : entries.count)
        }
        packet.bytes.append(contentsOf: header)
        packet.bytes.append(contentsOf: payload)
        if !duplicates.isEmpty { packet.descriptors += duplicates }
        if let circuit { packet.circuits.append(circuit) }
        queuedBytes += size
        queuedDescriptors += duplicates.count
    }

    /// A sender that waits for everything queued before it.
    mutating func appendTurn(_ waiter: Waiter) {
        entries.append(.turn(waiter))
    }

    /// Whether a frame of `size` bytes and `descriptors` descriptors may join `packet`.
    private func fits(_ packet: Packet, _ size: Int, _ descriptors: Int) -> Bool {
        guard let limit, packet.bytes.count + size <= limit.bytes else { return false }
        return packet.descriptors.count + descriptors <= limit.descriptors
    }

    /// Whether a data frame of `circuit` is queued or being written from the queue. A frame
    /// of a circuit with none may be written alongside the queue: packets are atomic, and the
    /// order the protocol relies on is within a circuit id. A scan, not a count per circuit:
    /// it is needed only for large frames, and only while something is queued.
    func hasQueuedFrame(on circuit: UInt64) -> Bool {
        if let inFlight, inFlight.circuits.contains(circuit) { return true }
        return entries.contains { entry in
            if case .packet(let packet) = entry { return packet.circuits.contains(circuit) }
            return false
        }
    }

    /// Who writes next, with the socket free. The open packet (the last entry) is taken only
    /// with `takeOpen`, which the writer thread passes once the burst is over.
    mutating func next(takeOpen: Bool) -> Next {
        guard !writing, let head = entries.first else { return .nothing }
        switch head {
        case .turn(let waiter):
            entries.removeFirst()
            writing = true
            return .handOff(waiter)
        case .packet(let packet):
            guard entries.count > 1 || takeOpen else { return .openPacketWaits }
            entries.removeFirst()
            writing = true
            inFlight = packet
            queuedBytes -= packet.bytes.count
            queuedDescriptors -= packet.descriptors.count
            return .write(packet)
        }
    }

    /// The packet in flight was written, or failed: the socket is free again. Its buffer is
    /// kept for a later packet; its duplicates are the caller's to close.
    mutating func finishWriting() {
        if let packet = inFlight, spare.count < 4 {
            var buffer = packet.bytes
            packet.bytes = []
            buffer.removeAll(keepingCapacity: true)
            spare.append(buffer)
        }
        inFlight = nil
        writing = false
    }

    /// Empties the queue: the packets (whose duplicates the caller closes) and the waiting
    /// senders (whom the caller releases).
    mutating func removeAll() -> (packets: [Packet], turns: [Waiter]) {
        var packets: [Packet] = []
        var turns: [Waiter] = []
        for entry in entries {
            switch entry {
            case .packet(let p): packets.append(p)
            case .turn(let w): turns.append(w)
            }
        }
        entries = []
        queuedBytes = 0
        queuedDescriptors = 0
        return (packets, turns)
    }
}
