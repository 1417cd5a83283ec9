import CSeccomp
import CShim
import FoundationEssentials
import Logging
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Watches a sandboxed process from outside it, through its seccomp notification listener.
///
/// Why notifications and not a SIGSYS handler inside the process: the report must come from a
/// process the offender cannot influence. A compromised worker could install its own SIGSYS
/// handler and stay silent; it cannot stop the kernel from queueing a notification to a
/// listener it no longer holds. The offending thread stays blocked in the syscall while the
/// monitor resolves the syscall name, reads the arguments, reports, and kills the process
/// (report mode) or lets the call through and records it (learn mode).
///
/// The role closes its own copy of the listener right after handing it over; if the
/// supervising process dies, the role dies too (PR_SET_PDEATHSIG), so a notification can
/// never go unanswered by a live monitor.
public final class ViolationMonitor: Sendable {
    public struct Event: Sendable, CustomStringConvertible {
        public var role: String
        public var pid: pid_t
        public var tid: pid_t
        public var syscall: String
        public var number: Int32
        public var architecture: String
        public var arguments: [UInt64]
        /// "killed" in report mode, "allowed" in learn mode.
        public var outcome: String

        public var description: String {
            "sandbox violation: role \(role) pid \(pid) tid \(tid) called \(syscall) (\(architecture) \(number)) with (\(argumentList)): \(outcome)"
        }

        private var argumentList: String { arguments.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") }

        /// The event as one structured log line, as the supervisor writes it.
        public func log(to logger: Logger) {
            logger.error("sandbox violation", metadata: [
                "role": "\(role)", "pid": "\(pid)", "tid": "\(tid)", "syscall": "\(syscall)",
                "syscall_nr": "\(number)", "arch": "\(architecture)", "args": "\(argumentList)", "outcome": "\(outcome)",
            ])
        }
    }

    public let role: String
    public let mode: EnforcementMode
    private let listener: FileDescriptor
    private let handler: @Sendable (Event) -> Void
    private struct State {
        var syscalls: Set<String> = []
        var arguments: [String: Set<UInt64>] = [:]
        var done = false
    }
    private let state = Mutex(State())
    private let finished = ConditionLock()

    /// Takes ownership of `listener`, also when it throws.
    public init(listener: FileDescriptor, role: String, mode: EnforcementMode,
                handler: @escaping @Sendable (Event) -> Void) throws {
        self.listener = listener
        self.role = role
        self.mode = mode
        self.handler = handler
        _ = fcntl(listener.rawValue, F_SETFD, FD_CLOEXEC)
        do {
            try ListenerWatcher.shared.watch(self)
        } catch {
            try? listener.close()
            throw error
        }
    }

    /// Syscalls seen so far (learn mode: what the role needed beyond its profile).
    public var syscalls: Set<String> { state.withLock { $0.syscalls } }
    /// For the syscalls in `Policy.learnedArguments`, the values of the deciding argument
    /// seen, so a learned profile lists them one by one instead of allowing every value.
    public var arguments: [String: Set<UInt64>] { state.withLock { $0.arguments } }

    /// Waits until the sandboxed process has gone (the listener reports hang-up) and the
    /// monitor has answered everything. A monitor ends only with the process it watches.
    public func waitUntilDone() {
        finished.withLock {
            while !state.withLock({ $0.done }) { finished.wait() }
        }
    }

    var descriptor: CInt { listener.rawValue }

    /// Called by the watcher when the listener is readable or hung up: answers what is
    /// queued; returns false once no process uses the filter any more (then the monitor is done).
    func serviceReady(_ request: UnsafeMutablePointer<seccomp_notif>, _ response: UnsafeMutablePointer<seccomp_notif_resp>) -> Bool {
        var watched = pollfd(fd: listener.rawValue, events: Int16(POLLIN), revents: 0)
        guard poll(&watched, 1, 0) >= 0 else { return true }
        if watched.revents == 0 { return true }
        if watched.revents & Int16(POLLIN) == 0 { return false }  // hang-up: no process uses the filter
        memset(request, 0, MemoryLayout<seccomp_notif>.size)
        // A failed receive: the caller died meanwhile.
        if seccomp_notify_receive(listener.rawValue, request) == 0 { handle(request.pointee, response) }
        return true
    }

    /// No process uses the filter any more: the listener is closed and waiters released.
    func finish() {
        try? listener.close()
        finished.withLock { state.withLock { $0.done = true } }
        finished.broadcast()
    }

    private func handle(_ req: seccomp_notif, _ response: UnsafeMutablePointer<seccomp_notif_resp>) {
        let tid = pid_t(req.pid)
        let pid = Self.threadGroup(of: tid) ?? tid
        let number = req.data.nr
        let name = seccomp_syscall_resolve_num_arch(req.data.arch, number).map { p in
            defer { free(p) }
            return String(cString: p)
        } ?? "syscall-\(number)"
        let arch = Self.architectureName(req.data.arch)
        let a = req.data.args
        let args = [a.0, a.1, a.2, a.3, a.4, a.5]
        memset(response, 0, MemoryLayout<seccomp_notif_resp>.size)
        response.pointee.id = req.id
        let outcome: String
        switch mode {
        case .learn:
            response.pointee.flags = UInt32(SECCOMP_USER_NOTIF_FLAG_CONTINUE)
            outcome = "allowed (learning)"
        case .enforce, .report:
            // The tid cannot be reused while its notification is pending, so once the id is
            // still valid the thread group read above is the offender's.
            if seccomp_notify_id_valid(listener.rawValue, req.id) == 0 {
                kill(pid, SIGKILL)
                outcome = "killed"
            } else {
                outcome = "gone before it could be killed"
            }
            response.pointee.error = -Int32(EPERM)
        }
        state.withLock {
            $0.syscalls.insert(name)
            if let index = Policy.learnedArguments[name] { $0.arguments[name, default: []].insert(args[index] & 0xffff_ffff) }
        }
        handler(Event(role: role, pid: pid, tid: tid, syscall: name, number: number, architecture: arch,
                      arguments: args, outcome: outcome))
        _ = seccomp_notify_respond(listener.rawValue, response)
    }

    private static func threadGroup(of tid: pid_t) -> pid_t? {
        guard let status = try? String(contentsOfFile: "/proc/\(tid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("Tgid:") {
            return pid_t(line.dropFirst(5).filter { !$0.isWhitespace })
        }
        return nil
    }

    /// Architecture names by audit token (libseccomp resolves names to tokens only).
    private static let architectureNames: [UInt32: String] = {
        var names: [UInt32: String] = [:]
        for name in ["x86_64", "x86", "x32", "aarch64", "arm", "riscv64", "ppc64le", "s390x"] {
            let token = seccomp_arch_resolve_name(name)
            if token != 0 { names[token] = name }
        }
        return names
    }()

    static func architectureName(_ token: UInt32) -> String {
        architectureNames[token] ?? "arch-0x" + String(token, radix: 16)
    }
}

/// Passing the notification listener from the sandboxed role to its supervisor over a
/// dedicated unix socket (one message, one descriptor), before any untrusted input arrives.
public enum ListenerHandoff {
    public static func send(_ listener: FileDescriptor, over socket: FileDescriptor) throws(SandboxError) {
        var byte: UInt8 = 1
        let fds = [listener.rawValue]
        do {
            _ = try withUnsafeMutablePointer(to: &byte) { (p) throws(SystemCallError) -> Int in
                let iov = [iovec(iov_base: p, iov_len: 1)]
                return try iov.withUnsafeBufferPointer { (iov) throws(SystemCallError) -> Int in
                    try fds.withUnsafeBufferPointer { (fds) throws(SystemCallError) -> Int in
                        try DescriptorPassing.send(socket.rawValue, iov, descriptors: fds)
                    }
                }
            }
        } catch {
            throw SandboxError(step: "seccomp", error)
        }
    }

    public static func receive(from socket: FileDescriptor) throws(SandboxError) -> FileDescriptor {
        var byte: UInt8 = 0
        let received: DescriptorPassing.Received
        do {
            received = try withUnsafeMutablePointer(to: &byte) { (p) throws(SystemCallError) -> DescriptorPassing.Received in
                var iov = [iovec(iov_base: p, iov_len: 1)]
                return try iov.withUnsafeMutableBufferPointer { (iov) throws(SystemCallError) in
                    try DescriptorPassing.receive(socket.rawValue, iov, maxDescriptors: 1)
                }
            }
        } catch {
            throw SandboxError(step: "seccomp", error)
        }
        guard received.count == 1, received.descriptors.count == 1 else {
            for fd in received.descriptors { close(fd) }
            throw SandboxError(step: "seccomp", call: "recvmsg(listener)", errno: .protocolError,
                               detail: received.count == 0 ? "the role exited before handing over its listener" : "no listener arrived")
        }
        return FileDescriptor(rawValue: received.descriptors[0])
    }
}

/// One thread for every monitor of this process: the listeners in one epoll set, each
/// armed once at a time (one-shot), answered on this thread, and dropped when their process
/// has gone. A supervisor with a worker per client would otherwise keep a thread per worker
/// that only waits.
final class ListenerWatcher: @unchecked Sendable {
    static let shared = ListenerWatcher()

    private let epoll: CInt
    private let monitors = Mutex<[CInt: ViolationMonitor]>([:])
    private let thread = Mutex<Threads.Handle?>(nil)

    private init() {
        epoll = cloister_epoll_create()
    }

    func watch(_ monitor: ViolationMonitor) throws {
        guard epoll >= 0 else { throw SandboxError(step: "monitor", lastError("epoll_create1")) }
        try thread.withLock { handle throws in
            if handle == nil { handle = try Threads.start("seccomp-monitor") { [self] in run() } }
        }
        monitors.withLock { $0[monitor.descriptor] = monitor }
        guard cloister_epoll_set(epoll, monitor.descriptor, UInt64(UInt32(bitPattern: monitor.descriptor)), 1) == 0 else {
            let error = lastError("epoll_ctl", detail: "a seccomp listener")
            monitors.withLock { $0[monitor.descriptor] = nil }
            throw SandboxError(step: "monitor", error)
        }
    }

    private func run() {
        var request: UnsafeMutablePointer<seccomp_notif>?
        var response: UnsafeMutablePointer<seccomp_notif_resp>?
        guard seccomp_notify_alloc(&request, &response) == 0, let request, let response else { return }
        defer { seccomp_notify_free(request, response) }
        var keys = [UInt64](repeating: 0, count: 64)
        while true {
            let ready = keys.withUnsafeMutableBufferPointer { cloister_epoll_wait_keys(epoll, $0.baseAddress, 64, -1) }
            guard ready > 0 else {
                if ready < 0 && errno != EINTR { return }
                continue
            }
            for key in keys[0..<Int(ready)] {
                let fd = CInt(bitPattern: UInt32(truncatingIfNeeded: key))
                guard let monitor = monitors.withLock({ $0[fd] }) else { continue }
                if monitor.serviceReady(request, response) {
                    _ = cloister_epoll_set(epoll, fd, key, 0)  // armed again for the next one
                } else {
                    _ = cloister_epoll_remove(epoll, fd)
                    monitors.withLock { $0[fd] = nil }
                    monitor.finish()
                }
            }
        }
    }
}
