import ArgumentParser
import Circuits
import Nursery
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cloister nursery`: the nursery as a service of its own, so that the shells live outside
/// the internet-facing service (and outside its hardening). `cloister serve --nursery-socket`
/// links each vault to it.
struct NurseryServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nursery",
        abstract: "Start shells for the vaults of `cloister serve --nursery-socket`, as a service of its own.",
        discussion: """
        It listens on a unix SOCK_SEQPACKET socket: the one systemd passes (socket activation, \
        LISTEN_FDS=1) or --listen PATH, created mode 0600 and owned by --allow-user. Only \
        processes running as --allow-user (SO_PEERCRED) are served; each connection is one \
        vault's link, read only as the vault's fixed-layout requests. Started as root with \
        --user, it takes that account before accepting anything, and the shells start as that \
        user's normal login (no no_new_privs: sudo inside them works where the system allows it).
        """)

    @Option(help: "Listen on this unix socket path (without socket activation).") var listen: String?
    @Option(help: "The only user whose processes may link a vault (the user `cloister serve` runs as).")
    var allowUser = "root"
    @OptionGroup var shell: ShellOptions

    private typealias ConfigurationError = ServeCommand.ConfigurationError

    private func fail(_ option: String, _ problem: String) -> ConfigurationError {
        ConfigurationError(option: option, problem: problem, command: "nursery")
    }

    func run() async throws {
        let listener: UnixSocket.Listener
        let shells: NurseryShells
        let allowedUID: uid_t
        do {
            guard let account = getpwnam(allowUser) else { throw fail("--allow-user", "no user \"\(allowUser)\"") }
            allowedUID = account.pointee.pw_uid
            shells = try shell.shells(for: "nursery")
            listener = try makeListener(owner: allowedUID)
        } catch {
            printToStandardError("\(error)\n")
            throw ExitCode(2)
        }
        try await NurseryRole.serve(shells, listener: listener, allowedUID: allowedUID)
        throw ExitCode(1)
    }

    /// The socket systemd passed, or a new one at --listen; exactly one of them.
    private func makeListener(owner: uid_t) throws(ConfigurationError) -> UnixSocket.Listener {
        let activated = getenv("LISTEN_PID").flatMap { pid_t(String(cString: $0)) } == getpid()
        let count = getenv("LISTEN_FDS").flatMap { Int(String(cString: $0)) } ?? 0
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        if activated {
            guard listen == nil else { throw fail("--listen", "systemd passed a socket already (LISTEN_FDS)") }
            guard count == 1 else { throw fail("LISTEN_FDS", "\(count) sockets passed; the nursery takes exactly one") }
            do {
                return try UnixSocket.Listener.adopt(3, kind: .seqpacket)
            } catch {
                throw fail("LISTEN_FDS", "\(error)")
            }
        }
        guard let listen else { throw fail("--listen", "give a socket path (or start it through a systemd socket unit)") }
        guard listen.hasPrefix("/") else { throw fail("--listen", "\"\(listen)\" is not an absolute path") }
        do {
            let listener = try UnixSocket.listen(path: listen, kind: .seqpacket)
            if owner != geteuid() {
                guard chown(listen, owner, gid_t(bitPattern: -1)) == 0 else {
                    let error = SystemCallError(call: "chown", errno: Errno(rawValue: errno), detail: listen)
                    listener.close()
                    throw error
                }
            }
            return listener
        } catch {
            throw fail("--listen", "\(error)")
        }
    }
}
