import COpenSSL

/// The recordings' hash chain: each line's link is SHA-256 of the previous link and the
/// line's bytes, starting from a fixed seed, so changing, removing, inserting or reordering
/// any line changes every link after it.
public struct HashChain: Sendable, Equatable {
    public private(set) var head: [UInt8]
    /// Lines chained so far.
    public private(set) var count = 0

    public static let seed = Array("cloister recording v1".utf8)

    public init(previous: [UInt8] = []) {
        head = Self.sha256(Self.seed + previous)
    }

    public mutating func add(_ line: [UInt8]) {
        line.withUnsafeBytes { add($0) }
    }

    public mutating func add(_ line: UnsafeRawBufferPointer) {
        head = Self.sha256(head, line)
        count += 1
    }

    /// The chain after a recording's header line, from its `previous` link in hex ("" for a
    /// directory's first recording); nil when that is not a SHA-256 in hex.
    public static func afterHeader(_ line: [UInt8], previous: String) -> HashChain? {
        guard let bytes = Self.bytes(hex: previous), bytes.isEmpty || bytes.count == 32 else { return nil }
        var chain = HashChain(previous: bytes)
        chain.add(line)
        return chain
    }

    public var hex: String { head.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    /// SHA-256 of `first` then `second`, without joining them.
    static func sha256(_ first: [UInt8], _ second: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard let context = EVP_MD_CTX_new() else { preconditionFailure("EVP_MD_CTX_new failed") }
        defer { EVP_MD_CTX_free(context) }
        let ok = EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1
            && first.withUnsafeBytes { EVP_DigestUpdate(context, $0.baseAddress, $0.count) } == 1
            && EVP_DigestUpdate(context, second.baseAddress, second.count) == 1
            && EVP_DigestFinal_ex(context, &out, &length) == 1
        precondition(ok && length == 32, "SHA-256 failed")
        return out
    }

    public static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = bytes.withUnsafeBytes { input in
            EVP_Digest(input.baseAddress, input.count, &out, &length, EVP_sha256(), nil)
        }
        precondition(ok == 1 && length == 32, "EVP_Digest(SHA-256) failed")
        return out
    }

    public static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            out.append(byte)
        }
        return out
    }
}
