#if canImport(Glibc)
import Glibc
#endif

extension RoleDeclaration {
    public static let vault = RoleDeclaration(
        role: .vault, purpose: "owns the sessions: terminals, rings, attachments; checks credentials",
        link: .supervisorVault,
        // The event loop, the supervisor link's reader and writer, the terminal poller, and a
        // reserve: a later nursery link's reader and writer, twice (an old and a new one
        // during a nursery's restart), and two password checks at once.
        threads: 11, reserve: 6, settings: "VaultSettings")
}

/// What the vault is started with.
public struct VaultSettings: RoleSettings {
    public static var declaration: RoleDeclaration { .vault }

    /// The window title sent to clients.
    public var title = "cloister"
    public var sessions = SessionSettings()
    /// The open-file limit inside the sandbox.
    public var openFiles: UInt64 = 4096

    public init() {}

    public func validate() throws(SettingsError) {
        try sessions.validate()
        guard openFiles >= 64 else { throw SettingsError(role: .vault, field: "openFiles", problem: "\(openFiles) is below 64") }
    }
}

/// How the vault keeps sessions: the operator's settings.
public struct SessionSettings: Codable, Sendable, Equatable {
    public enum SlowConsumer: String, Codable, Sendable, CaseIterable {
        /// Told how much it missed and continued from the oldest byte the ring holds.
        case resync
        /// Disconnected; it may reconnect and resume from what the ring still holds.
        case disconnect
    }

    /// Output kept per session for clients that resume or fall behind.
    public var ringBytes = 1 << 20
    /// How long a session with no client attached stays before it is hung up.
    public var linger: Duration = .seconds(300)
    public var slowConsumer = SlowConsumer.resync
    /// Most clients attached at once (`--once`: 1); 0: no limit but the server's.
    public var maxAttachments = 0
    /// Whether a new session's command takes arguments from the client's URL (ttyd's --url-arg).
    public var urlArguments = false
    /// Authentication is a reverse proxy's (ttyd's --auth-header): what a worker presents is
    /// the user's name from the proxy's header, not a credential.
    public var authHeader = false
    /// Every client only watches (ttyd without -W): nobody's input reaches a shell.
    public var readOnly = false
    /// Sent to the shell's process group when its session is hung up (ttyd's --signal);
    /// SIGHUP, the default, is what closing the terminal sends anyway.
    public var endSignal: Int32 = SIGHUP
    /// This host's name in a fleet (`--host-id`): every session id begins with it and a dot,
    /// so that a load balancer routes a resume or a shared link to the host that holds the
    /// session with no registry. "" alone: ids without it.
    public var hostID = ""
    /// With `--record`: what the vault feeds the recorder, and what a loss costs.
    public var recording: Recording?

    public struct Recording: Codable, Sendable, Equatable {
        /// Typed input too (`--record-input`), never while the terminal does not echo.
        public var recordInput = false
        /// A session that would lose part of its recording ends (`--record-failure end`).
        public var endOnFailure = false
        /// Shown at the start of every session (`--record-notice`); "" for none.
        public var notice = ""

        public init(recordInput: Bool = false, endOnFailure: Bool = false, notice: String = "") {
            (self.recordInput, self.endOnFailure, self.notice) = (recordInput, endOnFailure, notice)
        }

        /// A notice: at most 256 bytes, no control character (it is written into every
        /// terminal as it is).
        public static func isNotice(_ text: String) -> Bool {
            text.utf8.count <= 256 && text.unicodeScalars.allSatisfy { $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) }
        }
    }

    public init() {}

    /// A host id: 1 to 16 lower-case letters, digits and dashes.
    public static func isHostID(_ text: String) -> Bool {
        (1...16).contains(text.utf8.count) && text.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
    }

    public static let ringRange = 4096...(1 << 30)
    public static let lingerRange: ClosedRange<Duration> = .zero ... .seconds(604_800)

    /// The one check of these settings, by `serve` before anything starts and by the vault
    /// on what it is given; `field` is what the problem names (an option's name for `serve`).
    public func validate() throws(SettingsError) {
        guard Self.ringRange.contains(ringBytes) else {
            throw SettingsError(role: .vault, field: "--session-ring", problem: "\(ringBytes) is not between 4096 and 1073741824 bytes")
        }
        guard Self.lingerRange.contains(linger) else {
            throw SettingsError(role: .vault, field: "--session-linger", problem: "\(linger) is not between 0 and 604800 seconds")
        }
        guard maxAttachments >= 0 else {
            throw SettingsError(role: .vault, field: "maxAttachments", problem: "\(maxAttachments) is negative")
        }
        guard hostID.isEmpty || Self.isHostID(hostID) else {
            throw SettingsError(role: .vault, field: "--host-id", problem: "\"\(hostID.prefix(32))\" is not 1 to 16 lower-case letters, digits and dashes")
        }
        if let recording, !Recording.isNotice(recording.notice) {
            throw SettingsError(role: .vault, field: "--record-notice", problem: "more than 256 bytes, or a control character")
        }
        guard (1...64).contains(endSignal) else {
            throw SettingsError(role: .vault, field: "--signal", problem: "\(endSignal) is not a signal number (1 to 64)")
        }
    }
}
