import CShim

/// A received frame: header, payload, and the descriptors that came with it.
package struct Frame {
    var header: FrameHeader
    var payload: [UInt8]
    var descriptors: ReceivedDescriptors?
}

/// Limits a receiver enforces on every frame.
package struct FrameLimits {
    var idBytes: Int
    var maxCircuits: UInt64
    var maxPayload: Int
    var maxDescriptors: Int

    package init(idBytes: Int, maxCircuits: UInt64, maxPayload: Int, maxDescriptors: Int) {
        (self.idBytes, self.maxCircuits, self.maxPayload, self.maxDescriptors) = (idBytes, maxCircuits, maxPayload, maxDescriptors)
    }
    var headerSize: Int { FrameHeader.size(idBytes: idBytes) }

    /// Descriptors one packet may carry when several frames share it: room for a batch of
    /// single-descriptor messages, and at least one whole message. Derived from the declared
    /// per-message limit on both ends (same build), so it needs no handshake field.
    static func packetDescriptors(_ perMessage: Int) -> Int {
        perMessage == 0 ? 0 : min(Int(CLOISTER_MAX_FDS_PER_MESSAGE), max(perMessage, 16))
    }
}
