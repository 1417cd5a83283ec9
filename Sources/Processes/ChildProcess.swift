import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A process started by `spawn`: its pid, and the one place it is reaped.
public final class ChildProcess: Sendable {
    public let pid: pid_t

    init(pid: pid_t) { self.pid = pid }

    /// How a child ended.
    public enum Termination: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        public var description: String {
            switch self {
            case .exited(let code): return "exited with status \(code)"
            case .signaled(let signal): return "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
            }
        }

        init(status: Int32) {
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
            if status & 0x7f == 0 {
                self = .exited((status >> 8) & 0xff)
            } else {
                self = .signaled(status & 0x7f)
            }
        }
    }

    /// Spawns `executable` (fork+exec via posix_spawn) with exactly `descriptors`: entry i
    /// becomes descriptor 3 + i in the child; stdin, stdout and stderr are inherited, every
    /// other descriptor of this process is close-on-exec and does not cross. The signal mask
    /// and dispositions are reset, and the environment is exactly `environment`. Every child
    /// is spawned from one long-lived thread (see `SpawnerThread`), unless `byThisThread`: a
    /// child that sets no parent-death signal (a shell) may be spawned by the caller, which
    /// saves two hand-overs between threads per spawn. (The second one cost the most: the
    /// caller was woken half a millisecond after the spawn had returned, behind the new
    /// shell's start on the CPU.)
    ///
    /// With `output`, the child's stdout and stderr both go there.
    ///
    /// With `terminal`, the child starts a new session (setsid) and opens that terminal as its
    /// stdin, stdout and stderr; being a session leader without a controlling terminal, its
    /// first open of a terminal makes it the controlling one (no TIOCSCTTY needed, which
    /// posix_spawn could not issue).
    ///
    /// With `ownProcessGroup`, the child leads a process group of its own, so that signals a
    /// terminal sends to this process's group (Ctrl-C) reach this process alone, which then
    /// decides what happens to the child.
    public static func spawn(_ executable: String, arguments: [String], descriptors: [FileDescriptor] = [],
                             environment: [String: String] = [:], terminal: String? = nil,
                             argumentZero: String? = nil, output: FileDescriptor? = nil,
                             ownProcessGroup: Bool = false, byThisThread: Bool = false) throws(SystemCallError) -> ChildProcess {
        if byThisThread {
            return try spawnHere(executable, arguments: arguments, descriptors: descriptors, environment: environment,
                                 terminal: terminal, argumentZero: argumentZero, output: output, ownProcessGroup: ownProcessGroup)
        }
        let result: Result<ChildProcess, SystemCallError> = SpawnerThread.shared.run {
            Result { () throws(SystemCallError) in
                try spawnHere(executable, arguments: arguments, descriptors: descriptors, environment: environment,
                              terminal: terminal, argumentZero: argumentZero, output: output, ownProcessGroup: ownProcessGroup)
            }
        }
        return try result.get()
    }

    private static func spawnHere(_ executable: String, arguments: [String], descriptors: [FileDescriptor],
                                  environment: [String: String], terminal: String?,
                                  argumentZero: String?, output: FileDescriptor?, ownProcessGroup: Bool) throws(SystemCallError) -> ChildProcess {
        // Move the sources out of the way first, so no source number collides with a target
        // and dup2 always gives a fresh (inheritable) descriptor.
        var staged: [CInt] = []
        defer { for fd in staged { _ = close(fd) } }
        for fd in descriptors + (output.map { [$0] } ?? []) {
            staged.append(try valueOrErrno("fcntl(F_DUPFD_CLOEXEC)", detail: executable) {
                fcntl(fd.rawValue, F_DUPFD_CLOEXEC, CInt(3 + descriptors.count))
            })
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (i, fd) in staged.prefix(descriptors.count).enumerated() {
            posix_spawn_file_actions_adddup2(&actions, fd, CInt(3 + i))
        }
        if output != nil, let fd = staged.last {
            posix_spawn_file_actions_adddup2(&actions, fd, 1)
            posix_spawn_file_actions_adddup2(&actions, fd, 2)
        }
        if let terminal {
            posix_spawn_file_actions_addopen(&actions, 0, terminal, O_RDWR, 0)
            posix_spawn_file_actions_adddup2(&actions, 0, 1)
            posix_spawn_file_actions_adddup2(&actions, 0, 2)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        // POSIX_SPAWN_SETSID (glibc 2.26) sits behind _GNU_SOURCE, which the Glibc module
        // is not built with; the value is the one in <spawn.h>.
        let sessionFlag: Int32 = terminal == nil ? 0 : 0x80
        // Process group 0: the child's own pid.
        let groupFlag: Int32 = ownProcessGroup ? POSIX_SPAWN_SETPGROUP : 0
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | sessionFlag | groupFlag))

        let argv = ([argumentZero ?? executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.sorted(by: { $0.key < $1.key }).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        try zeroOrErrno("posix_spawn", detail: executable) { posix_spawn(&pid, executable, &actions, &attributes, argv, envp) }
        return ChildProcess(pid: pid)
    }

    /// Sends `signal`. The corresponding C function is `kill`.
    public func signal(_ signal: Int32) throws(SystemCallError) {
        _ = try valueOrErrno("kill", detail: "pid \(pid)") { kill(pid, signal) }
    }

    /// Waits for the child to end and reaps it. Blocks the calling thread.
    public func wait() throws(SystemCallError) -> Termination {
        var status: Int32 = 0
        _ = try valueOrErrno("waitpid", detail: "pid \(pid)") { waitpid(pid, &status, 0) }
        return Termination(status: status)
    }

    /// Path of the running executable, for re-executing it in another role.
    public static var currentExecutable: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

