import NIOCore
import Processes
import RoleProtocol
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// How the vault keeps sessions: the operator's settings.
public struct SessionSettings: Sendable {
    public enum SlowConsumer: String, Sendable, CaseIterable {
        /// Told how much it missed and continued from the oldest byte the ring holds.
        case resync
        /// Disconnected; it may reconnect and resume from what the ring still holds.
        case disconnect
    }

    /// Output kept per session for clients that resume or fall behind.
    public var ringBytes = 1 << 20
    /// How long a session with no client attached stays before it is hung up.
    public var linger: Duration = .seconds(300)
    public var slowConsumer = SlowConsumer.resync
    /// Most clients attached at once (`--once`: 1); 0: no limit but the server's.
    public var maxAttachments = 0
    /// Whether a new session's command takes arguments from the client's URL (ttyd's --url-arg).
    public var urlArguments = false
    /// Authentication is a reverse proxy's (ttyd's --auth-header): what a worker presents is
    /// the user's name from the proxy's header, not a credential.
    public var authHeader = false
    /// Every client only watches (ttyd without -W): nobody's input reaches a shell.
    public var readOnly = false
    /// Sent to the shell's process group when its session is hung up (ttyd's --signal);
    /// SIGHUP, the default, is what closing the terminal sends anyway.
    public var endSignal: Int32 = SIGHUP

    public init() {}
}

/// One shell on one PTY, owned by the vault, with an id and two secrets: one that lets a
/// client write, one that lets it only watch. Its output is one byte stream numbered from 0,
/// read from the PTY whether or not anyone is attached, into a ring every client reads from
/// at its own offset. A viewer that falls behind never slows the shell or the others: it is
/// re-synchronised or disconnected. A writer is the shell's terminal: like a real one, one
/// that does not read holds the shell back (the PTY is not read further than the ring holds
/// beyond it), and so does its PAUSE.
final class Session: Sendable {
    let id: String
    let writeSecret: String
    let readSecret: String
    let shell: Int32
    let created = ContinuousClock.now
    /// The writer's PAUSE stops reading the PTY, so the shell blocks as on a stopped terminal.
    let gate = PauseGate()
    private let input: AsyncStream<[UInt8]>.Continuation
    let inputs: AsyncStream<[UInt8]>
    private let state: Mutex<State>

    struct State {
        /// The vault's own copy of the PTY master, for resizes; nil once closed, so a resize
        /// never reaches whatever reused its number.
        var master: SystemPackage.FileDescriptor?
        var ring: OutputRing
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        var exit: Exit?
        var finished = false
        /// The session is being hung up: nothing holds the PTY reader any more.
        var hungUp = false
        /// Increases on every attach and detach, so a linger timer can tell it is stale.
        var epoch = 0
        var ignored = 0
        var slowConsumerEvents = 0
        /// The attached clients; the ring never drops what the slowest writer has not read.
        var clients: [Int: Client] = [:]
        var nextClient = 0
        /// The PTY reader, waiting for the slowest writer to catch up.
        var reader: CheckedContinuation<Void, Never>?

        var slowestWriter: UInt64? { clients.values.lazy.filter(\.writer).map(\.cursor).min() }
        var writersCaughtUp: Bool { slowestWriter.map { ring.end - $0 < UInt64(ring.capacity) } ?? true }
    }

    /// One attached client, as the operator sees it.
    struct Client {
        var worker: UInt32
        var writer: Bool
        var cursor: UInt64
        /// Ends the client's attachment (the operator's kick).
        var kick: @Sendable () -> Void
    }

    init(shell: Int32, master: SystemPackage.FileDescriptor, ringBytes: Int) {
        id = SessionToken.random(bytes: 12)
        writeSecret = SessionToken.random(bytes: 18)
        readSecret = SessionToken.random(bytes: 18)
        self.shell = shell
        (inputs, input) = AsyncStream.makeStream(of: [UInt8].self)
        state = Mutex(State(master: master, ring: OutputRing(capacity: ringBytes)))
    }


    // MARK: The shell's side

    /// Output the shell wrote: kept, and every waiting client woken.
    func append(_ bytes: [UInt8]) {
        let woken = state.withLock { s in
            s.ring.append(bytes, keep: s.slowestWriter)
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in woken { w.resume() }
    }

    /// Before reading the PTY further: waits while a writer has a whole ring to read.
    func waitForWriters() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.writersCaughtUp || s.finished || s.hungUp { return true }
                s.reader = c
                return false
            }
            if now { c.resume() }
        }
    }

    /// Wakes the PTY reader if it waits and writers have caught up (lock held).
    private static func releaseReader(_ s: inout State) -> CheckedContinuation<Void, Never>? {
        guard let reader = s.reader, s.writersCaughtUp || s.finished else { return nil }
        s.reader = nil
        return reader
    }

    /// Input for the shell, from a writer.
    func write(_ bytes: [UInt8]) { input.yield(bytes) }

    /// A writer's PAUSE: the PTY is not read until `resume` (never once hung up).
    func pause() {
        state.withLock { s in if !s.hungUp { gate.pause() } }
    }

    func resume() { gate.resume() }

    /// TIOCSWINSZ: the terminal's foreground process group gets SIGWINCH.
    func resize(rows: UInt16, columns: UInt16) {
        state.withLock { s in
            if let master = s.master { try? PseudoTerminal.resize(master, rows: rows, columns: columns) }
        }
    }

    /// Closes the vault's copy of the master; when the I/O channel has closed its own, this
    /// is the last, and the shell's session gets SIGHUP.
    func closeMaster() {
        state.withLock { s in
            try? s.master?.close()
            s.master = nil
        }
    }

    /// Whether the session was hung up (its linger ran out, or the operator's hangup), not
    /// ended by its shell.
    var isHungUp: Bool { state.withLock { $0.hungUp } }

    /// Stops feeding the shell, so the session's I/O ends and the terminal is hung up; a
    /// writer's pause no longer holds the PTY reader.
    func hangUp() {
        input.finish()
        gate.resume()
        let reader = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.hungUp = true
            defer { s.reader = nil }
            return s.reader
        }
        reader?.resume()
    }

    /// The shell was reaped (or its status could not be had): clients get it after the last
    /// of the output.
    func finish(_ exit: Exit?) {
        let (woken, reader) = state.withLock { s in
            s.exit = exit
            s.finished = true
            defer { s.waiters = [:] }
            return (Array(s.waiters.values), Self.releaseReader(&s))
        }
        for w in woken { w.resume() }
        reader?.resume()
        input.finish()
    }

    // MARK: Clients


    enum Next {
        case output(offset: UInt64, bytes: [UInt8], skipped: UInt64)
        /// Everything was read and the session is over.
        case finished(Exit?)
    }

    /// The output after `offset`, waiting for some; `.finished` once the session is over and
    /// everything up to its end has been read.
    func next(after offset: UInt64, limit: Int) async -> Next {
        while true {
            let ready: Next? = state.withLock { s in
                if let chunk = s.ring.read(from: offset, limit: limit) {
                    return .output(offset: chunk.offset, bytes: chunk.bytes, skipped: chunk.skipped)
                }
                return s.finished ? .finished(s.exit) : nil
            }
            if let ready { return ready }
            if Task.isCancelled { return .finished(nil) }
            let id = state.withLock { s -> Int in
                defer { s.nextWaiter += 1 }
                return s.nextWaiter
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { s -> Bool in
                        if s.ring.end > offset || s.finished { return true }
                        s.waiters[id] = c
                        return false
                    }
                    if now { c.resume() }
                }
            } onCancel: {
                state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
            }
        }
    }

    /// A client attaches, wanting output from `offset`: it starts there if the ring holds it
    /// (clamped to what exists), at the oldest byte held otherwise or without an offset.
    /// Returns its number (for `advance` and `detached`), where it starts and what it missed.
    func attached(writer: Bool, worker: UInt32, from offset: UInt64?,
                  kick: @escaping @Sendable () -> Void) -> (client: Int, offset: UInt64, skipped: UInt64) {
        state.withLock { s in
            let start: UInt64, skipped: UInt64
            if let offset, offset >= s.ring.start {
                (start, skipped) = (min(offset, s.ring.end), 0)
            } else {
                (start, skipped) = (s.ring.start, offset.map { s.ring.start - $0 } ?? 0)
            }
            s.epoch += 1
            defer { s.nextClient += 1 }
            s.clients[s.nextClient] = Client(worker: worker, writer: writer, cursor: start, kick: kick)
            return (s.nextClient, start, skipped)
        }
    }

    /// A client has read up to `offset`.
    func advance(_ client: Int, to offset: UInt64) {
        let reader = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let writer = s.clients[client]?.writer else { return nil }
            s.clients[client]!.cursor = offset
            return writer ? Self.releaseReader(&s) : nil
        }
        reader?.resume()
    }

    /// Ends one client's attachment, or every client's; false when there is no such client.
    func kick(_ client: Int?) -> Bool {
        let kicks = state.withLock { s in
            s.clients.filter { client == nil || $0.key == client }.map(\.value.kick)
        }
        for kick in kicks { kick() }
        return !kicks.isEmpty || client == nil
    }

    /// What `cloister ctl sessions` shows. No secret.
    func summary() -> SessionSummary {
        state.withLock { s in
            SessionSummary(
                id: id, shell: shell, ageSeconds: UInt32(clamping: (ContinuousClock.now - created).components.seconds),
                bytesOut: s.ring.end, ringHeld: UInt32(clamping: s.ring.heldBytes), ringCapacity: UInt32(clamping: s.ring.capacity),
                slowConsumerEvents: UInt32(clamping: s.slowConsumerEvents), ignored: UInt32(clamping: s.ignored),
                clients: s.clients.sorted { $0.key < $1.key }.map { key, client in
                    SessionSummary.Client(client: UInt32(clamping: key), worker: client.worker, writer: client.writer,
                                          lag: s.ring.end - client.cursor)
                })
        }
    }

    /// Returns the epoch to linger from when this was the last client, nil otherwise.
    func detached(_ client: Int) -> Int? {
        let (epoch, reader) = state.withLock { s -> (Int?, CheckedContinuation<Void, Never>?) in
            s.clients[client] = nil
            s.epoch += 1
            return (s.clients.isEmpty && !s.finished ? s.epoch : nil, Self.releaseReader(&s))
        }
        reader?.resume()
        return epoch
    }

    /// Still nobody attached since `epoch`.
    func idle(since epoch: Int) -> Bool { state.withLock { $0.epoch == epoch } }

    func countIgnored() { state.withLock { $0.ignored += 1 } }
    func countSlowConsumer() { state.withLock { $0.slowConsumerEvents += 1 } }

    var isFinished: Bool { state.withLock { $0.finished } }

    func info(title: String, writer: Bool, offset: UInt64, skipped: UInt64) -> SessionInfo {
        SessionInfo(title: title, session: id, secret: writer ? writeSecret : nil, readSecret: readSecret,
                    offset: offset, skipped: skipped)
    }
}

/// The operator's kick for one attachment: pulled once; whatever is armed runs then (or at
/// once, if armed after the pull).
final class KickSwitch: Sendable {
    private let state = Mutex<(pulled: Bool, action: (@Sendable () -> Void)?)>((false, nil))

    var pulled: Bool { state.withLock { $0.pulled } }

    func pull() {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
            s.pulled = true
            defer { s.action = nil }
            return s.action
        }
        action?()
    }

    func arm(_ action: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.pulled { return true }
            s.action = action
            return false
        }
        if now { action() }
    }
}

/// Session ids and secrets.
public enum SessionToken {
    /// Random bytes from getrandom(2), as URL-safe text (it rides in URL fragments).
    public static func random(bytes count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var characters = (0..<(count * 4 / 3)).map { _ in alphabet[Int(generator.next() % 64)] }
        // Never a leading "-": an id is typed on command lines (`cloister ctl kick ID`,
        // `cloister attach --session ID`), where it would read as an option. 62 letters and
        // digits for the first character cost under a tenth of a bit.
        characters[0] = alphabet[Int(generator.next() % 62)]
        return String(decoding: characters, as: UTF8.self)
    }
}
