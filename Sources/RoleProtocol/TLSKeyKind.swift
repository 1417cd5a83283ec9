/// The TLS key types Cloister serves with: the keyholder signs with one, the workers offer
/// its signature schemes in their handshakes.
public enum TLSKeyKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case rsa = 1, p256 = 2, p384 = 3

    public var description: String {
        switch self {
        case .rsa: return "RSA"
        case .p256: return "ECDSA P-256"
        case .p384: return "ECDSA P-384"
        }
    }

    /// What `cloister role keyholder-check` prints and the supervisor reads back.
    public var name: String {
        switch self {
        case .rsa: return "rsa"
        case .p256: return "p256"
        case .p384: return "p384"
        }
    }

    public init?(name: String) {
        guard let kind = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = kind
    }

    /// TLS SignatureScheme code points, most preferred first.
    public var schemes: [UInt16] {
        switch self {
        // rsa_pss_rsae_sha256/384/512, rsa_pkcs1_sha256/384/512.
        case .rsa: return [0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601]
        case .p256: return [0x0403]
        case .p384: return [0x0503]
        }
    }
}
