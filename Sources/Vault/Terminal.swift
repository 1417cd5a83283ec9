import NIOCore
import NIOPosix
import Processes
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A session's PTY master as the vault uses it, with one descriptor: an NIO channel reads it
/// on the vault's event loop (NIO would duplicate a descriptor it also writes, and a vault
/// with ten thousand sessions has no descriptor to spare), and the vault writes input and
/// sets the window size on that same descriptor, which is valid for as long as the channel
/// is open: both happen on the loop that closes it. Closing the channel closes the master,
/// and the shell's session is hung up.
///
/// Everything here belongs to the vault's event loop.
final class Terminal: @unchecked Sendable {
    let channel: Channel
    private let fd: CInt
    /// Input the terminal did not take yet (its input queue is full), oldest first.
    private var pending: [ByteBuffer] = []
    private var retry: Scheduled<Void>?
    private var retryDelay: TimeAmount = .milliseconds(1)
    /// Input that waited has all been written.
    var onInputDrained: (() -> Void)?

    /// Reads `master` on `loop`, handing every read to `output` and the close to `closed`.
    /// Takes ownership of `master` (closed on every path).
    static func open(master: SystemPackage.FileDescriptor, on loop: EventLoop, output: @escaping @Sendable (ByteBuffer) -> Void,
                     closed: @escaping @Sendable () -> Void) -> EventLoopFuture<Terminal> {
        NIOPipeBootstrap(group: loop)
            // An idle shell's terminal reads a prompt; bulk output grows the reads to 4 KiB,
            // the most one read of a PTY master returns (the line discipline's buffer).
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 4096))
            // So a busy terminal is read for 64 KiB per wake-up, in reads of at most 4 KiB.
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TerminalReader(output: output, closed: closed))
                }
            }
            .takingOwnershipOfDescriptor(input: master.rawValue)
            .map { Terminal(channel: $0, fd: master.rawValue) }
            .flatMapErrorThrowing { error in
                try? master.close()  // not taken over: still ours
                throw error
            }
    }

    private init(channel: Channel, fd: CInt) {
        self.channel = channel
        self.fd = fd
    }

    private var isOpen: Bool { channel.isActive }

    /// Whether the shell's output is read (a writer's pause, or writers that have not caught
    /// up, stop it: the shell then blocks on its output as on a stopped terminal).
    var reading: Bool = true {
        didSet {
            guard reading != oldValue, isOpen else { return }
            try? channel.syncOptions?.setOption(.autoRead, value: reading)
        }
    }

    /// Writes input in order. False when some of it waits for the terminal to take it;
    /// `onInputDrained` follows once it all has.
    @discardableResult
    func write(_ bytes: ByteBuffer) -> Bool {
        guard isOpen else { return true }
        if pending.isEmpty {
            var rest = bytes
            writeSome(&rest)
            if rest.readableBytes == 0 { return true }
            pending.append(rest)
            scheduleRetry()
        } else {
            pending.append(bytes)
        }
        return false
    }

    /// Writes what it can without blocking; leaves the rest in `bytes`.
    private func writeSome(_ bytes: inout ByteBuffer) {
        while bytes.readableBytes > 0 {
            let written = bytes.withUnsafeReadableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written > 0 {
                bytes.moveReaderIndex(forwardBy: written)
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                // EAGAIN: the shell has not read what it has. EIO: it is gone, and the read
                // side will close the terminal; what is left is dropped then.
                return
            }
        }
    }

    /// The channel reads but does not write, so nothing reports when the terminal can take
    /// input again: it is tried again soon, then less and less often.
    private func scheduleRetry() {
        retry = channel.eventLoop.scheduleTask(in: retryDelay) { [self] in
            retry = nil
            guard isOpen else { return }
            while var first = pending.first {
                writeSome(&first)
                if first.readableBytes > 0 {
                    pending[0] = first
                    retryDelay = min(retryDelay * 2, .milliseconds(50))
                    return scheduleRetry()
                }
                pending.removeFirst()
            }
            retryDelay = .milliseconds(1)
            onInputDrained?()
        }
    }

    /// TIOCSWINSZ: the terminal's foreground process group gets SIGWINCH.
    func resize(rows: UInt16, columns: UInt16) {
        guard isOpen else { return }
        try? PseudoTerminal.resize(SystemPackage.FileDescriptor(rawValue: fd), rows: rows, columns: columns)
    }

    /// Closes the master: the shell's session gets SIGHUP.
    func close() {
        retry?.cancel()
        retry = nil
        pending = []
        onInputDrained = nil
        channel.close(promise: nil)
    }
}

/// The terminal's reading side: every read to the session, and the end (the shell and all
/// its jobs are gone: EIO; or the vault closed it).
private final class TerminalReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var output: ((ByteBuffer) -> Void)?
    private var closed: (() -> Void)?

    init(output: @escaping @Sendable (ByteBuffer) -> Void, closed: @escaping @Sendable () -> Void) {
        self.output = output
        self.closed = closed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        output?(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // EIO once the last process on the terminal closed it; NIO closes the channel.
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let closed = self.closed
        output = nil
        self.closed = nil
        closed?()
    }
}
