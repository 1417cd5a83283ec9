import Circuits
import Processes
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
    /// The protocol between the supervisor and a worker.
    public static let workerIntent = "cloister.supervisor-worker/1"

    public struct Launched: Sendable {
        public var child: ChildProcess
        public var transport: Transport<UInt16>
        public var monitor: ViolationMonitor
    }

    public static func start(executable: String, role: String, policy: String, mode: EnforcementMode,
                             user: String, group: String, build: String = BuildID.current,
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
        do {
            defer {
                try? roleTransport.close()
                try? roleHandoff.close()
            }
            child = try ChildProcess.spawn(executable,
                                           arguments: ["role", role, "--policy", policy, "--mode", mode.rawValue,
                                                       "--listener-fd", "4", "--user", user, "--group", group],
                                           descriptors: [roleTransport, roleHandoff])
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
                configuration: .init(intent: workerIntent, side: .opener, reservedBand: 2, reserved: [0: "control"], build: build))
            let ready = try await transport.reserved(0).receive()
            guard ready.payload == Array("ready".utf8) else {
                transport.close()
                throw CircuitError.malformedHandshake("the \(role) said \(ready.payload) instead of ready")
            }
            return Launched(child: child, transport: transport, monitor: monitor)
        } catch {
            if socketOwned { try? transportSocket.close() }
            try? child.signal(SIGKILL)
            _ = try? await onOwnThread { try child.wait() }
            throw error
        }
    }
}
