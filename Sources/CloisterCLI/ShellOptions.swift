import ArgumentParser
import FoundationEssentials
import RoleProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Whom the shells run as and what they run: options of `cloister serve` (which spawns its
/// nursery) and of `cloister nursery` (the nursery as a service of its own).
struct ShellOptions: ParsableArguments {
    @Option(help: "User the shells run as (only when started as root).") var user: String?
    @Option(help: "Group the shells run as (only when started as root).") var group: String?
    @Option(help: "TERM for the shells (ttyd's -T).") var terminalType = "xterm-256color"
    @Option(help: "Directory the shells start in (ttyd's -w). Default: the shells' user's home.") var cwd: String?
    @Flag(help: "Run each session's shell as the Unix account named like its web user (--users-file or --auth-header); only as root, only accounts in --account-group, never root.")
    var accountPerUser = false
    @Option(help: "With --account-per-user: the group an account must be in (primary or supplementary) to get a shell.")
    var accountGroup: String?
    @Argument(parsing: .postTerminator, help: "Command to run in each terminal (default: the login shell).")
    var command: [String] = []

    /// Whether any of these was given, for a command that leaves them to someone else.
    var given: String? {
        if user != nil { return "--user" }
        if group != nil { return "--group" }
        if terminalType != "xterm-256color" { return "--terminal-type" }
        if cwd != nil { return "--cwd" }
        if accountPerUser { return "--account-per-user" }
        if accountGroup != nil { return "--account-group" }
        if !command.isEmpty { return "a command" }
        return nil
    }

    /// Everything checked: the account exists, TERM is a name, the directory is one, the
    /// command is found now (so a typo fails here).
    func shells(for name: String) throws(ServeCommand.ConfigurationError) -> NurseryShells {
        func fail(_ option: String, _ problem: String) -> ServeCommand.ConfigurationError {
            ServeCommand.ConfigurationError(option: option, problem: problem, command: name)
        }
        if geteuid() != 0 && (user != nil || group != nil) {
            throw fail(user != nil ? "--user" : "--group", "only applies when started as root")
        }
        if let user, getpwnam(user) == nil { throw fail("--user", "no user \"\(user)\"") }
        if let group, getgrnam(group) == nil { throw fail("--group", "no group \"\(group)\"") }
        guard (1...64).contains(terminalType.count),
              terminalType.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-+._".contains($0)) }) else {
            throw fail("--terminal-type", "\"\(terminalType)\" is not a terminal type (letters, digits, - + . _)")
        }
        if let cwd {
            var info = stat()
            guard cwd.hasPrefix("/"), stat(cwd, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw fail("--cwd", "\"\(cwd)\" is not an absolute path to a directory")
            }
        }
        if accountPerUser {
            guard geteuid() == 0 else { throw fail("--account-per-user", "needs root, to start each shell as its own account") }
            if user != nil || group != nil { throw fail(user != nil ? "--user" : "--group", "does not apply with --account-per-user") }
            guard let accountGroup else { throw fail("--account-per-user", "give --account-group: the accounts allowed a shell") }
            guard let entry = getgrnam(accountGroup) else { throw fail("--account-group", "no group \"\(accountGroup)\"") }
            guard entry.pointee.gr_gid != 0 else { throw fail("--account-group", "\"\(accountGroup)\" is the root group") }
        } else if accountGroup != nil {
            throw fail("--account-group", "only applies with --account-per-user")
        }
        let (resolved, login) = try resolvedCommand(fail)
        var shells = NurseryShells(user: user, group: group, login: login, terminalType: terminalType,
                                   workingDirectory: cwd, command: resolved)
        shells.accountPerUser = accountPerUser
        shells.accountGroup = accountGroup
        return shells
    }

    /// The command as an absolute path (found on PATH now), or the shells' user's login shell.
    private func resolvedCommand(_ fail: (String, String) -> ServeCommand.ConfigurationError)
        throws(ServeCommand.ConfigurationError) -> ([String], login: Bool) {
        guard let name = command.first else {
            let who = user.flatMap { getpwnam($0) } ?? getpwuid(geteuid())
            let shell = who.map { String(cString: $0.pointee.pw_shell) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/bin/sh"
            return ([shell], true)
        }
        let candidates = name.contains("/") ? [name]
            : (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map { "\($0)/\(name)" }
        guard let found = candidates.first(where: { access($0, X_OK) == 0 }) else {
            throw fail("command", "\"\(name)\" is not an executable file (or not on PATH)")
        }
        let absolute = found.hasPrefix("/") ? found : FileManager.default.currentDirectoryPath + "/" + found
        return ([absolute] + command.dropFirst(), false)
    }
}
