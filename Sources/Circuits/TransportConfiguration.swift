/// What one end of a transport declares and enforces. `Id` is the circuit id type; its
/// width is part of the wire format and of the handshake.
public struct TransportConfiguration<Id: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// The protocol this transport speaks ("cloister.worker-vault/1"); both ends must agree.
    public var intent: String
    public var side: TransportSide
    /// Ids run from 0 to `maxCircuits - 1`.
    public var maxCircuits: UInt64
    /// Ids below this are the reserved band: never handed out by `open()`, usable only when
    /// named in `reserved`. A band wider than today's reserved ids lets a later version add a
    /// purpose without moving any other id.
    public var reservedBand: Id
    /// Reserved circuits agreed with the peer, each with its purpose. They carry one endless
    /// conversation each (no end flag) and are never idle.
    public var reserved: [Id: String]
    /// Flow-control window per circuit, in credit units (payload bytes + `messageCost` per
    /// message + `descriptorCost` per descriptor): how much the peer may have in flight on
    /// one circuit before this end's consumer reads it. Credit returns half a window at a
    /// time, so a bulk stream needs a window of about twice what is in flight (socket buffer
    /// plus what waits for the consumer to run), or the sender idles waiting for credit.
    public var window: Int
    /// Largest payload this end accepts.
    public var maxPayload: Int
    /// Most descriptors this end accepts on one message (0: none at all).
    public var maxDescriptorsPerMessage: Int
    /// How long to wait for the peer's handshake.
    public var handshakeTimeoutMilliseconds: Int
    /// How long `close` waits for messages still queued to be written (the peer may have
    /// stopped reading); what is left after that is dropped.
    public var closeLingerMilliseconds: Int
    /// Bytes of packet buffers the reader receives a batch into (one `recvmmsg`): as many
    /// packets of the largest size as fit, between 1 and 16. The buffers live as long as the
    /// transport, so a link that carries a few small messages (a process per client has
    /// one) keeps this small; a link on the output path keeps the default, about 1 MiB.
    public var receiveBufferBytes: Int
    /// The running build; both ends must match.
    public var build: String

    public static var messageCost: Int { 64 }
    public static var descriptorCost: Int { 1024 }

    public init(intent: String, side: TransportSide, maxCircuits: UInt64? = nil,
                reservedBand: Id = 0, reserved: [Id: String] = [:], window: Int = 512 * 1024,
                maxPayload: Int = 128 * 1024, maxDescriptorsPerMessage: Int = 4,
                handshakeTimeoutMilliseconds: Int = 5000, closeLingerMilliseconds: Int = 2000,
                receiveBufferBytes: Int = 1 << 20, build: String = BuildID.current) {
        self.intent = intent
        self.side = side
        self.maxCircuits = maxCircuits ?? (Id.bitWidth >= 64 ? UInt64.max : UInt64(1) << Id.bitWidth)
        self.reservedBand = reservedBand
        self.reserved = reserved
        self.window = window
        self.maxPayload = maxPayload
        self.maxDescriptorsPerMessage = maxDescriptorsPerMessage
        self.handshakeTimeoutMilliseconds = handshakeTimeoutMilliseconds
        self.closeLingerMilliseconds = closeLingerMilliseconds
        self.receiveBufferBytes = receiveBufferBytes
        self.build = build
    }

    /// Credit a message uses. A bare end (no payload, no descriptors) is free, so a side
    /// whose credit is exhausted can always end its conversation; the receiver allows one end
    /// per conversation, so this cannot be used to flood.
    static func cost(payload: Int, descriptors: Int, end: Bool = false) -> Int {
        if end && payload == 0 && descriptors == 0 { return 0 }
        return payload + messageCost + descriptors * descriptorCost
    }

    /// Checks the configuration as `Transport.start` does, so a caller can reject it before
    /// it has a socket.
    public func validate() throws(CircuitError) {
        let idSpace: UInt64 = Id.bitWidth >= 64 ? .max : UInt64(1) << Id.bitWidth
        func fail(_ why: String) throws(CircuitError) { throw .invalidConfiguration(why) }
        if intent.isEmpty { try fail("intent is empty") }
        if maxCircuits == 0 || maxCircuits > idSpace {
            try fail("maxCircuits \(maxCircuits) must be in 1...\(idSpace) for \(Id.bitWidth)-bit ids")
        }
        if UInt64(reservedBand) > maxCircuits { try fail("reserved band \(reservedBand) exceeds maxCircuits \(maxCircuits)") }
        for id in reserved.keys where id >= reservedBand {
            try fail("reserved circuit \(id) lies outside the reserved band 0..<\(reservedBand)")
        }
        if maxPayload < 0 || maxPayload > Int(UInt32.max) { try fail("maxPayload \(maxPayload) out of range") }
        if handshakeTimeoutMilliseconds <= 0 { try fail("handshake timeout \(handshakeTimeoutMilliseconds) ms must be positive") }
        if closeLingerMilliseconds < 0 { try fail("close linger \(closeLingerMilliseconds) ms must not be negative") }
        if receiveBufferBytes <= 0 { try fail("receive buffer of \(receiveBufferBytes) bytes must be positive") }
        if maxDescriptorsPerMessage < 0 || maxDescriptorsPerMessage > 253 {
            try fail("maxDescriptorsPerMessage \(maxDescriptorsPerMessage) must be in 0...253 (SCM_MAX_FD)")
        }
        let largest = Self.cost(payload: maxPayload, descriptors: maxDescriptorsPerMessage)
        if window < largest {
            try fail("window \(window) is smaller than the largest message's cost \(largest), which could never be sent")
        }
    }
}
