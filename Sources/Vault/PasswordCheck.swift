import CCrypt
import FoundationEssentials
import RoleProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Checks ttyd's AuthToken (base64 of "user:password") against a users file's crypt(3)
/// hashes. Hashing is slow on purpose (yescrypt takes tens of milliseconds), and a page load
/// checks the credential once per asset, so tokens that passed are remembered (a bounded
/// number, forgotten with the users); wrong ones are left to the vault's throttle.
final class PasswordCheck: Sendable {
    let users: WebUsers
    private let passed = Mutex<[[UInt8]: String]>([:])
    private static let remembered = 256

    init(users: WebUsers) { self.users = users }

    /// The user of a token that passed before: no hash needed.
    func remembered(_ token: [UInt8]) -> String? {
        passed.withLock { $0[token] }
    }

    /// The user the token names, if its password matches that user's hash. Slow: run it off
    /// the event loops.
    func user(for token: [UInt8]) -> String? {
        if let user = remembered(token) { return user }
        guard let decoded = Data(base64Encoded: Data(token)), let text = String(validating: Array(decoded), as: UTF8.self),
              let colon = text.firstIndex(of: ":") else { return nil }
        let name = String(text[..<colon]), password = String(text[text.index(after: colon)...])
        // An unknown user costs a hash all the same, so timing does not tell who exists.
        let hash = users.hashes[name] ?? users.hashes.values.min() ?? ""
        guard Self.matches(password: password, hash: hash), users.hashes[name] != nil else { return nil }
        passed.withLock {
            if $0.count >= Self.remembered { $0.removeAll() }
            $0[token] = name
        }
        return name
    }

    /// crypt_rn(password, hash) gives the hash again when the password is right; compared in
    /// time that does not depend on where they differ.
    static func matches(password: String, hash: String) -> Bool {
        let size = MemoryLayout<crypt_data>.size
        let data = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<crypt_data>.alignment)
        defer {
            // The password passed through it.
            memset(data, 0, size)
            data.deallocate()
        }
        memset(data, 0, size)
        guard let output = crypt_rn(password, hash, data, Int32(size)) else { return false }
        let computed = Array(String(cString: output).utf8), expected = Array(hash.utf8)
        guard computed.count == expected.count else { return false }
        var difference: UInt8 = 0
        for i in computed.indices { difference |= computed[i] ^ expected[i] }
        return difference == 0
    }
}
