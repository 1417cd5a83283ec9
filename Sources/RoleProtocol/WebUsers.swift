/// Web users and their passwords' crypt(3) hashes (`--users-file`): one `USER:HASH` per line,
/// `#` comments and blank lines ignored. The supervisor reads and checks the file; the vault,
/// which alone checks passwords, gets it in this same form (`SupervisorToVault.configureUsers`).
public struct WebUsers: Sendable, Equatable {
    /// Hash by user name.
    public let hashes: [String: String]

    public struct Problem: Error, CustomStringConvertible {
        public var line: Int
        public var problem: String
        public var description: String { "line \(line): \(problem)" }
    }

    /// At most this many bytes, so the whole list travels in one link message.
    public static let maxBytes = 60 * 1024

    public static func parse(_ bytes: [UInt8]) throws(Problem) -> WebUsers {
        guard bytes.count <= maxBytes else { throw Problem(line: 0, problem: "larger than \(maxBytes) bytes") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw Problem(line: 0, problem: "not UTF-8 text") }
        var hashes: [String: String] = [:]
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            let number = index + 1
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else { throw Problem(line: number, problem: "expected USER:HASH") }
            let user = String(line[..<colon]), hash = String(line[line.index(after: colon)...])
            guard isUserName(user) else {
                throw Problem(line: number, problem: "\"\(user.prefix(32))\" is not a user name (letters, digits, . _ -, at most 32, not starting with -)")
            }
            // crypt(3)'s hashes all start with $ID$ (yescrypt $y$, SHA-512 $6$, bcrypt $2b$…);
            // anything else would be a password in plain text, or DES, and is refused.
            guard hash.hasPrefix("$"), hash.count >= 20, hash.count <= 256,
                  hash.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0 != ":" }) else {
                throw Problem(line: number, problem: "the password of \(user) is not a crypt(3) hash ($y$…, $6$…); plain text is refused "
                              + "(make one with `mkpasswd` or `openssl passwd -6`)")
            }
            guard hashes[user] == nil else { throw Problem(line: number, problem: "\(user) is given twice") }
            hashes[user] = hash
        }
        guard !hashes.isEmpty else { throw Problem(line: 0, problem: "no USER:HASH line") }
        return WebUsers(hashes: hashes)
    }

    public init(hashes: [String: String]) { self.hashes = hashes }

    /// The file's form, one line per user in name order, as the link carries it.
    public var encoded: [UInt8] {
        Array(hashes.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)\n" }.joined().utf8)
    }

    /// The names useradd takes: 1 to 32 of letters, digits, `.`, `_`, `-`, not starting with `-`.
    public static func isUserName(_ name: String) -> Bool {
        (1...32).contains(name.utf8.count) && !name.hasPrefix("-")
            && name.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)) }
    }
}
