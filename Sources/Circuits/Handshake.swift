/// What each end says about itself in the first frame of a transport. Both ends send one and
/// check the other's before any circuit carries data, so version skew or a socket connected
/// to the wrong peer fails loudly, naming what each side said, instead of misparsing.
package struct Handshake: Equatable {
    static let magic: [UInt8] = Array("CLOISTER-CIRCUITS".utf8)
    static let version: UInt16 = 1
    /// Largest encoded handshake accepted, whatever the transport's payload limit.
    static let maxSize = 16 * 1024

    var version: UInt16 = Handshake.version
    var intent: String
    var build: String
    var side: TransportSide
    var idBytes: Int
    var maxCircuits: UInt64
    var reservedBand: UInt64
    var reserved: [UInt64: String]
    /// Receive limits of the sender: the peer must respect them.
    var window: UInt64
    var maxPayload: Int
    var maxDescriptors: Int

    /// Encoded form; strings longer than 255 bytes are cut so the whole stays under `maxSize`
    /// for up to 32 reserved circuits.
    package func encode() -> [UInt8] {
        var out = Handshake.magic
        func u8(_ v: Int) { out.append(UInt8(v)) }
        func u16(_ v: UInt16) { out.append(UInt8(v & 0xff)); out.append(UInt8(v >> 8)) }
        func u64(_ v: UInt64) { for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        func string(_ s: String) { let b = Array(s.utf8.prefix(255)); u16(UInt16(b.count)); out += b }
        u16(version)
        string(intent)
        string(build)
        u8(side == .opener ? 0 : 1)
        u8(idBytes)
        u64(maxCircuits)
        u64(reservedBand)
        u16(UInt16(reserved.count))
        for (id, name) in reserved.sorted(by: { $0.key < $1.key }) { u64(id); string(name) }
        u64(window)
        u64(UInt64(maxPayload))
        u8(maxDescriptors)
        return out
    }

    package static func decode(_ bytes: [UInt8]) throws(CircuitError) -> Handshake {
        var reader = Reader(bytes: bytes)
        guard bytes.starts(with: magic) else {
            throw .malformedHandshake("not a circuits handshake (bad magic)")
        }
        reader.offset = magic.count
        let version = try reader.u16()
        guard version == Handshake.version else {
            throw .handshakeMismatch(field: "protocol version", ours: "\(Handshake.version)", theirs: "\(version)")
        }
        let intent = try reader.string()
        let build = try reader.string()
        let sideRaw = try reader.u8()
        guard sideRaw <= 1 else { throw .malformedHandshake("side \(sideRaw)") }
        let idBytes = Int(try reader.u8())
        let maxCircuits = try reader.u64()
        let band = try reader.u64()
        var reserved: [UInt64: String] = [:]
        for _ in 0..<(try reader.u16()) {
            let id = try reader.u64()
            reserved[id] = try reader.string()
        }
        let window = try reader.u64()
        let maxPayload = try reader.u64()
        let maxDescriptors = Int(try reader.u8())
        guard reader.offset == bytes.count else {
            throw .malformedHandshake("\(bytes.count - reader.offset) trailing bytes")
        }
        guard maxPayload <= UInt64(UInt32.max) else { throw .malformedHandshake("maxPayload \(maxPayload)") }
        return Handshake(version: version, intent: intent, build: build,
                         side: sideRaw == 0 ? .opener : .acceptor, idBytes: idBytes,
                         maxCircuits: maxCircuits, reservedBand: band, reserved: reserved,
                         window: window, maxPayload: Int(maxPayload), maxDescriptors: maxDescriptors)
    }

    /// Checks that `theirs` can talk to `self`. Limits (window, payload, descriptors) may
    /// differ: each end honours the other's.
    func check(peer theirs: Handshake) throws(CircuitError) {
        func mismatch(_ field: String, _ ours: String, _ other: String) throws(CircuitError) {
            if ours != other { throw .handshakeMismatch(field: field, ours: ours, theirs: other) }
        }
        try mismatch("intent", intent, theirs.intent)
        try mismatch("build", build, theirs.build)
        if side == theirs.side {
            throw .handshakeMismatch(field: "side", ours: "\(side)", theirs: "\(theirs.side) (both ends claim it)")
        }
        try mismatch("circuit id width", "\(idBytes * 8) bits", "\(theirs.idBytes * 8) bits")
        try mismatch("maxCircuits", "\(maxCircuits)", "\(theirs.maxCircuits)")
        try mismatch("reserved band", "\(reservedBand)", "\(theirs.reservedBand)")
        func describe(_ r: [UInt64: String]) -> String {
            "[" + r.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: ", ") + "]"
        }
        try mismatch("reserved circuits", describe(reserved), describe(theirs.reserved))
    }

    private struct Reader {
        var bytes: [UInt8]
        var offset = 0
        mutating func take(_ n: Int) throws(CircuitError) -> ArraySlice<UInt8> {
            guard bytes.count - offset >= n else { throw .malformedHandshake("truncated at byte \(offset)") }
            defer { offset += n }
            return bytes[offset..<offset + n]
        }
        mutating func u8() throws(CircuitError) -> UInt8 { try take(1).first! }
        mutating func u16() throws(CircuitError) -> UInt16 {
            let b = try take(2)
            return UInt16(b[b.startIndex]) | UInt16(b[b.startIndex + 1]) << 8
        }
        mutating func u64() throws(CircuitError) -> UInt64 {
            try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        mutating func string() throws(CircuitError) -> String {
            let n = Int(try u16())
            let b = try take(n)
            guard let s = String(validating: b, as: UTF8.self) else {
                throw .malformedHandshake("invalid UTF-8 at byte \(offset - n)")
            }
            return s
        }
    }
}

/// Which end of a transport this is. The ends must differ; each starts conversations only on
/// the circuit ids of its own parity (opener: even, acceptor: odd), so the two can never
/// start a conversation on the same idle circuit at once.
public enum TransportSide: String, Sendable {
    case opener
    case acceptor

    func owns(_ id: UInt64) -> Bool { (id % 2 == 0) == (self == .opener) }
}
