import Circuits
import RoleProtocol
import Sandbox

/// The vault process, sandboxed under its own profile: it gets its configuration, the
/// nursery link and the worker links from the supervisor, and owns every terminal.
public enum VaultRole {
    /// Before the first `await`, while the process is single-threaded. Every session holds its
    /// PTY master, and every worker a link. `openFiles`: the descriptor limit, which the
    /// supervisor derives from --max-clients (a terminal per session, sessions outliving their
    /// clients, and room for the rest). The terminal poller's epoll instance is made first, so
    /// the profile needs no epoll_create1; the sessions' ring files come from the nursery.
    public static func enterSandbox(_ sandbox: RoleSandbox, openFiles: UInt64) throws -> [String] {
        try TerminalPoller.prepare()
        return try sandbox.enter(role: Role.vault.rawValue, openFileLimit: openFiles)
    }

    public static func run(title: String, sessions: SessionSettings, sandboxSteps: [String]) async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.vault)
        log.info("sandbox entered", metadata: ["steps": "\(sandboxSteps.joined(separator: "; "))"])
        let vault = Vault(logger: log, title: title, settings: sessions)
        let supervisor = try await Link.supervisorVault.start(socket: Link.inheritedTransport, side: .acceptor)
        try await ControlCircuit.serve(supervisor) { _ in await vault.serve(supervisor: supervisor) }
    }
}
