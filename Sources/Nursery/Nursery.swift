import CShim
import Circuits
import Logging
import Processes
import RoleProtocol
import Sandbox
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The only Cloister process that may exec: it starts shells for the vault. For each
/// `.spawn` it allocates a PTY, spawns the command as the leader of a new session with the
/// PTY's slave as controlling terminal, hands the master to the vault and forgets its own
/// copy, then reaps the shell and reports how it ended. It reads nothing but the vault's
/// fixed-layout requests and never sees client bytes.
public final class Nursery: Sendable {
    public let command: [String]
    public let environment: [String: String]
    private let login: Bool
    private let logger: Logger
    private let accounts: Accounts?

    /// Shells as the accounts of their web users (`--account-per-user`).
    public struct Accounts: Sendable {
        /// The group an account must have to get a shell.
        public var group: gid_t
        public var groupName: String
        public var inherited: [String: String]
        public var terminalType: String
        public var workingDirectory: String?

        public init(group: gid_t, groupName: String, inherited: [String: String], terminalType: String, workingDirectory: String?) {
            (self.group, self.groupName, self.inherited, self.terminalType, self.workingDirectory) =
                (group, groupName, inherited, terminalType, workingDirectory)
        }
    }

    /// `command[0]` is the executable's absolute path; a login shell (`login: true`) gets
    /// "-name" as its argv[0], as login(1) does it.
    public init(command: [String], environment: [String: String], login: Bool, logger: Logger, accounts: Accounts? = nil) {
        self.command = command
        self.environment = environment
        self.login = login
        self.logger = logger
        self.accounts = accounts
    }

    /// What to spawn for `user` when each web user has an account: `cloister role login`,
    /// which takes the account and execs the shell; or why not.
    private func perUser(_ user: String?, _ accounts: Accounts) -> Result<(executable: String, arguments: [String], environment: [String: String]), Refusal> {
        guard let user, !user.isEmpty else { return .failure(Refusal("no web user names an account")) }
        guard let entry = getpwnam(user) else { return .failure(Refusal("no account \"\(user)\"")) }
        let account = Identity.Account(entry.pointee)
        guard account.uid != 0 else { return .failure(Refusal("\"\(user)\" is root: no shell as root for a web user")) }
        guard Identity.isMember(account, of: accounts.group) else {
            return .failure(Refusal("account \"\(user)\" is not in group \(accounts.groupName)"))
        }
        var environment = Self.shellEnvironment(user: account.name, home: account.home, shell: account.shell,
                                                inherited: accounts.inherited, terminalType: accounts.terminalType)
        environment["TTYD_USER"] = user
        environment["CLOISTER_USER"] = user
        // The default command is each account's own login shell.
        let command = login ? [account.shell.isEmpty ? "/bin/sh" : account.shell] : self.command
        var arguments = ["role", "login", "--user", account.name]
        if login { arguments.append("--login") }
        if let directory = accounts.workingDirectory { arguments += ["--cwd", directory] }
        return .success((ChildProcess.currentExecutable, arguments + ["--"] + command, environment))
    }

    struct Refusal: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// The environment a shell starts with: only what identifies the user and the terminal.
    public static func shellEnvironment(user: String, home: String, shell: String, inherited: [String: String],
                                        terminalType: String = "xterm-256color") -> [String: String] {
        var env = [
            "TERM": terminalType, "COLORTERM": "truecolor", "HOME": home, "USER": user, "LOGNAME": user,
            "SHELL": shell, "PATH": "/usr/local/bin:/usr/bin:/bin",
        ]
        env["LANG"] = inherited["LANG"] ?? "C.UTF-8"
        return env
    }

    /// The shells one supervisor's vaults started, and where their ends are reported: one
    /// household outlives the vaults a spawned nursery serves one after another (each new
    /// vault may signal the shells it adopted, and hears of their ends); the nursery service
    /// makes one per connection, so no vault reaches another's shells.
    public final class Household: Sendable {
        private struct State {
            var shells: Set<pid_t> = []
            /// Shells an earlier nursery started, which the supervisor reaps: signalled
            /// through these, which stay valid whatever happens to the pid.
            var pidfds: [pid_t: FileDescriptor] = [:]
            var vault: RoleTransport?
            /// Ends reaped while no vault was linked, for the next one.
            var unreported: [(pid: pid_t, exit: Exit)] = []
        }

        private let state = Mutex(State())
        /// Ends kept for a vault to come, at most.
        static let unreportedLimit = 4096

        public init() {}

        func insert(_ pid: pid_t) { _ = state.withLock { $0.shells.insert(pid) } }
        func contains(_ pid: pid_t) -> Bool { state.withLock { $0.shells.contains(pid) } }

        /// A shell an earlier nursery started, now the supervisor's child.
        func adopt(_ pid: pid_t, pidfd: FileDescriptor) {
            let replaced = state.withLock { s in
                s.shells.insert(pid)
                defer { s.pidfds[pid] = pidfd }
                return s.pidfds[pid]
            }
            try? replaced?.close()
        }

        /// Sends `signal` to the shell's process group (it leads a session of its own). An
        /// adopted shell is first checked through its pidfd: its pid is not ours to trust once
        /// the supervisor has reaped it. False when the shell is not this household's.
        func signal(_ pid: pid_t, _ signal: Int32) -> Bool {
            state.withLock { s in
                guard s.shells.contains(pid) else { return false }
                if let pidfd = s.pidfds[pid], cloister_pidfd_send_signal(pidfd.rawValue, 0) != 0 { return false }
                return kill(-pid, signal) == 0
            }
        }

        /// A shell was reaped: its vault is told, or the next one.
        func ended(_ pid: pid_t, _ exit: Exit) {
            let (vault, pidfd) = state.withLock { s -> (RoleTransport?, FileDescriptor?) in
                s.shells.remove(pid)
                let pidfd = s.pidfds.removeValue(forKey: pid)
                guard let vault = s.vault else {
                    if s.unreported.count < Self.unreportedLimit { s.unreported.append((pid, exit)) }
                    return (nil, pidfd)
                }
                return (vault, pidfd)
            }
            try? pidfd?.close()
            if let vault { Self.report(pid, exit, to: vault) }
        }

        /// `vault` is the one linked from now on; it is told of the ends it missed.
        func link(_ vault: RoleTransport) {
            let missed = state.withLock { s in
                s.vault = vault
                defer { s.unreported = [] }
                return s.unreported
            }
            for (pid, exit) in missed { Self.report(pid, exit, to: vault) }
        }

        func unlink(_ vault: RoleTransport) {
            state.withLock { s in if s.vault === vault { s.vault = nil } }
        }

        private static func report(_ pid: pid_t, _ exit: Exit, to vault: RoleTransport) {
            // The vault's end is not waited for: dropping the handle discards it.
            Task {
                guard let conversation = try? vault.open() else { return }
                try? await conversation.send(NurseryToVault.exited(pid: pid, exit), end: true)
            }
        }
    }

    /// Serves one vault link: each conversation the vault opens is one request (a spawn or a
    /// signal), answered in turn; each shell's end is reported, once it has been reaped, on a
    /// conversation of the nursery's own. Nothing is kept per shell but its pid.
    public func serve(vault: RoleTransport, household: Household = Household()) async {
        household.link(vault)
        while let circuit = try? await vault.accept() {
            await request(circuit, shells: household)
        }
        household.unlink(vault)
    }

    private func request(_ circuit: RoleCircuit, shells: Household) async {
        let request: VaultToNursery
        do {
            guard let received = try await circuit.receive(VaultToNursery.self) else { return }
            request = received.message
        } catch {
            logger.error("refused a request from the vault", metadata: ["error": "\(error)"])
            try? await circuit.send(NurseryToVault.failed(reason: "\(error)"), end: true)
            return
        }
        switch request {
        case .spawn(let columns, let rows, let extra, let user, let stateBytes):
            await spawn(columns: columns, rows: rows, extra: extra, user: user, stateBytes: Int(stateBytes), on: circuit, shells: shells)
        case .signal(let pid, let signal):
            if shells.contains(pid) {
                let sent = shells.signal(pid, signal)
                logger.info("shell signalled: its session ended", metadata: ["shell": "\(pid)", "signal": "\(signal)", "sent": "\(sent)"])
            } else {
                logger.warning("refused to signal a process that is no shell of this vault's", metadata: ["pid": "\(pid)", "signal": "\(signal)"])
            }
            try? await circuit.send([], end: true)
        }
    }

    private func spawn(columns: UInt16, rows: UInt16, extra: [[UInt8]], user: [UInt8]?, stateBytes: Int, on circuit: RoleCircuit,
                       shells: Household) async {
        // The decoder bounded them and refused a NUL; each is one argv entry, never a shell's word.
        let extraArguments = extra.map { String(decoding: $0, as: UTF8.self) }
        let webUser = user.map { String(decoding: $0, as: UTF8.self) }
        let executable: String, arguments: [String], environment: [String: String], argumentZero: String
        if let accounts {
            switch perUser(webUser, accounts) {
            case .success(let spawn):
                (executable, arguments, environment) = (spawn.executable, spawn.arguments + extraArguments, spawn.environment)
                argumentZero = "cloister"
            case .failure(let refusal):
                logger.warning("shell refused for this web user", metadata: ["web_user": "\(webUser ?? "")", "reason": "\(refusal)"])
                try? await circuit.send(NurseryToVault.failed(reason: refusal.description), end: true)
                return
            }
        } else {
            executable = command[0]
            arguments = Array(command.dropFirst()) + extraArguments
            var shellEnvironment = self.environment
            if let webUser {
                // The web user the reverse proxy named, under ttyd's name for it and Cloister's.
                shellEnvironment["TTYD_USER"] = webUser
                shellEnvironment["CLOISTER_USER"] = webUser
            }
            environment = shellEnvironment
            let name = command[0].split(separator: "/").last.map(String.init) ?? command[0]
            argumentZero = login ? "-\(name)" : name
        }
        // The session's state file (the vault's ring), made here so that the sandboxed vault
        // never creates or sizes a file: memory taken as the vault writes it.
        var state: FileDescriptor?
        if stateBytes > 0 {
            var failed: UnsafePointer<CChar>?
            let fd = cloister_sized_memfd("cloister-session", stateBytes, &failed)
            guard fd >= 0 else {
                let error = SystemCallError(call: failed.map { String(cString: $0) } ?? "memfd_create", errno: Errno(rawValue: errno))
                logger.error("shell not started: no state file for its session", metadata: ["bytes": "\(stateBytes)", "error": "\(error)"])
                try? await circuit.send(NurseryToVault.failed(reason: "the session's state file: \(error)"), end: true)
                return
            }
            state = FileDescriptor(rawValue: fd)
        }
        defer { try? state?.close() }
        let terminal: PseudoTerminal, child: ChildProcess
        do {
            terminal = try PseudoTerminal.open(rows: rows, columns: columns)
            do {
                // A shell sets no parent-death signal: it need not come from the spawner thread.
                child = try ChildProcess.spawn(executable, arguments: arguments, environment: environment,
                                               terminal: terminal.slavePath, argumentZero: argumentZero, byThisThread: true)
            } catch {
                try? terminal.master.close()
                throw error
            }
        } catch {
            logger.error("shell not started", metadata: ["error": "\(error)"])
            try? await circuit.send(NurseryToVault.failed(reason: "\(error)"), end: true)
            return
        }
        let pid = child.pid
        shells.insert(pid)
        // Kept until the shell is reaped: nothing but the pid and what every shell shares.
        Reaper.shared.watch(child) { [logger] termination in
            let exit: Exit
            switch termination {
            case .exited(let code): exit = .status(code)
            case .signaled(let signal): exit = .signal(signal)
            case nil: exit = .signal(0)
            }
            logger.info("shell reaped", metadata: ["shell": "\(pid)", "exit": "\(exit)"])
            shells.ended(pid, exit)
        }
        // The nursery keeps no copy: the vault's (and the supervisor's, which it keeps for
        // the next vault) decide when the terminal hangs up.
        defer { try? terminal.master.close() }
        do {
            try await circuit.send(NurseryToVault.spawned(pid: child.pid, withState: state != nil),
                                   descriptors: [terminal.master] + (state.map { [$0] } ?? []), end: true)
        } catch {
            logger.error("shell started, but the vault did not take its terminal", metadata: ["shell": "\(pid)", "error": "\(error)"])
            return
        }
        logger.info("shell started", metadata: ["shell": "\(pid)", "columns": "\(columns)", "rows": "\(rows)"])
    }
}
