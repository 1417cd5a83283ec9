import ArgumentParser
import CShim
import Circuits
import RoleProtocol
import SystemPackage
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// Starts shells for the vault (descriptor 3: the transport to the vault). Not sandboxed by
/// seccomp, since it must exec; it takes the shells' identity before anything else, reads
/// only the vault's fixed-layout requests and dies with the supervisor.
struct NurseryRole: ParsableCommand, AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "nursery", shouldDisplay: false)

    @Option(help: "User the shells run as, when started as root.") var user: String?
    @Option(help: "Group the shells run as, when started as root.") var group: String?
    @Flag(help: "Start the command as a login shell (argv[0] \"-name\").") var login = false
    @Argument(parsing: .postTerminator, help: "The command, an absolute path first.") var command: [String]

    func run() async throws {
        let identity = try Self.become(user: user, group: group)
        // After the identity change, which clears the parent-death signal.
        _ = cloister_prctl(PR_SET_PDEATHSIG, UInt(SIGKILL), 0, 0, 0)
        Log.bootstrap()
        var log = Log.logger(role: "nursery")
        log[metadataKey: "user"] = "\(identity.user)"
        guard let executable = command.first, executable.hasPrefix("/") else {
            throw ValidationError("the command must start with an absolute path")
        }
        if chdir(identity.home) != 0 { _ = chdir("/") }
        // The supervisor passes the nursery nothing but its LANG.
        let inherited = getenv("LANG").map { ["LANG": String(cString: $0)] } ?? [:]
        let environment = Nursery.shellEnvironment(user: identity.user, home: identity.home, shell: identity.shell,
                                                   inherited: inherited)
        let nursery = Nursery(command: command, environment: environment, login: login, logger: log)
        let transport = try await Transport<UInt16>.start(
            socket: FileDescriptor(rawValue: 3), kind: .seqpacket,
            configuration: RoleLink.configuration(RoleIntent.vaultNursery, side: .acceptor))
        log.info("nursery ready", metadata: ["command": "\(command)"])
        await nursery.serve(vault: transport)
    }

    struct Identity { var user: String; var home: String; var shell: String }

    /// Switches to `user`/`group` (with the user's supplementary groups) when root and asked
    /// to; otherwise stays who it is. Either way, reports whom the shells will run as.
    static func become(user: String?, group: String?) throws -> Identity {
        if let user, geteuid() == 0 {
            guard let entry = getpwnam(user) else { throw ValidationError("--user: no user \"\(user)\"") }
            var gid = entry.pointee.pw_gid
            if let group {
                guard let g = getgrnam(group) else { throw ValidationError("--group: no group \"\(group)\"") }
                gid = g.pointee.gr_gid
            }
            let uid = entry.pointee.pw_uid
            guard initgroups(user, gid) == 0 else { throw SystemCallError(call: "initgroups", errno: Errno(rawValue: errno)) }
            guard cloister_setresgid(gid) == 0 else { throw SystemCallError(call: "setresgid", errno: Errno(rawValue: errno)) }
            guard cloister_setresuid(uid) == 0 else { throw SystemCallError(call: "setresuid", errno: Errno(rawValue: errno)) }
        }
        guard let me = getpwuid(geteuid()) else { throw SystemCallError(call: "getpwuid", errno: Errno(rawValue: errno)) }
        return Identity(user: String(cString: me.pointee.pw_name), home: String(cString: me.pointee.pw_dir),
                        shell: String(cString: me.pointee.pw_shell))
    }
}
