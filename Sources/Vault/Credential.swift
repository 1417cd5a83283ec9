/// The configured credential, as ttyd's clients present it: base64 of "user:password".
/// Only the vault holds it; workers forward what clients send and learn only yes or no.
public struct Credential: Sendable {
    let expected: [UInt8]

    public init(token: [UInt8]) { expected = token }

    /// ttyd's `--credential USER:PASSWORD` in the form clients send (standard base64).
    public init(userAndPassword: String) {
        expected = Array(Self.base64(Array(userAndPassword.utf8)).utf8)
    }

    public var token: [UInt8] { expected }

    /// Compares in time that depends only on the lengths, never on where the first difference
    /// is, so response timing cannot be used to guess the credential byte by byte.
    public func matches(_ presented: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: presented.count ^ expected.count)
        for i in 0..<presented.count {
            difference |= presented[i] ^ expected[i % max(expected.count, 1)]
        }
        return difference == 0 && !expected.isEmpty
    }

    public static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let chunk = bytes[i..<min(i + 3, bytes.count)]
            let b0 = chunk[chunk.startIndex]
            let b1 = chunk.count > 1 ? chunk[chunk.startIndex + 1] : 0
            let b2 = chunk.count > 2 ? chunk[chunk.startIndex + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x3) << 4 | b1 >> 4)])
            out.append(chunk.count > 1 ? alphabet[Int((b1 & 0xf) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(chunk.count > 2 ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
