/// Whom the shells run as and how they start: what the nursery is told on its command line,
/// by the supervisor that spawns it or by the operator who runs it as a service.
public struct NurseryShells: Sendable, Equatable {
    /// When started as root: the account (otherwise whoever this process is).
    public var user: String?
    public var group: String?
    public var login: Bool
    public var terminalType: String
    /// Where the shells start (default: the account's home).
    public var workingDirectory: String?
    /// `command[0]` is an absolute path.
    public var command: [String]
    /// Each shell runs as the Unix account named like the session's web user (from a users
    /// file or a proxy's header), which must be in `accountGroup` and not root. The nursery
    /// then stays root and `user`/`group` do not apply; with `login`, each account's own
    /// login shell starts.
    public var accountPerUser = false
    public var accountGroup: String?

    public init(user: String?, group: String?, login: Bool, terminalType: String, workingDirectory: String?,
                command: [String]) {
        self.user = user
        self.group = group
        self.login = login
        self.terminalType = terminalType
        self.workingDirectory = workingDirectory
        self.command = command
    }

    /// The nursery's command-line options for these (`cloister role nursery`, `cloister nursery`).
    public var arguments: [String] {
        var arguments: [String] = []
        if let user { arguments += ["--user", user] }
        if let group { arguments += ["--group", group] }
        if login { arguments.append("--login") }
        arguments += ["--terminal-type", terminalType]
        if let workingDirectory { arguments += ["--cwd", workingDirectory] }
        if accountPerUser { arguments.append("--account-per-user") }
        if let accountGroup { arguments += ["--account-group", accountGroup] }
        return arguments + ["--"] + command
    }
}
