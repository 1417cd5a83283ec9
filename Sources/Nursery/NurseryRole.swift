import CShim
import Circuits
import Logging
import Processes
import RoleProtocol
import Sandbox
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The nursery process: starts shells for the vault. Not sandboxed by seccomp, since it must
/// exec; it takes the shells' identity before it reads anything and reads only the vault's
/// and the supervisor's fixed-layout requests.
///
/// It runs in one of two ways. Spawned by the supervisor (`run`), linked to it at
/// `Link.inheritedTransport`, serving each vault the supervisor links it to in turn, dying
/// with its parent. Or as a service of its own (`serve`), in
/// a unit apart from the internet-facing one, taking vault links on a unix socket from the
/// one user allowed to connect (`SO_PEERCRED`).
public enum NurseryRole {
    /// Spawned by the supervisor: linked to it at `Link.inheritedTransport`, serves each vault
    /// the supervisor links it to, one household of shells for them all, until the supervisor
    /// goes.
    public static func run(_ shells: NurseryShells) async throws {
        let (nursery, log) = try prepare(shells)
        // After the identity change, which clears the parent-death signal.
        guard cloister_prctl(PR_SET_PDEATHSIG, UInt(SIGKILL), 0, 0, 0) == 0 else {
            throw SandboxError(step: "nursery", lastError("prctl(PR_SET_PDEATHSIG)"))
        }
        let supervisor = try await Link.supervisorNursery.start(socket: Link.inheritedTransport, side: .acceptor)
        log.info("nursery ready", metadata: ["command": "\(shells.command)"])
        let household = Nursery.Household()
        await withDiscardingTaskGroup { links in
            while let circuit = try? await supervisor.accept() {
                let received: Received<SupervisorToNursery>?
                do {
                    received = try await circuit.receive(SupervisorToNursery.self)
                } catch {
                    log.error("refused a message from the supervisor", metadata: ["error": "\(error)"])
                    received = nil
                }
                try? await circuit.send([], end: true)
                guard let received else { continue }
                switch received.message {
                case .adoptShell(let pid):
                    // The decoder checked that the pidfd came with it.
                    household.adopt(pid, pidfd: received.descriptors!.take(0)!)
                    log.info("shell adopted from an earlier nursery", metadata: ["shell": "\(pid)"])
                    continue
                case .shellEnded(let pid, let exit):
                    log.info("adopted shell ended", metadata: ["shell": "\(pid)", "exit": "\(exit)"])
                    household.ended(pid, exit)
                    continue
                case .vaultLink:
                    break
                }
                // The decoder checked that the link came with its descriptor.
                guard let socket = received.descriptors?.take(0) else { continue }
                links.addTask {
                    do {
                        let vault = try await Link.vaultNursery.start(socket: socket, side: .acceptor)
                        log.info("vault linked")
                        await nursery.serve(vault: vault, household: household)
                        log.info("vault link closed")
                    } catch {
                        log.warning("vault link failed", metadata: ["error": "\(error)"])
                    }
                }
            }
            links.cancelAll()
        }
    }

    /// As a service: takes vault links on `listener` (made before the identity change, so a
    /// socket file can be created where only root may), each from a process running as
    /// `allowedUID`, and serves each until its vault goes. Returns only if accepting fails.
    public static func serve(_ shells: NurseryShells, listener: UnixSocket.Listener, allowedUID: uid_t) async throws {
        let (nursery, log) = try prepare(shells)
        let where_ = listener.path ?? "an inherited socket"
        log.info("nursery service ready", metadata: ["socket": "\(where_)", "allowed_uid": "\(allowedUID)",
                                                      "command": "\(shells.command)"])
        await withDiscardingTaskGroup { links in
            while true {
                let connection: FileDescriptor
                do {
                    connection = try await onOwnThread { try listener.accept() }
                } catch {
                    log.error("nursery service stopped accepting", metadata: ["error": "\(error)"])
                    return
                }
                let peer: (pid: pid_t, uid: uid_t, gid: gid_t)
                do {
                    peer = try UnixSocket.Listener.peerCredentials(connection)
                } catch {
                    log.warning("vault link refused", metadata: ["error": "\(error)"])
                    try? connection.close()
                    continue
                }
                guard peer.uid == allowedUID else {
                    log.warning("vault link refused: the peer runs as another user",
                                metadata: ["peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)", "allowed_uid": "\(allowedUID)"])
                    try? connection.close()
                    continue
                }
                links.addTask {
                    var linkLog = log
                    linkLog[metadataKey: "peer_pid"] = "\(peer.pid)"
                    let vault: RoleTransport
                    do {
                        vault = try await Link.vaultNursery.start(socket: connection, side: .acceptor)
                    } catch {
                        linkLog.warning("vault link failed", metadata: ["error": "\(error)"])
                        return
                    }
                    linkLog.info("vault linked")
                    await nursery.serve(vault: vault)
                    linkLog.info("vault link closed")
                }
            }
        }
    }

    /// Takes the shells' identity and directory and makes the nursery that starts them.
    static func prepare(_ shells: NurseryShells) throws -> (Nursery, Logger) {
        if shells.accountPerUser { return try preparePerUser(shells) }
        let account = try becomeShellsAccount(user: shells.user, group: shells.group)
        RoleLog.bootstrap()
        var log = RoleLog.logger(.nursery)
        log[metadataKey: "user"] = "\(account.name)"
        // The shells inherit this directory.
        if let directory = shells.workingDirectory {
            guard chdir(directory) == 0 else {
                throw SandboxError(step: "nursery", lastError("chdir(\(directory)) as \(account.name)"))
            }
        } else if chdir(account.home) != 0 {
            _ = chdir("/")
        }
        // Whoever started the nursery passes it nothing but its LANG.
        let inherited = getenv("LANG").map { ["LANG": String(cString: $0)] } ?? [:]
        let environment = Nursery.shellEnvironment(user: account.name, home: account.home, shell: account.shell,
                                                   inherited: inherited, terminalType: shells.terminalType)
        return (Nursery(command: shells.command, environment: environment, login: shells.login, logger: log), log)
    }

    /// With an account per web user the nursery stays root: each shell takes its account
    /// through `cloister role login` (posix_spawn cannot change ids).
    static func preparePerUser(_ shells: NurseryShells) throws -> (Nursery, Logger) {
        RoleLog.bootstrap()
        var log = RoleLog.logger(.nursery)
        log[metadataKey: "accounts"] = "per web user"
        guard geteuid() == 0 else {
            throw SandboxError(step: "nursery", call: "geteuid", errno: .permissionDenied, detail: "--account-per-user needs root")
        }
        guard let name = shells.accountGroup, let group = getgrnam(name), group.pointee.gr_gid != 0 else {
            throw SandboxError(step: "nursery", call: "getgrnam", errno: .invalidArgument,
                               detail: "--account-group \(shells.accountGroup ?? "(none)") is not a group other than root's")
        }
        _ = chdir("/")
        let inherited = getenv("LANG").map { ["LANG": String(cString: $0)] } ?? [:]
        let accounts = Nursery.Accounts(group: group.pointee.gr_gid, groupName: name, inherited: inherited,
                                        terminalType: shells.terminalType, workingDirectory: shells.workingDirectory)
        return (Nursery(command: shells.command, environment: [:], login: shells.login, logger: log, accounts: accounts), log)
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
