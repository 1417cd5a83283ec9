extension RoleDeclaration {
    public static let worker = RoleDeclaration(
        role: .worker, purpose: "parses every client byte: TLS records, HTTP, WebSocket, the terminal protocol",
        link: .supervisorWorker,
        // The event loop (which also runs Swift concurrency) and the supervisor link's reader
        // and writer; nothing it does later needs a thread.
        threads: 4, reserve: 0, sharedFile: "the page's assets, a sealed memory file", settings: "WorkerSettings")
}

/// What a worker is started with (`WebWorker.Settings` adds the limits that are not options).
public struct WorkerSettings: RoleSettings {
    public static var declaration: RoleDeclaration { .worker }

    /// Refuse WebSocket handshakes whose Origin names another host than Host.
    public var checkOrigin = true
    /// Every route under this prefix ("" or "/segment…").
    public var basePath = ""
    /// The preferences message's JSON object (ttyd's --client-option).
    public var preferences = "{}"
    /// Milliseconds between pings of each WebSocket; 0: none.
    public var pingIntervalMilliseconds: Int64 = 30_000
    /// Whether a new session's command takes the URL's arg values.
    public var urlArguments = false
    /// The header a reverse proxy names the user in, instead of a credential.
    public var authHeader: String?
    /// The open-file limit inside the sandbox.
    public var openFiles: UInt64 = 256
    /// Milliseconds a client has to present a credential the vault accepts; 0: no limit.
    public var authenticationDeadlineMilliseconds: Int64 = 0

    public init() {}

    public func validate() throws(SettingsError) {
        guard pingIntervalMilliseconds >= 0 else {
            throw SettingsError(role: .worker, field: "pingIntervalMilliseconds", problem: "\(pingIntervalMilliseconds) is negative")
        }
        guard authenticationDeadlineMilliseconds >= 0 else {
            throw SettingsError(role: .worker, field: "authenticationDeadlineMilliseconds", problem: "\(authenticationDeadlineMilliseconds) is negative")
        }
        guard openFiles >= 16 else { throw SettingsError(role: .worker, field: "openFiles", problem: "\(openFiles) is below 16") }
    }
}
