import ArgumentParser
import CShim
import Sandbox
import SystemPackage

#if canImport(Glibc)
import Glibc
import SystemCalls
#endif

/// For tests: enters the sandbox exactly as a role does, then attempts one action. A
/// forbidden action ends the process (SIGSYS in enforce mode, SIGKILL from the parent in
/// report mode) or fails with an errno; anything that returns prints `returned R errno E`
/// and exits 0.
struct SandboxProbeCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: "sandbox-probe", shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "What to attempt once sandboxed.") var attempt: String
    @Option(help: "Loopback port for --attempt connect (socket at descriptor 5).") var port: UInt16 = 0
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox, attempt, port }

    mutating func enterSandbox() throws {
        steps = try sandbox.sandbox.enter(role: "probe")
    }

    func run() async throws {
        if attempt == "steps" {
            Self.say(steps.joined(separator: "\n") + "\n")
            return
        }
        errno = 0
        let result = try Self.perform(attempt, port: port)
        Self.say("returned \(result) errno \(errno)\n")
    }

    /// Straight write(2): stdio would first fstat stdout, which the worker's profile (the
    /// one probed) has no reason to allow.
    static func say(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(1, &bytes, bytes.count)
    }

    static func perform(_ attempt: String, port: UInt16) throws -> Int {
        func sys(_ n: Int, _ a: Int = 0, _ b: Int = 0, _ c: Int = 0) -> Int { cloister_syscall6(n, a, b, c, 0, 0, 0) }
        func nr(_ name: String) -> Int { Int(SyscallTable.number(name) ?? -1) }
        switch attempt {
        case "allowed": return write(1, "", 0)
        case "open": return Int(open("/etc/passwd", O_RDONLY))
        case "stat":
            var st = stat()
            return Int(stat("/etc/passwd", &st))
        case "localtime":
            var now = time(nil)
            var parts = tm()
            return localtime_r(&now, &parts) == nil ? -1 : 0
        case "exec":
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("true"), nil]
            return Int(execv("/bin/sh", argv))
        case "fork": return Int(fork())
        case "vfork": return sys(nr("vfork"))
        case "clone-process": return sys(nr("clone"), Int(SIGCHLD))
        case "clone-newuser": return sys(nr("clone"), 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x1000_0000)
        case "clone3": return sys(435)
        case "socket-inet": return Int(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
        case "socket-unix": return Int(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        case "socketpair":
            var fds: [Int32] = [0, 0]
            return Int(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds))
        case "connect":
            // The raw result, not a thrown error: the probe reports what the call returned.
            return try SocketAddress.inet(host: "127.0.0.1", port: port).withSockaddr { p, length in Int(connect(5, p, length)) }
        case "ptrace": return sys(nr("ptrace"), 16 /* PTRACE_ATTACH */, Int(getppid()))
        // Signals to another process: the vault and the other workers run as the same user.
        case "kill": return sys(nr("kill"), Int(getppid()), 0)
        case "tgkill": return sys(nr("tgkill"), Int(getppid()), Int(getppid()), 0)
        case "pidfd-open": return sys(nr("pidfd_open"), Int(getppid()), 0)
        case "io-uring": return sys(425 /* io_uring_setup */, 1)
        case "tiocsti":
            var c: CChar = 0x78
            return withUnsafeMutablePointer(to: &c) { sys(nr("ioctl"), 0, 0x5412, Int(bitPattern: $0)) }
        case "x32": return sys(0x4000_0000 | 39 /* getpid, x32 ABI */)
        case "i386": return cloister_i386_getpid()
        case "mount": return sys(nr("mount"))
        case "unshare": return sys(nr("unshare"), 0x1000_0000)
        case "bpf": return sys(nr("bpf"))
        case "keyctl": return sys(nr("keyctl"))
        case "userfaultfd": return sys(nr("userfaultfd"))
        case "perf-event-open": return sys(nr("perf_event_open"))
        case "personality": return sys(nr("personality"), 0x0040000)
        case "process-vm-readv": return sys(nr("process_vm_readv"), Int(getppid()))
        default: throw ValidationError("unknown --attempt \(attempt)")
        }
    }
}
