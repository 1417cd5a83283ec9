import COpenSSL
import RoleProtocol
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// The TLS private key, held by the keyholder alone, with OpenSSL's libcrypto: read from its
/// file (which only its owner may read), checked against the certificate, and used to sign
/// what a worker's TLS handshake needs signed, with one of the TLS signature schemes the key
/// supports. Nothing here gives the key's bytes out.
public final class SigningKey: @unchecked Sendable {
    public typealias Kind = TLSKeyKind

    /// A start-up or reload failure, naming the file and what is wrong with it.
    public struct Problem: Error, CustomStringConvertible, Sendable {
        public var file: String
        public var problem: String
        public var description: String { "\(file): \(problem)" }
    }

    public let kind: Kind
    /// RSA keys below this size are refused.
    public static let minimumRSABits: Int32 = 2048
    private let key: OpaquePointer

    /// Reads `keyFile` (refused unless only its owner can read or write it) and the first
    /// certificate of `certificateFile`, and checks that they belong together.
    public init(keyFile: String, certificateFile: String) throws(Problem) {
        try Self.checkOwnerOnly(keyFile)
        guard let certificate = Self.readCertificate(certificateFile) else {
            throw Problem(file: certificateFile, problem: "no PEM certificate could be read (\(Self.openSSLError()))")
        }
        defer { X509_free(certificate) }
        guard let key = Self.readKey(keyFile) else {
            throw Problem(file: keyFile, problem: "no PEM private key could be read (\(Self.openSSLError()))")
        }
        self.key = key
        switch EVP_PKEY_get_base_id(key) {
        case EVP_PKEY_RSA:
            let bits = EVP_PKEY_get_bits(key)
            guard bits >= Self.minimumRSABits else {
                EVP_PKEY_free(key)
                throw Problem(file: keyFile, problem: "an RSA key of \(bits) bits; at least \(Self.minimumRSABits) are needed")
            }
            kind = .rsa
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            _ = EVP_PKEY_get_group_name(key, &name, name.count, &length)
            switch String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) {
            case "prime256v1", "P-256": kind = .p256
            case "secp384r1", "P-384": kind = .p384
            case let other:
                EVP_PKEY_free(key)
                throw Problem(file: keyFile, problem: "an EC key on curve \(other.isEmpty ? "?" : other); P-256 and P-384 are supported")
            }
        default:
            let type = String(cString: OBJ_nid2sn(EVP_PKEY_get_base_id(key)))
            EVP_PKEY_free(key)
            throw Problem(file: keyFile, problem: "a \(type) key; RSA (2048 bits or more), ECDSA P-256 and P-384 are supported")
        }
        // Every property is set from here on: a throw runs deinit, which frees the key.
        guard X509_check_private_key(certificate, key) == 1 else {
            ERR_clear_error()
            throw Problem(file: keyFile, problem: "does not match the certificate in \(certificateFile)")
        }
    }

    deinit { EVP_PKEY_free(key) }

    /// Signs `data` (not yet hashed, as TLS gives it) with `scheme`, one of `kind.schemes`.
    public func sign(scheme: UInt16, data: [UInt8]) throws(Problem) -> [UInt8] {
        guard kind.schemes.contains(scheme) else {
            throw Problem(file: "signature", problem: "scheme 0x\(String(scheme, radix: 16)) is not one of this \(kind) key's")
        }
        let digest: OpaquePointer?
        switch scheme & 0xff {
        case 0x04: digest = EVP_sha256()
        case 0x05: digest = EVP_sha384()
        case 0x06: digest = EVP_sha512()
        default: digest = [0x0804: EVP_sha256(), 0x0805: EVP_sha384(), 0x0806: EVP_sha512()][scheme] ?? nil
        }
        let pss = (0x0804...0x0806).contains(scheme)
        guard let context = EVP_MD_CTX_new() else { throw Problem(file: "signature", problem: "EVP_MD_CTX_new failed") }
        defer { EVP_MD_CTX_free(context) }
        var keyContext: OpaquePointer?
        guard EVP_DigestSignInit(context, &keyContext, digest, nil, key) == 1 else {
            throw Problem(file: "signature", problem: "EVP_DigestSignInit: \(Self.openSSLError())")
        }
        if pss {
            // TLS wants PSS with a salt as long as the digest (RFC 8446, 4.2.3).
            guard EVP_PKEY_CTX_set_rsa_padding(keyContext, RSA_PKCS1_PSS_PADDING) == 1,
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(keyContext, RSA_PSS_SALTLEN_DIGEST) == 1 else {
                throw Problem(file: "signature", problem: "PSS padding: \(Self.openSSLError())")
            }
        }
        var length = 0
        guard EVP_DigestSign(context, nil, &length, data, data.count) == 1 else {
            throw Problem(file: "signature", problem: "EVP_DigestSign: \(Self.openSSLError())")
        }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &signature, &length, data, data.count) == 1 else {
            throw Problem(file: "signature", problem: "EVP_DigestSign: \(Self.openSSLError())")
        }
        return Array(signature.prefix(length))
    }

    /// As a credential file: a key that its group or others may read or write is refused.
    static func checkOwnerOnly(_ path: String) throws(Problem) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw Problem(file: path, problem: "stat: \(String(cString: strerror(errno))) (errno \(errno))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw Problem(file: path, problem: "not a regular file") }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw Problem(file: path, problem: "mode \(String(mode, radix: 8)) lets others than its owner read or write it; chmod 600 it")
        }
    }

    private static func readKey(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
    }

    private static func readCertificate(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_X509(bio, nil, nil, nil)
    }

    /// OpenSSL's queued errors, oldest first, cleared.
    static func openSSLError() -> String {
        var messages: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var text = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &text, text.count)
            messages.append(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages.isEmpty ? "no detail" : messages.joined(separator: "; ")
    }
}
