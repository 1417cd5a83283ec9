#if canImport(Glibc)
import Glibc
#endif

/// Files moved through a terminal, as they show in its output: trzsz's start line
/// (`::TRZSZ:TRANSFER:S:` when the shell sends, `R:` or `D:` when it receives files or a
/// directory) and ZMODEM's first header (`**` ZDLE `B00`, ZRQINIT, from `sz`; `B01`, ZRINIT,
/// from `rz`). Only the start is recognised, from fixed byte strings: no frame is parsed, so
/// names and sizes are not known here (trzsz sends them compressed, ZMODEM escaped).
public struct TransferSpotter: Sendable {
    public struct Transfer: Sendable, Equatable {
        /// "trzsz" or "zmodem".
        public var protocolName: String
        /// "download" (the shell sends, the browser saves) or "upload".
        public var direction: String

        public init(protocolName: String, direction: String) { (self.protocolName, self.direction) = (protocolName, direction) }
    }

    private static let markers: [(bytes: [UInt8], transfer: Transfer)] = [
        (Array("::TRZSZ:TRANSFER:S:".utf8), Transfer(protocolName: "trzsz", direction: "download")),
        (Array("::TRZSZ:TRANSFER:R:".utf8), Transfer(protocolName: "trzsz", direction: "upload")),
        (Array("::TRZSZ:TRANSFER:D:".utf8), Transfer(protocolName: "trzsz", direction: "upload")),
        ([0x2a, 0x2a, 0x18, 0x42, 0x30, 0x30], Transfer(protocolName: "zmodem", direction: "download")),
        ([0x2a, 0x2a, 0x18, 0x42, 0x30, 0x31], Transfer(protocolName: "zmodem", direction: "upload")),
    ]
    private static let longest = markers.map(\.bytes.count).max()!

    /// The end of the last chunk, for a marker split across two.
    private var tail: [UInt8] = []
    /// When each kind was last seen: `sz` and `rz` repeat their first header while they wait.
    private var lastSeen: [String: Double] = [:]
    /// Repeats within this many seconds are the same transfer.
    public static let repeatWindow = 10.0

    public init() {}

    /// The transfers that begin in `bytes`, output at `seconds`. Each marker begins with ':'
    /// or '*': memchr finds those (the recorder's hot path), and only there are markers compared.
    public mutating func scan(_ bytes: [UInt8], at seconds: Double) -> [Transfer] {
        var seen: [Transfer] = []
        func scan(_ region: UnsafeBufferPointer<UInt8>) {
            guard let base = region.baseAddress else { return }
            for first in [UInt8(0x3a), 0x2a] {
                var at = 0
                while at < region.count, let hit = memchr(base + at, Int32(first), region.count - at) {
                    let index = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                    for (marker, transfer) in Self.markers where marker[0] == first && index + marker.count <= region.count {
                        if memcmp(base + index, marker, marker.count) == 0 && !seen.contains(transfer) { seen.append(transfer) }
                    }
                    at = index + 1
                }
            }
        }
        // A marker split across the last chunk and this one, then this one.
        (tail + bytes.prefix(Self.longest - 1)).withUnsafeBufferPointer(scan)
        bytes.withUnsafeBufferPointer(scan)
        tail = Array((tail + bytes.suffix(Self.longest - 1)).suffix(Self.longest - 1))
        return seen.filter { transfer in
            let key = transfer.protocolName + transfer.direction
            if let last = lastSeen[key], seconds - last < Self.repeatWindow { return false }
            lastSeen[key] = seconds
            return true
        }
    }
}
