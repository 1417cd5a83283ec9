import Circuits
import Logging
import Processes
import RoleProtocol
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

    /// `command[0]` is the executable's absolute path; a login shell (`login: true`) gets
    /// "-name" as its argv[0], as login(1) does it.
    public init(command: [String], environment: [String: String], login: Bool, logger: Logger) {
        self.command = command
        self.environment = environment
        self.login = login
        self.logger = logger
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
        let arguments = Array(command.dropFirst()) + extra.map { String(decoding: $0, as: UTF8.self) }
        var environment = self.environment
        if let user {
            // The web user the reverse proxy named, under ttyd's name for it and Cloister's.
            let name = String(decoding: user, as: UTF8.self)
            environment["TTYD_USER"] = name
            environment["CLOISTER_USER"] = name
        }
        let child: ChildProcess
        do {
            let terminal = try PseudoTerminal.open(rows: rows, columns: columns)
            defer { try? terminal.master.close() }
            let name = command[0].split(separator: "/").last.map(String.init) ?? command[0]
            child = try ChildProcess.spawn(command[0], arguments: arguments, environment: environment,
                                           terminal: terminal.slavePath, argumentZero: login ? "-\(name)" : name)
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
