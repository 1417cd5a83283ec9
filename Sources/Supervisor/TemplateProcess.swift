import Circuits
import CShim
import Processes
import RoleProtocol
import Sandbox
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The supervisor's side of a template (`WorkerTemplate`): starts it, asks it to fork a worker
/// per request, and learns from it how each forked worker ended. Requests are answered in
/// order on one seqpacket socket; a reader thread takes the answers and the ends. When the
/// template goes, the workers it forked become the supervisor's children (it is a subreaper)
/// and their ends are the reaper's to report.
public final class TemplateProcess: Sendable {
    public let child: ChildProcess
    private let socket: FileDescriptor
    private let output: Task<Void, Never>

    private struct State {
        /// Fork requests sent and not answered yet, in order.
        var forks: [CheckedContinuation<(pid_t, FileDescriptor)?, Never>] = []
        /// Ends reported before anyone asked, and those who asked before the end.
        var ended: [pid_t: Int32] = [:]
        var waiting: [pid_t: @Sendable (ChildProcess.Termination?) -> Void] = [:]
        var gone = false
    }
    private let state = Mutex(State())
    /// Held while a request is written, so that requests and answers stay in order.
    private let sending = Mutex(())

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts a template under the worker's `policy` (compiled there once, loaded by each fork)
    /// with `settings`, the page's assets in `sharedFile`; returns once it said hello.
    public static func start(executable: String, settings: TemplateSettings, policy: String, mode: EnforcementMode,
                             user: String, group: String, sharedFile: FileDescriptor?, build: String = BuildID.current) async throws -> TemplateProcess {
        let (mine, theirs) = try SocketCalls.socketPair(.seqpacket)
        let (child, output): (ChildProcess, Task<Void, Never>)
        do {
            defer { try? theirs.close() }
            // Descriptor 4 is a forked worker's listener hand-off; the template has none.
            let placeholder = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
            defer { try? placeholder.close() }
            let assets = try sharedFile.map { try RoleLauncher.reopened($0) }
            defer { try? assets?.close() }
            (child, output) = try RoleLauncher.spawnRole(executable, arguments: [
                "role", Role.template.rawValue, "--policy", policy, "--mode", mode.rawValue,
                "--user", user, "--group", group, "--settings", settings.encoded(),
            ], descriptors: [theirs, placeholder] + (assets.map { [$0] } ?? []))
        } catch {
            try? mine.close()
            throw error
        }
        let template = TemplateProcess(child: child, socket: mine, output: output)
        do {
            let hello = try await onOwnThread { try Self.read(mine) }
            guard case .hello(let intent, let theirBuild)? = hello?.message, intent == Link.supervisorTemplate.intent, theirBuild == build else {
                throw Failure(description: "the template said \(hello.map { "\($0.message)" } ?? "nothing") instead of hello (\(Link.supervisorTemplate.intent), build \(build))")
            }
        } catch {
            template.stop()
            try? mine.close()
            _ = await Reaper.shared.termination(of: child)
            await template.output.value
            throw error
        }
        Task.detached { _ = try? await onOwnThread { template.readAnswers() } }
        return template
    }

    private init(child: ChildProcess, socket: FileDescriptor, output: Task<Void, Never>) {
        (self.child, self.socket, self.output) = (child, socket, output)
    }

    /// A worker forked with `transport` and `handoff` as its descriptors 3 and 4; nil if the
    /// template has gone.
    public func fork(transport: FileDescriptor, handoff: FileDescriptor) async throws -> ForkedProcess {
        let answer: (pid_t, FileDescriptor)? = await withCheckedContinuation { continuation in
            let queued: Bool = sending.withLock { _ in
                let queued = state.withLock { s in
                    if !s.gone { s.forks.append(continuation) }
                    return !s.gone
                }
                // A request that cannot be written goes unanswered: the reader answers every
                // pending one with nil once the socket ends.
                if queued { try? Self.write(SupervisorToTemplate.fork, descriptors: [transport, handoff], on: socket) }
                return queued
            }
            if !queued { continuation.resume(returning: nil) }
        }
        guard let (pid, pidfd) = answer else { throw Failure(description: "the template has gone") }
        return ForkedProcess(pid: pid, pidfd: pidfd, template: self)
    }

    /// Shuts the template's socket down: it exits (the workers it forked go on). Not a close:
    /// the reader thread is blocked on the socket, and closes it once it sees the end.
    public func stop() {
        _ = Glibc.shutdown(socket.rawValue, Int32(SHUT_RDWR))
    }

    /// Whether it still answers.
    public var isRunning: Bool { !state.withLock { $0.gone } }

    /// How the forked `pid` ended, once it has.
    func watch(_ pid: pid_t, then report: @escaping @Sendable (ChildProcess.Termination?) -> Void) {
        let (status, gone) = state.withLock { s -> (Int32?, Bool) in
            if let status = s.ended.removeValue(forKey: pid) { return (status, false) }
            if s.gone { return (nil, true) }
            s.waiting[pid] = report
            return (nil, false)
        }
        if let status { return report(ChildProcess.Termination(waitStatus: status)) }
        // The template has gone: its workers are the supervisor's children now.
        if gone { Reaper.shared.watch(pid: pid, then: report) }
    }

    private func readAnswers() {
        while let received = try? Self.read(socket) {
            switch received.message {
            case .forked(let pid):
                let next = state.withLock { s in s.forks.isEmpty ? nil : s.forks.removeFirst() }
                next?.resume(returning: (pid_t(pid), received.descriptors[0]))
            case .exited(let pid, let status):
                let waiter = state.withLock { s -> (@Sendable (ChildProcess.Termination?) -> Void)? in
                    if let waiter = s.waiting.removeValue(forKey: pid_t(pid)) { return waiter }
                    s.ended[pid_t(pid)] = Int32(bitPattern: status)
                    return nil
                }
                waiter?(ChildProcess.Termination(waitStatus: Int32(bitPattern: status)))
            case .hello:
                break
            }
        }
        let (forks, waiting) = state.withLock { s in
            s.gone = true
            defer { (s.forks, s.waiting) = ([], [:]) }
            return (s.forks, s.waiting)
        }
        for fork in forks { fork.resume(returning: nil) }
        for (pid, report) in waiting { Reaper.shared.watch(pid: pid, then: report) }
        try? socket.close()
    }

    private static func write(_ message: SupervisorToTemplate, descriptors: [FileDescriptor], on socket: FileDescriptor) throws {
        try DescriptorPassing.sendPacket(socket.rawValue, message.encoded, descriptors: descriptors.map(\.rawValue))
    }

    private struct Answer {
        var message: TemplateToSupervisor
        var descriptors: [FileDescriptor]
    }

    /// The next answer; nil at the end. An answer that does not decode ends the template's use.
    private static func read(_ socket: FileDescriptor) throws -> Answer? {
        guard let (bytes, received) = try DescriptorPassing.receivePacket(socket.rawValue, capacity: 1024, maxDescriptors: 1) else { return nil }
        let descriptors = received.map { FileDescriptor(rawValue: $0) }
        do {
            return Answer(message: try TemplateToSupervisor(decoding: bytes, descriptors: descriptors.count), descriptors: descriptors)
        } catch {
            for fd in descriptors { try? fd.close() }
            throw error
        }
    }
}

/// A worker a template forked: signalled through its pidfd (no pid reuse can misdirect it),
/// its end reported by the template (or, once the template has gone, by the reaper).
public final class ForkedProcess: RoleProcess {
    public let pid: pid_t
    private let pidfd: FileDescriptor
    private let template: TemplateProcess
    private let ended = Mutex<(known: Bool, termination: ChildProcess.Termination?)>((false, nil))

    init(pid: pid_t, pidfd: FileDescriptor, template: TemplateProcess) {
        (self.pid, self.pidfd, self.template) = (pid, pidfd, template)
    }

    deinit { try? pidfd.close() }

    public func signal(_ signal: Int32) throws(SystemCallError) {
        _ = try valueOrErrno("pidfd_send_signal", detail: "pid \(pid)") { cloister_pidfd_send_signal(pidfd.rawValue, signal) }
    }

    public func termination() async -> ChildProcess.Termination? {
        if let known = ended.withLock({ $0.known ? $0 : nil }) { return known.termination }
        let termination: ChildProcess.Termination? = await withCheckedContinuation { continuation in
            template.watch(pid) { continuation.resume(returning: $0) }
        }
        ended.withLock { $0 = (true, termination) }
        return termination
    }
}

/// The running template, started when first needed and again when it has gone or was renewed;
/// a template stopped is reaped in the background (its workers go on).
public final class WorkerTemplates: Sendable {
    private let make: @Sendable () async throws -> TemplateProcess
    private let current = Mutex<Task<TemplateProcess, Error>?>(nil)

    public init(start: @escaping @Sendable () async throws -> TemplateProcess) { make = start }

    /// The template to fork from: the running one, or a new one (one start at a time).
    public func template() async throws -> TemplateProcess {
        while true {
            let task = current.withLock { task in
                if task == nil { task = Task { try await self.make() } }
                return task!
            }
            do {
                let template = try await task.value
                if template.isRunning { return template }
                // Gone: the next caller (this one, again) starts another.
                retire(task)
            } catch {
                retire(task)
                throw error
            }
        }
    }

    /// The next worker comes from a new template (its settings and profile as they are now).
    public func renew() {
        if let task = current.withLock({ $0 }) { retire(task) }
    }

    /// Stops the template and waits until it is reaped.
    public func shutdown() async {
        guard let task = current.withLock({ task in defer { task = nil }; return task }) else { return }
        guard let template = try? await task.value else { return }
        template.stop()
        _ = await Reaper.shared.termination(of: template.child)
    }

    private func retire(_ task: Task<TemplateProcess, Error>) {
        let removed = current.withLock { current in
            guard current == task else { return false }
            current = nil
            return true
        }
        guard removed else { return }
        Task {
            guard let template = try? await task.value else { return }
            template.stop()
            _ = await Reaper.shared.termination(of: template.child)
        }
    }
}
