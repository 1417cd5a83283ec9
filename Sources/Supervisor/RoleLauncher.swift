import Circuits
import Processes
import RoleProtocol
import Sandbox
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Starts a sandboxed role of this binary and connects to it: the one place that hands a role
/// its descriptors (transport at 3, listener hand-off at 4), takes its seccomp listener,
/// watches it, completes the circuits handshake and waits for the role's "ready". On any
/// failure the role is killed and reaped and every descriptor closed.
public enum RoleLauncher {
    public struct Launched: Sendable {
        public var child: ChildProcess
        public var transport: Transport<UInt16>
        public var monitor: ViolationMonitor
        /// Relays the role's output; done (its pipe closed) once the role has gone.
        public var output: Task<Void, Never>
    }

    public static func start(executable: String, role: String, policy: String, mode: EnforcementMode,
                             user: String, group: String, intent: String = RoleIntent.supervisorWorker,
                             arguments: [String] = [], build: String = BuildID.current,
                             onViolation: @escaping @Sendable (ViolationMonitor.Event) -> Void) async throws -> Launched {
        precondition(mode != .enforce, "a launched role is always watched (report or learn)")
        let (transportSocket, roleTransport) = try SocketCalls.socketPair(.seqpacket)
        let handoff: FileDescriptor, roleHandoff: FileDescriptor
        do {
            (handoff, roleHandoff) = try SocketCalls.socketPair(.seqpacket)
        } catch {
            try? transportSocket.close()
            try? roleTransport.close()
            throw error
        }
        let child: ChildProcess
        let output: Task<Void, Never>
        do {
            // The role's stdout and stderr are a pipe relayed to ours: a sandboxed role may not
            // write to a file (its file-size limit is 0), whatever ours happens to be.
            let (logReader, logWriter) = try FileDescriptor.pipe(options: .closeOnExec)
            defer {
                try? roleTransport.close()
                try? roleHandoff.close()
                try? logWriter.close()
            }
            do {
                child = try ChildProcess.spawn(executable,
                                               arguments: ["role", role, "--policy", policy, "--mode", mode.rawValue,
                                                           "--listener-fd", "4", "--user", user, "--group", group] + arguments,
                                               descriptors: [roleTransport, roleHandoff], output: logWriter,
                                               ownProcessGroup: true)
            } catch {
                try? logReader.close()
                throw error
            }
            output = relay(logReader)
        } catch {
            try? transportSocket.close()
            try? handoff.close()
            throw error
        }
        // Until Transport.start takes it, the transport socket is ours to close.
        var socketOwned = true
        do {
            let listener: FileDescriptor
            do {
                defer { try? handoff.close() }
                listener = try ListenerHandoff.receive(from: handoff)
            }
            let monitor = try ViolationMonitor(listener: listener, role: role, mode: mode, handler: onViolation)
            socketOwned = false
            let transport = try await Transport<UInt16>.start(
                socket: transportSocket, kind: .seqpacket,
                configuration: RoleLink.configuration(intent, side: .opener, build: build))
            let ready = try await transport.reserved(RoleLink.control).receive()
            guard ready.payload == Array("ready".utf8) else {
                transport.close()
                throw CircuitError.malformedHandshake("the \(role) said \(ready.payload) instead of ready")
            }
            return Launched(child: child, transport: transport, monitor: monitor, output: output)
        } catch {
            if socketOwned { try? transportSocket.close() }
            try? child.signal(SIGKILL)
            _ = try? await onOwnThread { try child.wait() }
            await output.value
            throw error
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
