import CShim
import RoleProtocol
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// The template: a confined, single-threaded process that forks a worker per request of its
/// supervisor (Chromium's zygote, OpenSSH's per-connection child). It holds the page's
/// assets and the worker's compiled profile, which every worker it forks shares with it
/// (their pages stay shared until written), and no client byte or secret: it reads nothing
/// but the supervisor's fixed requests. It never makes a thread, so forking it is safe; each
/// child makes its own threads and then seals itself under the worker's profile, after which
/// `clone` kills it. It reaps what it forks and says how each ended.
public enum WorkerTemplate {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Serves fork requests on `requests` until the supervisor closes it (then exits 0).
    /// Returns only in a forked child, whose transport is then at `Descriptors.transport`
    /// and its listener hand-off at `Descriptors.listenerHandoff`, as a spawned worker's are.
    public static func serve(requests: CInt, build: String) throws {
        let exits = cloister_child_exit_pipe()
        guard exits >= 0 else { throw lastError("sigaction(SIGCHLD)") }
        try send(.hello(intent: Link.supervisorTemplate.intent, build: build), on: requests)
        while true {
            var ready = [pollfd(fd: requests, events: Int16(POLLIN), revents: 0), pollfd(fd: exits, events: Int16(POLLIN), revents: 0)]
            _ = try valueOrErrno("poll") { poll(&ready, 2, -1) }
            if ready[1].revents != 0 { try reap(exits, reporting: requests) }
            guard ready[0].revents != 0 else { continue }
            guard let request = try receive(requests) else { exit(0) }  // the supervisor has gone
            let (transport, handoff) = (request[0], request[1])
            let pid = fork()
            if pid == 0 {
                // The child: nothing of the template's but what a spawned worker would have.
                close(requests)
                close(exits)
                signal(SIGCHLD, SIG_DFL)
                guard dup2(transport, RoleDeclaration.Descriptors.transport) >= 0,
                      dup2(handoff, RoleDeclaration.Descriptors.listenerHandoff) >= 0 else { _exit(70) }
                close(transport)
                close(handoff)
                return
            }
            close(transport)
            close(handoff)
            guard pid > 0 else { throw lastError("fork") }
            let pidfd = cloister_pidfd_open(pid)
            guard pidfd >= 0 else { throw lastError("pidfd_open", detail: "pid \(pid)") }
            defer { close(pidfd) }
            try send(.forked(pid: UInt32(pid)), on: requests, descriptors: [pidfd])
        }
    }

    /// Reaps every child that has ended and tells the supervisor how.
    private static func reap(_ exits: CInt, reporting requests: CInt) throws {
        var drain = [UInt8](repeating: 0, count: 64)
        while read(exits, &drain, drain.count) > 0 {}
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { return }
            try send(.exited(pid: UInt32(pid), waitStatus: UInt32(bitPattern: status)), on: requests)
        }
    }

    private static func send(_ message: TemplateToSupervisor, on socket: CInt, descriptors: [CInt] = []) throws {
        try DescriptorPassing.sendPacket(socket, message.encoded, descriptors: descriptors)
    }

    /// The next request's two descriptors; nil at the end of the stream. Anything that is
    /// not a fork request is the supervisor's bug or a wrong peer: fatal.
    private static func receive(_ socket: CInt) throws -> [CInt]? {
        guard let (bytes, descriptors) = try DescriptorPassing.receivePacket(socket, capacity: 16, maxDescriptors: 2) else { return nil }
        do {
            _ = try SupervisorToTemplate(decoding: bytes, descriptors: descriptors.count)
        } catch {
            for fd in descriptors { close(fd) }
            throw Failure(description: "a request that is not a fork: \(error)")
        }
        return descriptors
    }
}
