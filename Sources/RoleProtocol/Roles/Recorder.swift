extension RoleDeclaration {
    public static let recorder = RoleDeclaration(
        role: .recorder, purpose: "writes each session's recording from the vault's fixed-layout feed; parses no client protocol, opens no path",
        link: .supervisorRecorder,
        // The event loop (Swift concurrency), the supervisor link's reader and writer, and a
        // reserve of two feed readers: the link to a vault that ended may still be draining
        // when the next vault's arrives.
        threads: 6, reserve: 2, onlyWith: .recording, settings: "RecorderSettings")
}

extension Role {
    public static let recorder = Role(rawValue: "recorder")
}

/// What the recorder is started with.
public struct RecorderSettings: RoleSettings {
    public static var declaration: RoleDeclaration { .recorder }

    /// Events between two checkpoints of a recording's hash chain (each also audited).
    public var checkpointEvery = 256
    /// Output a session may have waiting while its file is being opened; beyond it the
    /// rest is a gap, marked as one.
    public var heldBytesPerSession = 1 << 20
    /// The largest recording (RLIMIT_FSIZE in the sandbox): one that reaches it stops there,
    /// audited as a failed write.
    public var maxRecordingBytes: UInt64 = 1 << 36
    /// The open-file limit inside the sandbox: a file per recorded session and room.
    public var openFiles: UInt64 = 4096

    public init() {}

    public static let checkpointRange = 1...100_000

    public func validate() throws(SettingsError) {
        guard Self.checkpointRange.contains(checkpointEvery) else {
            throw SettingsError(role: .recorder, field: "checkpointEvery", problem: "\(checkpointEvery) is not between 1 and 100000")
        }
        guard heldBytesPerSession >= 4096 else {
            throw SettingsError(role: .recorder, field: "heldBytesPerSession", problem: "\(heldBytesPerSession) is below 4096")
        }
        guard openFiles >= 64 else { throw SettingsError(role: .recorder, field: "openFiles", problem: "\(openFiles) is below 64") }
    }
}
