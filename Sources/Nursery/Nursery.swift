import Circuits
import Logging
import Processes
import RoleProtocol
import Sandbox
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

    public func serve(vault: RoleTransport) async {
        await withTaskGroup(of: Void.self) { group in
            while let circuit = try? await vault.accept() {
                group.addTask { await self.shell(circuit) }
            }
            group.cancelAll()
        }
    }

    private enum Ended: Sendable {
        case reaped(ChildProcess.Termination?)
        case vaultDone
    }

    private func shell(_ circuit: RoleCircuit) async {
        let request: VaultToNursery
        do {
            guard let received = try await circuit.receive(VaultToNursery.self) else { return }
            request = received.message
        } catch {
            logger.error("refused a request from the vault", metadata: ["error": "\(error)"])
            try? await circuit.send(NurseryToVault.failed(reason: "\(error)"), end: true)
            return
        }
        guard case .spawn(let columns, let rows, let extra, let user) = request else {
            logger.error("refused a request from the vault: no shell to signal yet")
            try? await circuit.send(NurseryToVault.failed(reason: "the first request must be spawn"), end: true)
            return
        }
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
        let child: ChildProcess
        do {
            let terminal = try PseudoTerminal.open(rows: rows, columns: columns)
            defer { try? terminal.master.close() }
            child = try ChildProcess.spawn(executable, arguments: arguments, environment: environment,
                                           terminal: terminal.slavePath, argumentZero: argumentZero)
            try await circuit.send(NurseryToVault.spawned(pid: child.pid), descriptors: [terminal.master])
        } catch {
            logger.error("shell not started", metadata: ["error": "\(error)"])
            try? await circuit.send(NurseryToVault.failed(reason: "\(error)"), end: true)
            return
        }
        var log = logger
        log[metadataKey: "shell"] = "\(child.pid)"
        log.info("shell started", metadata: ["columns": "\(columns)", "rows": "\(rows)"])
        let shellLog = log
        let termination = await withTaskGroup(of: Ended.self) { group in
            group.addTask { .reaped(await Reaper.shared.termination(of: child)) }
            group.addTask {
                // The vault's word that the session ended, for a signal other than SIGHUP.
                while let next = try? await circuit.receive(VaultToNursery.self), case .signal(let signal) = next.message {
                    // The shell leads its own process group (a session of its own).
                    let sent = kill(-child.pid, signal) == 0
                    shellLog.info("shell signalled: its session ended", metadata: ["signal": "\(signal)", "sent": "\(sent)"])
                }
                return .vaultDone
            }
            for await ended in group {
                if case .reaped(let termination) = ended {
                    group.cancelAll()
                    return termination
                }
            }
            return nil
        }
        let exit: Exit
        switch termination {
        case .exited(let code): exit = .status(code)
        case .signaled(let signal): exit = .signal(signal)
        case nil: exit = .signal(0)
        }
        log.info("shell reaped", metadata: ["exit": "\(exit)"])
        try? await circuit.send(NurseryToVault.exited(exit), end: true)
    }
}
