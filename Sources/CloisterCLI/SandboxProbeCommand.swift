import ArgumentParser
import CShim
import Processes
import Sandbox
import SystemPackage

#if canImport(Glibc)
import Glibc
import SystemCalls
#endif

/// For tests: enters the sandbox exactly as a role does (confined, then sealed with no
/// reserve of threads), then attempts one action. A
/// forbidden action ends the process (SIGSYS in enforce mode, SIGKILL from the parent in
/// report mode) or fails with an errno; anything that returns prints `returned R errno E`
/// and exits 0.
struct SandboxProbeCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: "sandbox-probe", shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "What to attempt once sandboxed.") var attempt: String
    @Option(help: "Loopback port for --attempt connect (socket at descriptor 5).") var port: UInt16 = 0
    @Option(help: "The process the attempts on another process aim at (default: the parent).") var targetPid: Int32?
    @Option(help: "A descriptor of --target-pid, for --attempt open-target-fd and pidfd-getfd.") var targetFD: Int32 = 0
    var confined: ConfinedRole?

    @Flag(help: "As the template does: confine, fork, and make the attempt in the child, which seals itself; this process says how the child ended.")
    var forked = false

    enum CodingKeys: String, CodingKey { case sandbox, attempt, port, targetPid, targetFD, forked }

    mutating func confine() throws {
        confined = try sandbox.sandbox.confine(role: "probe")
        guard forked else { return }
        let child = fork()
        guard child != 0 else { return }  // the child goes on: its run seals and attempts
        guard child > 0 else { throw lastError("fork") }
        var status: Int32 = 0
        _ = try valueOrErrno("waitpid") { waitpid(child, &status, 0) }
        Self.say("forked child \(ChildProcess.Termination(waitStatus: status))\n")
        Glibc.exit(0)
    }

    func run() async throws {
        // Read before the seal: getppid is in no profile.
        let target = targetPid ?? getppid()
        let steps = try confined!.seal()
        if attempt == "steps" {
            Self.say(steps.joined(separator: "\n") + "\n")
            return
        }
        errno = 0
        let result = try Self.perform(attempt, port: port, target: target, targetFD: targetFD)
        Self.say("returned \(result) errno \(errno)\n")
    }

    /// Straight write(2): stdio would first fstat stdout, which the worker's profile (the
    /// one probed) has no reason to allow.
    static func say(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(1, &bytes, bytes.count)
    }

    static func perform(_ attempt: String, port: UInt16, target: pid_t, targetFD: Int32) throws -> Int {
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
        // A thread as any library makes one, after the filter: glibc's pthread_create.
        case "thread":
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { _ in nil }, nil)
            if rc == 0 { pthread_join(thread, nil) }
            errno = rc
            return Int(rc == 0 ? 0 : -1)
        // A thread through Threads.start once creation is closed: refused with an error, not
        // made (the probe keeps no reserve).
        case "reserve-thread":
            do {
                try Threads.start("probe") {}.join()
                return 0
            } catch {
                errno = error.errno.rawValue
                return -1
            }
        case "socket-inet": return Int(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
        case "socket-unix": return Int(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        case "socketpair":
            var fds: [Int32] = [0, 0]
            return Int(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds))
        case "connect":
            // The raw result, not a thrown error: the probe reports what the call returned.
            return try SocketAddress.inet(host: "127.0.0.1", port: port).withSockaddr { p, length in Int(connect(5, p, length)) }
        case "ptrace": return sys(nr("ptrace"), 16 /* PTRACE_ATTACH */, Int(target))
        // Signals to another process: the vault and the other workers run as the same user.
        case "kill": return sys(nr("kill"), Int(target), 0)
        case "tgkill": return sys(nr("tgkill"), Int(target), Int(target), 0)
        case "pidfd-open": return sys(nr("pidfd_open"), Int(target), 0)
        // Another process's descriptor: through a pidfd (the first step is killed already),
        // or by its name in /proc.
        case "pidfd-getfd": return sys(nr("pidfd_getfd"), sys(nr("pidfd_open"), Int(target), 0), Int(targetFD), 0)
        case "open-target-fd": return Int(open("/proc/\(target)/fd/\(targetFD)", O_RDWR))
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
        case "process-vm-readv": return sys(nr("process_vm_readv"), Int(target))
        default: throw ValidationError("unknown --attempt \(attempt)")
        }
    }
}
