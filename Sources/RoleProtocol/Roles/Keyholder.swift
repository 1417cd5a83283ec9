extension RoleDeclaration {
    public static let keyholder = RoleDeclaration(
        role: .keyholder, purpose: "holds the TLS private key and signs handshakes for the workers",
        link: .supervisorKeyholder,
        // The event loop and the supervisor link's reader and writer.
        threads: 4, reserve: 0, onlyWith: .tls, settings: "KeyholderSettings")
}

/// What the keyholder is started with: the pair it reads before its sandbox, and each
/// worker's signing budget.
public struct KeyholderSettings: RoleSettings {
    public static var declaration: RoleDeclaration { .keyholder }

    /// The private key, PEM, readable by its owner alone.
    public var keyFile: String
    /// The certificate chain, PEM; its first certificate must match the key.
    public var certificateFile: String
    /// Signatures a second each worker may ask for, on average.
    public var signaturesPerSecond = 500
    /// Signatures a worker may ask for at once, above the average.
    public var signatureBurst: Int { 2 * signaturesPerSecond }

    public init(keyFile: String, certificateFile: String, signaturesPerSecond: Int = 500) {
        (self.keyFile, self.certificateFile, self.signaturesPerSecond) = (keyFile, certificateFile, signaturesPerSecond)
    }

    /// The range `serve --tls-signatures-per-second` takes.
    public static let signaturesPerSecondRange = 1...100_000

    public func validate() throws(SettingsError) {
        guard Self.signaturesPerSecondRange.contains(signaturesPerSecond) else {
            throw SettingsError(role: .keyholder, field: "signaturesPerSecond", problem: "\(signaturesPerSecond) is not between 1 and 100000")
        }
        for (field, path) in [("keyFile", keyFile), ("certificateFile", certificateFile)] where !path.hasPrefix("/") {
            throw SettingsError(role: .keyholder, field: field, problem: "\"\(path)\" is not an absolute path")
        }
    }
}
