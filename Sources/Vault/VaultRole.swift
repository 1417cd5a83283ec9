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
    public static func confine(_ sandbox: RoleSandbox, openFiles: UInt64) throws -> ConfinedRole {
        try TerminalPoller.prepare()
        return try sandbox.confine(role: RoleDeclaration.vault.role.rawValue, openFileLimit: openFiles)
    }

    /// Threads made before the filter: the event loop, the terminal poller, the supervisor
    /// link's reader and writer, and the declaration's reserve for what comes later: a nursery
    /// link's reader and writer, twice (the link to a nursery that died may still be closing
    /// when the next one's starts), and two for password hashes (`--users`), which take tens
    /// of milliseconds each and stay off the event loop.
    public static func run(settings: VaultSettings, confined: ConfinedRole) async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.vault)
        let vault = Vault(logger: log, title: settings.title, settings: settings.sessions)
        try await vault.startPoller()
        let supervisor = try await Link.supervisorVault.start(socket: Link.inheritedTransport, side: .acceptor)
        let steps = try confined.seal(threads: RoleDeclaration.vault.threads, reserve: RoleDeclaration.vault.reserve)
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))"])
        try await ControlCircuit.serve(supervisor) { _ in await vault.serve(supervisor: supervisor) }
    }
}
