import FoundationEssentials

/// asciicast v2 (what `asciinema play` and `asciinema cat` read): a JSON header line, then one
/// JSON array per event, `[seconds, code, data]`: "o" output, "i" input, "r" a resize
/// ("COLUMNSxROWS"), "m" a marker. Cloister's recordings add a "cloister" object to the
/// header (the session, its user, its place in the directory's sequence and the previous
/// recording's last link) and markers that carry the hash chain.
public enum Asciicast {
    public struct Header: Codable, Sendable, Equatable {
        public var version = 2
        public var width: Int
        public var height: Int
        public var timestamp: Int
        public var title: String?
        public var env: [String: String]?
        public var cloister: Cloister?

        public struct Cloister: Codable, Sendable, Equatable {
            public var session: String
            public var user: String
            /// This recording's place in its directory: 1, 2, … with no gap.
            public var sequence: Int
            /// The last link of the recording before it in the sequence ("" for the first).
            public var previous: String
            public var chain = "sha256"

            public init(session: String, user: String, sequence: Int, previous: String) {
                (self.session, self.user, self.sequence, self.previous) = (session, user, sequence, previous)
            }
        }

        public init(width: Int, height: Int, timestamp: Int, title: String? = nil, env: [String: String]? = nil, cloister: Cloister? = nil) {
            (self.width, self.height, self.timestamp, self.title, self.env, self.cloister) = (width, height, timestamp, title, env, cloister)
        }

        /// The header as its line (keys sorted, so the same header is always the same bytes).
        public var line: [UInt8] {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return Array((try? encoder.encode(self)) ?? Data())
        }
    }

    /// One event line.
    public struct Event: Decodable, Sendable, Equatable {
        public var time: Double
        public var code: String
        public var data: String

        public init(time: Double, code: String, data: String) { (self.time, self.code, self.data) = (time, code, data) }

        public init(from decoder: any Decoder) throws {
            var c = try decoder.unkeyedContainer()
            time = try c.decode(Double.self)
            code = try c.decode(String.self)
            data = try c.decode(String.self)
            guard c.isAtEnd else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "more than three fields") }
        }

        public var line: [UInt8] {
            var out = Array("[\(Asciicast.seconds(time)), ".utf8)
            out.reserveCapacity(out.count + data.utf8.count + 16)
            Asciicast.quote(code, into: &out)
            out += [0x2c, 0x20]
            Asciicast.quote(data, into: &out)
            out.append(0x5d)
            return out
        }

        public static func parse(_ line: some Collection<UInt8>) -> Event? { try? JSONDecoder().decode(Event.self, from: Data(line)) }
    }

    /// Seconds with microseconds, as asciinema writes them.
    static func seconds(_ value: Double) -> String {
        let micros = Int64((max(0, value) * 1_000_000).rounded())
        let fraction = String(micros % 1_000_000)
        return "\(micros / 1_000_000).\(String(repeating: "0", count: 6 - fraction.count))\(fraction)"
    }

    /// A JSON string (RFC 8259), quotes, backslashes and control characters escaped,
    /// appended as UTF-8 (byte by byte: every byte of a multi-byte character is 0x80 or
    /// above, so only ASCII is ever escaped). The recorder's hot path: runs of bytes that need
    /// no escape are copied whole.
    static func quote(_ text: String, into out: inout [UInt8]) {
        var text = text
        text.withUTF8 { quote($0, into: &out) }
    }

    static func quote(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.reserveCapacity(out.count + bytes.count + 2)
        out.append(0x22)
        var run = 0
        for i in 0..<bytes.count {
            let byte = bytes[i]
            if byte >= 0x20 && byte != 0x22 && byte != 0x5c { continue }
            if run < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<i])) }
            run = i + 1
            switch byte {
            case 0x22: out += [0x5c, 0x22]
            case 0x5c: out += [0x5c, 0x5c]
            case 0x0a: out += [0x5c, 0x6e]
            case 0x0d: out += [0x5c, 0x72]
            case 0x09: out += [0x5c, 0x74]
            default: out += [0x5c, 0x75, 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 15)]]
            }
        }
        if run < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run...])) }
        out.append(0x22)
    }
}

/// Output as text for the "o" events: bytes that arrive split inside a character are held
/// until the rest comes, so a recording has exactly the characters the terminal was sent
/// (a byte that is not UTF-8 becomes U+FFFD, as a terminal would draw it).
public struct UTF8Splitter: Sendable {
    private var held: [UInt8] = []

    public init() {}

    public mutating func text(_ bytes: [UInt8]) -> String {
        let all = held.isEmpty ? bytes : held + bytes
        let cut = Self.completeLength(all)
        held = Array(all[cut...])
        return String(decoding: all[..<cut], as: UTF8.self)
    }

    /// What is still held (an incomplete character at the very end), as text.
    public mutating func flush() -> String {
        defer { held = [] }
        return String(decoding: held, as: UTF8.self)
    }

    /// The length of the longest prefix that does not end inside a character.
    static func completeLength(_ bytes: [UInt8]) -> Int {
        var i = bytes.count
        var back = 0
        while i > 0 && back < 3 {
            let b = bytes[i - 1]
            if b & 0xc0 != 0x80 {
                let need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1
                return need > back + 1 ? i - 1 : bytes.count
            }
            i -= 1
            back += 1
        }
        return bytes.count
    }
}
