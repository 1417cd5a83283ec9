import Circuits
import NIOCore
import SystemPackage

/// The transports between roles, one protocol each. Every link shares one layout: ids 0 and
/// 1 are the reserved band and circuit 0 carries control (see `ControlCircuit`); the intent
/// in the handshake names the link, so a socket handed to the wrong role fails loudly.
///
/// | link | opener (even ids) | messages opener → acceptor | acceptor → opener |
/// |---|---|---|---|
/// | supervisorWorker | supervisor | `SupervisorToWorker` | the conversation's end |
/// | supervisorVault | supervisor | `SupervisorToVault` | the conversation's end |
/// | workerVault | worker | `WorkerToVault` | `VaultToWorker` |
/// | vaultNursery | vault | `VaultToNursery` | `NurseryToVault` |
/// | supervisorNursery | supervisor | `SupervisorToNursery` | the conversation's end |
/// | supervisorKeyholder | supervisor | `SupervisorToKeyholder` | `KeyholderToSupervisor`, the end |
/// | workerKeyholder | worker | `WorkerToKeyholder` | `KeyholderToWorker` |
/// | supervisorTemplate | supervisor (packets, no circuits) | `SupervisorToTemplate` | `TemplateToSupervisor` |
/// | supervisorRecorder | supervisor | `SupervisorToRecorder` | `RecorderToSupervisor` |
/// | vaultRecorder | vault (packets, no circuits, never waited for) | `RecorderFeed` | nothing |
public enum Link: String, Sendable, CaseIterable {
    case supervisorWorker = "cloister.supervisor-worker/1"
    case supervisorVault = "cloister.supervisor-vault/1"
    case workerVault = "cloister.worker-vault/1"
    case vaultNursery = "cloister.vault-nursery/1"
    case supervisorNursery = "cloister.supervisor-nursery/1"
    case supervisorKeyholder = "cloister.supervisor-keyholder/1"
    case workerKeyholder = "cloister.worker-keyholder/1"
    /// Not a circuits transport: one packet a message (`SupervisorToTemplate`), so that the
    /// template stays single-threaded until it forks.
    case supervisorTemplate = "cloister.supervisor-template/1"
    case supervisorRecorder = "cloister.supervisor-recorder/1"
    /// Not a circuits transport: one packet an event (`RecorderFeed`), sent without
    /// waiting, so that a recorder that falls behind costs a gap, never a shell's time.
    case vaultRecorder = "cloister.vault-recorder/1"

    /// The intent both ends name in the handshake.
    public var intent: String { rawValue }

    public static let control: UInt16 = 0

    /// The worker–vault link is on every keystroke's path and never carries a descriptor:
    /// a stream socket both ends serve on their event loop (`ChannelTransport`); so is the
    /// worker–keyholder link, on a TLS handshake's path. The others pass descriptors (client
    /// sockets, terminals, link sockets) on SOCK_SEQPACKET (`Transport`).
    public var isOnEventLoop: Bool { self == .workerVault || self == .workerKeyholder }

    /// The kind of socket pair this link runs on.
    public var socketKind: SocketKind { isOnEventLoop ? .stream : .seqpacket }

    /// The supervisor–worker link exists once per worker, which is once per client by
    /// default, and carries a few small messages (a client socket, a link socket, a
    /// heartbeat): its messages are bounded small and its reader receives one packet at a
    /// time, so that each end keeps kilobytes of buffers for it instead of a megabyte.
    var isPerClient: Bool { self == .supervisorWorker }

    public func configuration(side: TransportSide, build: String = BuildID.current) -> TransportConfiguration<UInt16> {
        TransportConfiguration(intent: intent, side: side, reservedBand: 2, reserved: [Self.control: "control"],
                               maxPayload: isPerClient ? 4096 : 128 * 1024,
                               maxDescriptorsPerMessage: isOnEventLoop ? 0 : 4,
                               receiveBufferBytes: isPerClient ? 1 : 1 << 20, build: build)
    }

    /// Starts this link's transport on `socket` (taking ownership of it).
    public func start(socket: SystemPackage.FileDescriptor, side: TransportSide, build: String = BuildID.current) async throws -> RoleTransport {
        precondition(!isOnEventLoop, "\(self) runs on an event loop")
        return try await RoleTransport.start(socket: socket, configuration: configuration(side: side, build: build))
    }

    /// Starts this link's transport on `socket` (taking ownership of it), served by `loop`;
    /// the conversations the peer starts go to `onConversation` from the first.
    public func start(socket: SystemPackage.FileDescriptor, side: TransportSide, on loop: EventLoop,
                      build: String = BuildID.current,
                      onConversation: (@Sendable (RoleChannelCircuit) -> Void)? = nil) -> EventLoopFuture<RoleChannelTransport> {
        precondition(isOnEventLoop, "\(self) runs on a thread of its own")
        return RoleChannelTransport.start(socket: socket, configuration: configuration(side: side, build: build), on: loop,
                                          onConversation: onConversation)
    }
}

/// Every link uses 16-bit circuit ids.
public typealias RoleTransport = Transport<UInt16>
public typealias RoleCircuit = Circuit<UInt16>
public typealias RoleChannelTransport = ChannelTransport<UInt16>
public typealias RoleChannelCircuit = ChannelCircuit<UInt16>

extension Link {
    /// Where a spawned role finds its transport to the process that spawned it.
    public static let inheritedTransport = SystemPackage.FileDescriptor(rawValue: 3)
}
