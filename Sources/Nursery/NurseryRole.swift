import CShim
import Circuits
import RoleProtocol
import Sandbox
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// The nursery process: starts shells for the vault (its transport at `Link.inheritedTransport`).
/// Not sandboxed by seccomp, since it must exec; it takes the shells' identity before it reads
/// anything, reads only the vault's fixed-layout requests and dies with its parent.
public enum NurseryRole {
    /// `user`/`group`: whom the shells run as, when started as root (otherwise whoever this
    /// process is). `command[0]` is an absolute path.
    /// `workingDirectory`: where the shells start (default: the account's home).
    public static func run(user: String?, group: String?, login: Bool, terminalType: String, workingDirectory: String?,
                           command: [String]) async throws {
        let account = try becomeShellsAccount(user: user, group: group)
        // After the identity change, which clears the parent-death signal.
        guard cloister_prctl(PR_SET_PDEATHSIG, UInt(SIGKILL), 0, 0, 0) == 0 else {
            throw SandboxError(step: "nursery", lastError("prctl(PR_SET_PDEATHSIG)"))
        }
        RoleLog.bootstrap()
        var log = RoleLog.logger(.nursery)
        log[metadataKey: "user"] = "\(account.name)"
        // The shells inherit this directory.
        if let workingDirectory {
            guard chdir(workingDirectory) == 0 else {
                throw SandboxError(step: "nursery", lastError("chdir(\(workingDirectory)) as \(account.name)"))
            }
        } else if chdir(account.home) != 0 {
            _ = chdir("/")
        }
        // The supervisor passes the nursery nothing but its LANG.
        let inherited = getenv("LANG").map { ["LANG": String(cString: $0)] } ?? [:]
        let environment = Nursery.shellEnvironment(user: account.name, home: account.home, shell: account.shell,
                                                   inherited: inherited, terminalType: terminalType)
        let nursery = Nursery(command: command, environment: environment, login: login, logger: log)
        let vault = try await Link.vaultNursery.start(socket: Link.inheritedTransport, side: .acceptor)
        log.info("nursery ready", metadata: ["command": "\(command)"])
        await nursery.serve(vault: vault)
    }

    /// Switches to `user` (with `group`, or the user's own, and the user's supplementary
    /// groups) when root and asked to; otherwise stays who it is. Either way, returns whom the
    /// shells will run as.
    static func becomeShellsAccount(user: String?, group: String?) throws -> Identity.Account {
        guard let user, geteuid() == 0 else { return try Identity.current() }
        let account = try Identity.account(user: user, group: group)
        try Identity.become(account, groups: .ofUser)
        return account
    }
}
