/// One file the worker serves, ready to send: its bytes, their gzip form when that is
/// smaller, the validator, and the headers that depend on what the file is.
public struct Asset: Sendable, Equatable {
    public var contentType: String
    /// Content-Security-Policy, or nil for none.
    public var securityPolicy: String?
    /// A strong validator: a quoted hash of `body`.
    public var etag: String
    /// The gzipped representation's: a strong validator names one encoding's bytes.
    public var gzippedETag: String { String(etag.dropLast()) + "-gzip\"" }
    public var body: [UInt8]
    /// `body` gzipped, or nil when that would not be smaller.
    public var gzipped: [UInt8]?

    public init(contentType: String, securityPolicy: String? = nil, body: [UInt8], gzipped: [UInt8]?) {
        self.contentType = contentType
        self.securityPolicy = securityPolicy
        self.body = body
        self.gzipped = gzipped
        self.etag = Self.validator(of: body)
    }

    /// FNV-1a (64 bits) and the length. A validator only has to change when the bytes do;
    /// nothing here needs to resist a forger, since the server produces both sides.
    static func validator(of bytes: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "\"\(String(repeating: "0", count: 16 - hex.count))\(hex)-\(bytes.count)\""
    }
}

/// Every asset by the path it is served at (relative to the server's root: "/", "/xterm.js").
/// The supervisor builds it once (`AssetLoader`) and hands it to each worker as one sealed
/// memory file in the encoding below, since a worker may not open files.
public struct AssetBundle: Sendable, Equatable {
    public var assets: [String: Asset]

    public init(assets: [String: Asset] = [:]) {
        self.assets = assets
    }

    public subscript(path: String) -> Asset? { assets[path] }

    public struct DecodingError: Error, CustomStringConvertible, Equatable {
        public var problem: String
        public var description: String { "asset bundle: \(problem)" }
    }

    static let magic = Array("CLOISTER-ASSETS-1\n".utf8)
    /// Bounds the decoder enforces, so a damaged bundle cannot make it allocate without limit.
    public static let maxAssets = 4096, maxBytes = 64 << 20

    /// Magic, count, then per asset (sorted by path): path, content type, policy (empty for
    /// none), body, gzipped body (empty for none); each field a 32-bit little-endian length
    /// and its bytes. The validator is recomputed on decoding.
    public var encoded: [UInt8] {
        var out = Self.magic
        func field(_ bytes: [UInt8]) {
            withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(contentsOf: bytes)
        }
        withUnsafeBytes(of: UInt32(assets.count).littleEndian) { out.append(contentsOf: $0) }
        for (path, asset) in assets.sorted(by: { $0.key < $1.key }) {
            field(Array(path.utf8))
            field(Array(asset.contentType.utf8))
            field(Array((asset.securityPolicy ?? "").utf8))
            field(asset.body)
            field(asset.gzipped ?? [])
        }
        return out
    }

    public init(decoding bytes: [UInt8]) throws(DecodingError) {
        guard bytes.count <= Self.maxBytes else { throw DecodingError(problem: "\(bytes.count) bytes, more than \(Self.maxBytes)") }
        guard bytes.starts(with: Self.magic) else { throw DecodingError(problem: "not an asset bundle (no magic)") }
        var at = Self.magic.count
        func u32() throws(DecodingError) -> Int {
            guard bytes.count - at >= 4 else { throw DecodingError(problem: "truncated at byte \(at)") }
            let value = bytes[at..<at + 4].reversed().reduce(0) { $0 << 8 | Int($1) }
            at += 4
            return value
        }
        func field() throws(DecodingError) -> [UInt8] {
            let count = try u32()
            guard bytes.count - at >= count else { throw DecodingError(problem: "a field of \(count) bytes at byte \(at) runs past the end") }
            defer { at += count }
            return Array(bytes[at..<at + count])
        }
        func text() throws(DecodingError) -> String {
            let raw = try field()
            guard let string = String(validating: raw, as: UTF8.self) else { throw DecodingError(problem: "a name that is not UTF-8") }
            return string
        }
        let count = try u32()
        guard count <= Self.maxAssets else { throw DecodingError(problem: "\(count) assets, more than \(Self.maxAssets)") }
        var assets: [String: Asset] = [:]
        for _ in 0..<count {
            let path = try text()
            guard path.hasPrefix("/"), assets[path] == nil else { throw DecodingError(problem: "bad or repeated path \"\(path)\"") }
            let type = try text()
            let policy = try text()
            let body = try field()
            let gzipped = try field()
            assets[path] = Asset(contentType: type, securityPolicy: policy.isEmpty ? nil : policy, body: body,
                                 gzipped: gzipped.isEmpty ? nil : gzipped)
        }
        guard at == bytes.count else { throw DecodingError(problem: "\(bytes.count - at) bytes after the last asset") }
        self.assets = assets
    }
}
