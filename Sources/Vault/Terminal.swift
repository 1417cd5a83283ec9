import NIOCore
import Processes
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A session's PTY master as the vault uses it, with one descriptor: the session reads the
/// shell's output from it into its kept ring when the poller reports it readable, and the
/// vault writes input and sets the window size on the same descriptor. The supervisor keeps a
/// copy (see `KeptRing`), so closing it here ends nothing by itself: the session hands its
/// copy back first when it hangs up.
///
/// Everything here belongs to the vault's event loop.
final class Terminal: @unchecked Sendable {
    let fd: CInt
    private let loop: EventLoop
    private let poller: TerminalPoller
    private var key: UInt64 = 0
    private var armed = true
    private(set) var isOpen = true
    /// Input the terminal did not take yet (its input queue is full), oldest first, with the
    /// writer's input stream it belongs to.
    private var pending: [(bytes: ByteBuffer, stream: Int?)] = []
    /// Bytes of an input stream the terminal took (`write`'s `stream`).
    var onInputTaken: ((_ stream: Int, _ count: Int) -> Void)?
    private var retry: Scheduled<Void>?
    private var retryDelay: TimeAmount = .milliseconds(1)
    /// Input that waited has all been written.
    var onInputDrained: (() -> Void)?
    /// The terminal has output (read it, then `rearm` to hear of more).
    private let onOutput: () -> Void
    private var closed: (() -> Void)?

    /// Watches `master` with `poller`, telling `readable` when the shell has written and
    /// `closed` once the terminal is closed. Takes ownership of `master` (closed on every path).
    static func open(master: SystemPackage.FileDescriptor, poller: TerminalPoller, readable: @escaping () -> Void,
                     closed: @escaping () -> Void) throws(SystemCallError) -> Terminal {
        let terminal = Terminal(fd: master.rawValue, poller: poller, readable: readable, closed: closed)
        do throws(SystemCallError) {
            _ = try valueOrErrno("fcntl(F_SETFL, O_NONBLOCK)") { fcntl(master.rawValue, F_SETFL, fcntl(master.rawValue, F_GETFL) | O_NONBLOCK) }
            terminal.key = try poller.register(terminal, fd: master.rawValue)
        } catch {
            terminal.isOpen = false
            try? master.close()
            throw error
        }
        return terminal
    }

    private init(fd: CInt, poller: TerminalPoller, readable: @escaping () -> Void, closed: @escaping () -> Void) {
        self.fd = fd
        self.poller = poller
        loop = poller.loop
        onOutput = readable
        self.closed = closed
    }

    /// From the poller: the one-shot registration fired.
    func readable() {
        armed = false
        guard isOpen else { return }
        onOutput()
    }

    /// Whether the shell's output is read (a writer's pause, or writers that have not caught
    /// up, stop it: the shell then blocks on its output as on a stopped terminal).
    var reading: Bool = true {
        didSet { if reading { rearm() } }
    }

    /// Asks to hear of output again, if the session reads.
    func rearm() {
        guard reading, !armed, isOpen else { return }
        armed = true
        poller.arm(fd, key: key)
    }

    /// Writes input in order, reporting what the terminal takes of `stream` to
    /// `onInputTaken`. False when some of it waits for the terminal to take it;
    /// `onInputDrained` follows once it all has.
    @discardableResult
    func write(_ bytes: ByteBuffer, stream: Int? = nil) -> Bool {
        guard isOpen else { return true }
        if pending.isEmpty {
            var rest = bytes
            writeSome(&rest, stream: stream)
            if rest.readableBytes == 0 { return true }
            pending.append((rest, stream))
            scheduleRetry()
        } else {
            pending.append((bytes, stream))
        }
        return false
    }

    /// Bytes of `stream` waiting here for the terminal.
    func pendingBytes(of stream: Int) -> Int {
        pending.reduce(0) { $0 + ($1.stream == stream ? $1.bytes.readableBytes : 0) }
    }

    /// Writes what it can without blocking; leaves the rest in `bytes`.
    private func writeSome(_ bytes: inout ByteBuffer, stream: Int?) {
        while bytes.readableBytes > 0 {
            // EAGAIN: the shell has not read what it has. EIO: it is gone, and the read side
            // will close the terminal; what is left is dropped then.
            guard let written = try? bytes.withUnsafeReadableBytes({ buffer in
                try valueOrErrno("write") { Glibc.write(fd, buffer.baseAddress, buffer.count) }
            }), written > 0 else { return }
            bytes.moveReaderIndex(forwardBy: written)
            if let stream { onInputTaken?(stream, written) }
        }
    }

    /// Nothing watches the terminal for room, so nothing reports when the terminal can take
    /// input again: it is tried again in a millisecond while the shell keeps taking input (a
    /// file uploaded through the terminal), and less and less often while it takes none (a
    /// stopped job), at most every 50 ms.
    private func scheduleRetry() {
        retry = loop.scheduleTask(in: retryDelay) { [self] in
            retry = nil
            guard isOpen else { return }
            var took = false
            while var first = pending.first {
                let before = first.bytes.readableBytes
                writeSome(&first.bytes, stream: first.stream)
                took = took || first.bytes.readableBytes < before
                if first.bytes.readableBytes > 0 {
                    pending[0] = first
                    retryDelay = took ? .milliseconds(1) : min(retryDelay * 2, .milliseconds(50))
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

    /// Closes this copy of the master (the shell's session gets SIGHUP once no copy is left);
    /// `closed` follows on the loop.
    func close() {
        guard isOpen else { return }
        isOpen = false
        retry?.cancel()
        retry = nil
        pending = []
        onInputDrained = nil
        poller.remove(fd, key: key)
        Glibc.close(fd)
        loop.execute { [self] in
            let closed = self.closed
            self.closed = nil
            closed?()
        }
    }
}
