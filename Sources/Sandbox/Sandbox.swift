import CCap
import CShim
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Takes a process from "just exec'd" to "can only touch the descriptors it holds", in two
/// calls with the role's thread-making between them.
///
/// `confine` runs steps 1 to 5 in this order, `Confined.seal` step 6. Each is checked, and a
/// step that cannot be done throws the failing call and its errno:
///
/// 1. **Identity** (only when started as root): lock the securebits (no root privileges on
///    exec, no ambient raise, keep-caps off), drop the whole bounding set while CAP_SETPCAP is
///    still held, clear supplementary groups, then `setresgid` and `setresuid` to the
///    configured unprivileged user (default `nobody`/`nogroup`). The uid change clears the
///    effective and permitted sets.
/// 2. **Capabilities**: clear effective, permitted and inheritable (libcap), clear the ambient
///    set, then read all of them back and fail unless they are empty.
/// 3. **no_new_privs**, with `PR_SET_DUMPABLE` 0 (no ptrace, no core from the same uid) and
///    `PR_SET_PDEATHSIG` SIGKILL (the role dies with its parent; set after the uid change,
///    which would reset it).
/// 4. **rlimits** for the role: no core files, no file writes, a bounded number of open files.
///    A role's stderr must therefore be a pipe or a socket (the supervisor's, or journald's);
///    writes to a regular file fail with EFBIG.
/// 5. **Landlock**, where the kernel has it: no filesystem access at all.
/// 6. **seccomp**: the role's profile, loaded with TSYNC, after the role made every thread it
///    will have (`Threads.closeCreation`); the profiles kill `clone` and `clone3`.
///
/// Before step 1 the process reads what it will need from the filesystem later (the time
/// zone, for log timestamps), since after step 5 it can open nothing.
///
/// Capabilities, securebits, the bounding and ambient sets, no_new_privs and Landlock are
/// per thread in Linux, and a thread inherits them from the thread that creates it; only
/// seccomp can be applied to threads that already exist. So `confine` requires the process
/// to be single-threaded (call it before the first `await`), the threads the role makes
/// afterwards inherit steps 1 to 5, and `seal` filters all of them at once.
public enum Sandbox {
    public struct Configuration: Sendable {
        public var role: String
        public var policy: Policy
        public var mode: EnforcementMode
        public var user: String
        public var group: String
        public var openFileLimit: UInt64
        /// The largest file the role may write through a descriptor it is given: 0 for every
        /// role but the recorder, which writes recordings.
        public var fileSizeLimit: UInt64 = 0
        public var landlock: Bool

        public init(role: String, policy: Policy, mode: EnforcementMode = .enforce, user: String = "nobody",
                    group: String = "nogroup", openFileLimit: UInt64 = 256, fileSizeLimit: UInt64 = 0, landlock: Bool = true) {
            self.fileSizeLimit = fileSizeLimit
            self.role = role
            self.policy = policy
            self.mode = mode
            self.user = user
            self.group = group
            self.openFileLimit = openFileLimit
            self.landlock = landlock
        }
    }

    /// Steps 1 to 5; the filter is compiled first, so that a bad profile fails before
    /// anything changes.
    public static func confine(_ c: Configuration) throws(SandboxError) -> Confined {
        let program = try SeccompProgram(c.policy, mode: c.mode)
        let threads = threadCount()
        guard threads == 1 else {
            throw SandboxError(step: "precondition", call: "/proc/self/task", errno: .invalidArgument,
                               detail: "\(threads) threads exist; confine the process before any thread starts")
        }
        // The thread count at the seal is read from this directory, opened before Landlock.
        let tasks = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        var steps: [String] = []
        // What the role will need from the filesystem is read now: glibc loads the time
        // zone (for log timestamps) on first use, which would be an openat afterwards.
        tzset()
        do {
            try switchIdentity(c, &steps)
            try dropCapabilities(&steps)
            try setNoNewPrivileges(&steps)
            try limitResources(c, &steps)
            try restrictFilesystem(c, &steps)
        } catch {
            if tasks >= 0 { close(tasks) }
            throw error
        }
        return Confined(program: program, steps: steps, tasks: tasks)
    }

    /// A confined process whose filter is not loaded yet (or a process forked from one: it
    /// inherits the confinement and the compiled filter, and seals itself).
    public final class Confined: @unchecked Sendable {
        private let program: SeccompProgram
        public private(set) var steps: [String]
        private var sealed = false
        private let tasks: CInt
        /// The process that confined itself; a process forked from it reads another's tasks
        /// through `tasks`.
        private let confinedProcess = getpid()

        init(program: SeccompProgram, steps: [String], tasks: CInt) {
            self.program = program
            self.steps = steps
            self.tasks = tasks
        }

        /// Step 6: keeps `reserve` threads for later `Threads.start` calls, creates no thread
        /// after that, and loads the filter on every thread. Returns the notification listener
        /// in report and learn modes, to hand to the supervising process and then close.
        public func seal(reserve: Int, declaredThreads: Int? = nil) throws(SandboxError) -> FileDescriptor? {
            precondition(!sealed, "a sandbox is sealed once")
            sealed = true
            do {
                try Threads.closeCreation(keeping: reserve)
            } catch {
                throw SandboxError(step: "threads", error)
            }
            // A forked process cannot open its own task directory (Landlock, inherited): the
            // one it holds is its template's. Its supervisor counts its threads instead.
            let forked = getpid() != confinedProcess
            if forked && tasks >= 0 { close(tasks) }
            let threads = forked ? nil : Sandbox.threadCount(directory: tasks)
            // A thread nobody declared would be one no review saw; one missing, a declaration
            // that no longer says what the role does.
            if let declaredThreads, let threads, threads != declaredThreads {
                throw SandboxError(step: "threads", call: "/proc/self/task", errno: .invalidArgument,
                                   detail: "\(threads) threads made before the filter; the role declares \(declaredThreads)")
            }
            let listener = try program.load()
            steps.append("threads: \(threads.map(String.init) ?? "\(declaredThreads.map(String.init) ?? "?") (forked: counted by the supervisor)"), "
                         + "\(reserve) of them kept in reserve; clone and clone3 killed from now on")
            steps.append("seccomp: \(program.policy.source) loaded (\(program.mode.rawValue), all threads)")
            return listener
        }
    }

    static func fail(_ step: String, _ call: String, _ detail: String = "") -> SandboxError {
        SandboxError(step: step, lastError(call, detail: detail))
    }

    /// The entries of /proc/self/task; with `directory`, of that open descriptor (closed).
    static func threadCount(directory: CInt? = nil) -> Int {
        let opened = directory.map { $0 >= 0 ? fdopendir($0) : nil } ?? opendir("/proc/self/task")
        guard let dir = opened else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != UInt8(ascii: ".") { n += 1 }
        }
        return n
    }

    // MARK: 1. Identity

    private static func switchIdentity(_ c: Configuration, _ steps: inout [String]) throws(SandboxError) {
        guard geteuid() == 0 else {
            steps.append("identity: not root (uid \(getuid())), kept")
            return
        }
        let account = try Identity.account(user: c.user, group: c.group)
        guard account.uid != 0, account.gid != 0 else {
            throw SandboxError(step: "identity", call: "getpwnam", errno: .invalidArgument, detail: "\(c.user):\(c.group) is root")
        }
        // Root gains nothing on exec, ambient capabilities cannot be raised, keep-caps stays
        // off; all locked.
        let secbits: UInt32 = 0x01 | 0x02 | 0x20 | 0x40 | 0x80
        guard cap_set_secbits(secbits) == 0 else { throw fail("identity", "cap_set_secbits") }
        for cap in 0..<Int32(cap_max_bits()) {
            guard cap_drop_bound(cap_value_t(cap)) == 0 else { throw fail("identity", "cap_drop_bound", "capability \(cap)") }
        }
        try Identity.become(account, groups: .none)
        let (uid, gid) = (account.uid, account.gid)
        steps.append("identity: \(c.user):\(c.group) (\(uid):\(gid)), no supplementary groups, securebits locked, bounding set empty")
    }

    // MARK: 2. Capabilities

    private static func dropCapabilities(_ steps: inout [String]) throws(SandboxError) {
        guard let caps = cap_init() else { throw fail("capabilities", "cap_init") }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        guard cap_clear(caps) == 0, cap_set_proc(caps) == 0 else { throw fail("capabilities", "cap_set_proc") }
        guard cap_reset_ambient() == 0 else { throw fail("capabilities", "cap_reset_ambient") }
        let status = SandboxStatus.Thread.current()
        guard status.effective == 0, status.permitted == 0, status.inheritable == 0, status.ambient == 0 else {
            throw SandboxError(step: "capabilities", call: "capget", errno: .permissionDenied,
                               detail: "sets not empty after dropping: \(status)")
        }
        // Without CAP_SETPCAP (not root) the bounding set cannot be changed; with
        // no_new_privs it can never grant anything either.
        steps.append("capabilities: effective, permitted, inheritable, ambient empty; bounding \(status.bounding == 0 ? "empty" : "kept (not root)")")
    }

    // MARK: 3. no_new_privs

    private static func setNoNewPrivileges(_ steps: inout [String]) throws(SandboxError) {
        guard cloister_prctl(CInt(PR_SET_NO_NEW_PRIVS), 1, 0, 0, 0) == 0 else { throw fail("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)") }
        guard cloister_prctl(CInt(PR_SET_DUMPABLE), 0, 0, 0, 0) == 0 else { throw fail("no_new_privs", "prctl(PR_SET_DUMPABLE)") }
        guard cloister_prctl(CInt(PR_SET_PDEATHSIG), UInt(SIGKILL), 0, 0, 0) == 0 else { throw fail("no_new_privs", "prctl(PR_SET_PDEATHSIG)") }
        steps.append("no_new_privs: set; not dumpable; SIGKILL on parent death")
    }

    // MARK: 4. rlimits

    private static func limitResources(_ c: Configuration, _ steps: inout [String]) throws(SandboxError) {
        func limit(_ resource: Int32, _ value: UInt64, _ name: String) throws(SandboxError) {
            var l = rlimit(rlim_cur: rlim_t(value), rlim_max: rlim_t(value))
            guard setrlimit(__rlimit_resource_t(UInt32(resource)), &l) == 0 else { throw fail("rlimits", "setrlimit(\(name))", "\(value)") }
        }
        try limit(Int32(RLIMIT_CORE.rawValue), 0, "RLIMIT_CORE")
        try limit(Int32(RLIMIT_FSIZE.rawValue), c.fileSizeLimit, "RLIMIT_FSIZE")
        try limit(Int32(RLIMIT_NOFILE.rawValue), c.openFileLimit, "RLIMIT_NOFILE")
        // With a zero file size, a write to a regular file raises SIGXFSZ, which would kill
        // the role over a log line when its stderr happens to be a file. Ignored, the write
        // fails with EFBIG instead: still no file is written (the recorder's recordings stop
        // at their limit the same way).
        var ignore = sigaction()
        ignore.__sigaction_handler.sa_handler = SIG_IGN
        guard sigaction(SIGXFSZ, &ignore, nil) == 0 else { throw fail("rlimits", "sigaction(SIGXFSZ)") }
        steps.append("rlimits: core 0, file size \(c.fileSizeLimit) (SIGXFSZ ignored: EFBIG), open files \(c.openFileLimit)")
    }

    // MARK: 5. Landlock

    private static func restrictFilesystem(_ c: Configuration, _ steps: inout [String]) throws(SandboxError) {
        guard c.landlock else {
            steps.append("landlock: not requested for this role")
            return
        }
        let abi = cloister_landlock_deny_filesystem()
        guard abi >= 0 else { throw fail("landlock", "landlock_restrict_self") }
        steps.append(abi == 0 ? "landlock: not offered by this kernel" : "landlock: no filesystem access (ABI \(abi))")
    }
}
