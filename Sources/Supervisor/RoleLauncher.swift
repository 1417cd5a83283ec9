import Circuits
import Processes
import RoleProtocol
import Sandbox
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Starts a sandboxed role of this binary and connects to it: the one place that hands a role
/// the descriptors its declaration lays out (`RoleDeclaration.Descriptors`) and its settings,
/// takes its seccomp listener, watches it, completes the circuits handshake and waits for the
/// role's "ready". On any failure the role is killed and reaped and every descriptor closed.
private extension String {
    func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}

public enum RoleLauncher {
    public struct Launched: Sendable {
        public var child: any RoleProcess
        public var transport: RoleTransport
        public var monitor: ViolationMonitor
        /// Relays the role's output; done (its pipe closed) once the role has gone.
        public var output: Task<Void, Never>
    }

    /// Starts the role `settings` belong to, under `policy`. `sharedFile` goes to the role at
    /// `Descriptors.sharedFile` (reopened read-only), for roles whose declaration has one.
    /// With `template`, a worker is forked by it instead of spawned (its settings, policy and
    /// shared file are the template's), and its threads are then checked from outside.
    public static func start(executable: String, settings: any RoleSettings, policy: String, mode: EnforcementMode,
                             user: String, group: String, sharedFile: FileDescriptor? = nil,
                             build: String = BuildID.current, template: TemplateProcess? = nil,
                             onViolation: @escaping @Sendable (ViolationMonitor.Event) -> Void) async throws -> Launched {
        precondition(mode != .enforce, "a launched role is always watched (report or learn)")
        let declaration = type(of: settings).declaration
        let role = declaration.role
        precondition(sharedFile == nil || declaration.sharedFile != nil, "\(role) declares no shared file")
        var extra: [FileDescriptor] = []
        if let sharedFile, template == nil { extra.append(try reopened(sharedFile)) }
        defer { for fd in extra { try? fd.close() } }
        let (transportSocket, roleTransport) = try SocketCalls.socketPair(.seqpacket)
        let handoff: FileDescriptor, roleHandoff: FileDescriptor
        do {
            (handoff, roleHandoff) = try SocketCalls.socketPair(.seqpacket)
        } catch {
            try? transportSocket.close()
            try? roleTransport.close()
            throw error
        }
        let child: any RoleProcess
        let output: Task<Void, Never>
        do {
            defer {
                try? roleTransport.close()
                try? roleHandoff.close()
            }
            if let template {
                child = try await template.fork(transport: roleTransport, handoff: roleHandoff)
                // Its output goes where the template's does.
                output = Task {}
            } else {
                // ChildProcess.spawn numbers the descriptors from 3 in the order given: the
                // declaration's layout.
                (child, output) = try spawnRole(executable, arguments: [
                    "role", role.rawValue, "--policy", policy, "--mode", mode.rawValue,
                    "--user", user, "--group", group, "--settings", settings.encoded(),
                ], descriptors: [roleTransport, roleHandoff] + extra)
            }
        } catch {
            try? transportSocket.close()
            try? handoff.close()
            throw error
        }
        // The handshake comes before the listener: the role makes its link's threads before
        // it loads its filter (no thread after it), and hands the listener over as it loads it.
        defer { try? handoff.close() }
        do {
            let transport = try await declaration.link.start(socket: transportSocket, side: .opener, build: build)
            do {
                let listener = try ListenerHandoff.receive(from: handoff)
                let monitor = try ViolationMonitor(listener: listener, role: role.rawValue, mode: mode, handler: onViolation)
                try await ControlCircuit.awaitReady(transport, role: role)
                if template != nil { try checkThreads(of: child.pid, declared: declaration.threads) }
                return Launched(child: child, transport: transport, monitor: monitor, output: output)
            } catch {
                transport.close()
                throw error
            }
        } catch {
            try? child.signal(SIGKILL)
            _ = await child.termination()
            await output.value
            throw error
        }
    }

    /// A /proc file's text ("" when it cannot be read: the process has gone).
    private static func readSmallFile(_ path: String) -> String {
        String(decoding: readSmallBytes(path), as: UTF8.self)
    }

    /// A /proc file's bytes (none when it cannot be read).
    private static func readSmallBytes(_ path: String) -> [UInt8] {
        guard let fd = try? FileDescriptor.open(path, .readOnly, options: .closeOnExec) else { return [] }
        defer { try? fd.close() }
        return (try? fd.readToEnd(limit: 1 << 16)) ?? []
    }

    /// A forked worker cannot read its own task directory (Landlock): its threads are
    /// counted here, each with its filter, as the seal counts a spawned role's.
    static func checkThreads(of pid: pid_t, declared: Int) throws {
        let directory = "/proc/\(pid)/task"
        guard let dir = opendir(directory) else { throw lastError("opendir", detail: directory) }
        defer { closedir(dir) }
        var threads: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { threads.append(name) }
        }
        guard threads.count == declared else {
            let names = threads.map { tid in readSmallFile("\(directory)/\(tid)/comm").trimmingSuffix("\n") }
            throw SystemCallError(call: "/proc/\(pid)/task", errno: .invalidArgument,
                                  detail: "\(threads.count) threads after the seal (\(names.sorted().joined(separator: ", "))); the role declares \(declared)")
        }
        // Each connection's worker is checked as it starts: the status is searched as bytes
        // for the one line that matters rather than split into strings.
        let filtered = Array("\nSeccomp:\t2\n".utf8)
        for tid in threads {
            let path = "\(directory)/\(tid)/status"
            let status = readSmallBytes(path)
            guard status.withUnsafeBufferPointer({ $0.firstRange(of: filtered) }) != nil else {
                throw SystemCallError(call: path, errno: .permissionDenied, detail: "thread \(tid) runs without its filter")
            }
        }
    }

    /// Spawns this binary in a role with exactly `descriptors` (from 3 on) and its stdout and
    /// stderr a pipe relayed to ours (a sandboxed role may not write to a file: its file-size
    /// limit is 0). Nothing of this process's environment crosses but a fixed time zone: the
    /// role cannot read /etc/localtime, which glibc would otherwise try (and fail) to open for
    /// every log line's timestamp; its lines are in UTC either way.
    static func spawnRole(_ executable: String, arguments: [String], descriptors: [FileDescriptor]) throws -> (ChildProcess, Task<Void, Never>) {
        let (logReader, logWriter) = try FileDescriptor.pipe(options: .closeOnExec)
        defer { try? logWriter.close() }
        do {
            let child = try ChildProcess.spawn(executable, arguments: arguments, descriptors: descriptors, environment: ["TZ": "UTC0"],
                                               output: logWriter, ownProcessGroup: true)
            return (child, relay(logReader))
        } catch {
            try? logReader.close()
            throw error
        }
    }

    /// A read-only open file description of its own: one passed to several processes would
    /// share its offset, and a role must not be able to write what others read.
    public static func reopened(_ descriptor: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        let path = "/proc/self/fd/\(descriptor.rawValue)"
        do {
            return try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch {
            throw SystemCallError(call: "open", errno: error as? Errno ?? .ioError, detail: path)
        }
    }

    /// Copies a role's output to this process's stderr, whole lines at a time where they
    /// fit one read, until the role has gone.
    static func relay(_ reader: FileDescriptor) -> Task<Void, Never> {
        Task.detached {
            _ = try? await onOwnThread {
                defer { try? reader.close() }
                var buffer = [UInt8](repeating: 0, count: 16 * 1024)
                while true {
                    guard let n = try? buffer.withUnsafeMutableBytes({ try reader.read(into: $0) }), n > 0 else { return }
                    _ = try? buffer[..<n].withUnsafeBytes { try FileDescriptor.standardError.writeAll($0) }
                }
            }
        }
    }
}
