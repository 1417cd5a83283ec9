/// The fixed header in front of every frame, little-endian:
///
///     offset 0  kind          UInt8   (FrameKind)
///     offset 1  flags         UInt8   (bit 0: end of conversation)
///     offset 2  descriptors   UInt8   number of SCM_RIGHTS descriptors sent with the frame
///     offset 3  length        UInt32  payload bytes after the header
///     offset 7  circuit id    Id.bitWidth / 8 bytes
///
/// Parsing is pure so that every malformed case is tested without a socket.
struct FrameHeader: Equatable {
    var kind: FrameKind
    var end: Bool
    var descriptorCount: Int
    var length: Int
    var circuit: UInt64

    static let endFlag: UInt8 = 0x01

    static func size(idBytes: Int) -> Int { 7 + idBytes }

    func encode(into buffer: UnsafeMutableRawBufferPointer, idBytes: Int) {
        buffer[0] = kind.rawValue
        buffer[1] = end ? Self.endFlag : 0
        buffer[2] = UInt8(descriptorCount)
        var len = UInt32(length).littleEndian
        withUnsafeBytes(of: &len) { buffer.baseAddress!.advanced(by: 3).copyMemory(from: $0.baseAddress!, byteCount: 4) }
        var id = circuit
        for i in 0..<idBytes {
            buffer[7 + i] = UInt8(truncatingIfNeeded: id)
            id >>= 8
        }
    }

    /// Decodes and checks a header against the receiver's limits. `bytes` must hold at least
    /// `size(idBytes:)` bytes.
    static func decode(_ bytes: UnsafeRawBufferPointer, idBytes: Int, maxCircuits: UInt64,
                       maxPayload: Int) throws(CircuitError) -> FrameHeader {
        let required = size(idBytes: idBytes)
        guard bytes.count >= required else {
            throw .truncatedHeader(received: bytes.count, required: required)
        }
        guard let kind = FrameKind(rawValue: bytes[0]) else { throw .unknownKind(bytes[0]) }
        let flags = bytes[1]
        guard flags & ~endFlag == 0 else { throw .unknownFlags(flags) }
        let length = Int(UInt32(bytes[3]) | UInt32(bytes[4]) << 8 | UInt32(bytes[5]) << 16 | UInt32(bytes[6]) << 24)
        var id: UInt64 = 0
        for i in (0..<idBytes).reversed() { id = id << 8 | UInt64(bytes[7 + i]) }
        guard id < maxCircuits else { throw .circuitOutOfRange(id: id, maxCircuits: maxCircuits) }
        let limit = kind == .handshake ? Handshake.maxSize : maxPayload
        guard length <= limit else { throw .oversized(length: length, limit: limit) }
        return FrameHeader(kind: kind, end: flags & endFlag != 0, descriptorCount: Int(bytes[2]),
                           length: length, circuit: id)
    }
}

enum FrameKind: UInt8 {
    /// First frame each way: protocol intent, build, layout (circuit 0, payload `Handshake`).
    case handshake = 1
    /// Application data on a circuit, possibly with descriptors and the end flag.
    case data = 2
    /// Flow control: the sender may send up to this cumulative byte count (UInt64) on the
    /// circuit.
    case credit = 3
}
