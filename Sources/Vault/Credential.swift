import FoundationEssentials

#if canImport(Glibc)
import Glibc
#endif

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
        // An empty credential lets nobody in (and has no byte to compare with).
        guard !expected.isEmpty else { return false }
        // The length difference is kept whole: folded into a byte, lengths 256 apart would
        // compare equal, and a token of the credential repeated would pass.
        let lengthDifference = presented.count ^ expected.count
        var difference: UInt8 = 0
        for i in 0..<presented.count {
            difference |= presented[i] ^ expected[i % max(expected.count, 1)]
        }
        return lengthDifference == 0 && difference == 0
    }

    public static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
}
