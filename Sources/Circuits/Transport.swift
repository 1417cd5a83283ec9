import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One end of a transport: many circuits over one socket.
///
/// The API is Swift concurrency (`async` send, receive and accept). The socket itself is read
/// by one dedicated thread per transport, not by an event loop: SwiftNIO channels can neither
/// carry SCM_RIGHTS nor use SOCK_SEQPACKET, and a blocking `recvmmsg` on a thread of its own
/// takes every packet that is ready in one syscall with no readiness round trip. That thread
/// only demultiplexes frames into per-circuit queues; it never runs user code and never waits
/// for a consumer, which is what keeps one stalled circuit from stalling the others. Sending
/// is done by the sending task itself, or by a second thread per transport that writes the
/// tail of a burst (`FrameWriter`: small frames sent close together share packets).
///
/// `close()` writes what senders already handed over first (for at most
/// `closeLingerMilliseconds` when the peer stops reading), then drops what arrived but was
/// not read. After the peer's clean end of file, what arrived before it stays readable until
/// `close()`.
///
/// The conversation life cycle (idle, busy, idle again) and flow control are documented on
/// `Circuit`.
public final class Transport<Id: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    let core: TransportCore

    /// Takes ownership of `socket` (closed on every path, failure included), exchanges
    /// handshakes and returns once the peer's handshake has been checked.
    public static func start(socket: FileDescriptor, configuration: TransportConfiguration<Id>) async throws -> Transport {
        do {
            try configuration.validate()
        } catch {
            try? socket.close()
            throw error
        }
        let core = TransportCore(socket: socket, configuration: configuration)
        let transport = Transport(core: core)
        do {
            try await core.start()
        } catch {
            transport.close()
            throw error
        }
        return transport
    }

    init(core: TransportCore) { self.core = core }

    deinit { core.close(error: .closed) }

    /// Starts a conversation on an idle circuit this side may start on. Throws
    /// `.noIdleCircuit` when all are busy.
    public func open() throws -> Circuit<Id> {
        Circuit(core: core, conversation: try core.open())
    }

    /// Waits for the next conversation the peer starts.
    public func accept() async throws -> Circuit<Id> {
        Circuit(core: core, conversation: try await core.accept())
    }

    /// The agreed reserved circuit `id`.
    public func reserved(_ id: Id) throws -> Circuit<Id> {
        Circuit(core: core, conversation: try core.reserved(UInt64(id)))
    }

    /// The peer's declared intent and build, once the handshake is done.
    public var peerBuild: String { core.peer.build }

    /// Why the transport stopped, or nil while it runs.
    public var failure: CircuitError? { core.state.withLock { $0.failure } }

    /// Waits until the transport stops and returns why (`.peerClosed` when the peer went away).
    public func closed() async -> CircuitError { await core.waitClosed() }

    /// Closes the transport: messages already sent are written first (waiting at most the
    /// configured linger for a peer that does not read), then every waiter fails with
    /// `.closed`, received messages not yet read are dropped (their descriptors closed) and
    /// the socket is closed. Returns once the reader and writer threads have stopped.
    public func close() { core.close(error: .closed) }

    /// What has crossed the socket so far: frames (messages, credit grants, handshakes) and
    /// the writes and reads that carried them. Small frames that follow each other share a
    /// packet, so a busy transport shows fewer writes than frames.
    public var statistics: TransportStatistics {
        let (frames, writes) = core.writer.counts
        return TransportStatistics(framesSent: frames, writes: writes,
                                   framesReceived: core.framesReceived.load(ordering: .relaxed),
                                   reads: core.reads.load(ordering: .relaxed))
    }

    /// Number of circuits currently busy (reserved ones excluded).
    public var busyCircuits: Int {
        core.state.withLock { s in s.table.conversations.values.filter { !$0.reserved }.count }
    }
}

/// Counters of one transport's traffic (see `Transport.statistics`).
public struct TransportStatistics: Sendable, Equatable {
    public var framesSent: Int
    /// sendmsg calls: packets written.
    public var writes: Int
    public var framesReceived: Int
    /// Packets received.
    public var reads: Int
}
