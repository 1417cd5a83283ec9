import Logging
import NIOCore
import Processes
import RoleProtocol
import SystemPackage
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// One shell on one PTY, owned by the vault, with an id and two secrets: one that lets a
/// client write, one that lets it only watch. Its output is one byte stream numbered from 0,
/// read from the PTY whether or not anyone is attached, into a ring every client reads from
/// at its own offset. A viewer that falls behind never slows the shell or the others: it is
/// re-synchronised or disconnected. A writer is the shell's terminal: like a real one, one
/// that does not read holds the shell back (the PTY is not read further than the ring holds
/// beyond it), and so does its PAUSE.
///
/// Everything here belongs to the vault's event loop.
final class Session: @unchecked Sendable {
    let id: String
    let writeSecret: String
    let readSecret: String
    let shell: Int32
    /// Seconds since the epoch: the session may be older than this vault.
    let created: UInt64
    let settings: SessionSettings
    let loop: EventLoop
    /// The output and the session's identity, in the memory file the supervisor keeps.
    let ring: KeptRing
    private var terminal: Terminal?
    /// The vault's logger; each line adds `metadata` (kept per line, not per session: a
    /// logger with metadata of its own costs a dictionary per session).
    private let logger: Logger
    var metadata: Logger.Metadata { ["session": "\(id)", "shell": "\(shell)"] }
    /// Told when the session is over, to forget it.
    private let ended: (Session) -> Void
    /// Sends the operator's end signal through the nursery; calls back once it was sent.
    private let signal: (Int32, @escaping @Sendable () -> Void) -> Void
    /// Has the supervisor close its copies of the terminal and the ring; calls back once it
    /// has (only then does closing the vault's copy hang the terminal up).
    private let release: (Session, @escaping @Sendable () -> Void) -> Void
    private var released = false

    /// The attached clients, by number; the ring never drops what the slowest writer has not
    /// been sent.
    private(set) var clients: [Int: Attachment] = [:]
    private var nextClient = 0
    /// Runs while nobody is attached; an attach cancels it.
    private var linger: Scheduled<Void>?
    /// The shell's status from the nursery, and how long the session waits for it once the
    /// terminal has closed.
    private var exit: Exit?
    private var exitWait: Scheduled<Void>?
    private var terminalClosed = false
    /// Every attachment gets the last of the output and then the status.
    private(set) var isFinished = false
    /// The session is being hung up (linger ran out, or the operator's hangup).
    private(set) var isHungUp = false
    /// A writer's PAUSE: the PTY is not read until its RESUME.
    private var paused = false
    /// Adopted from a vault that died: the cursor of the writer it had, held for the writer
    /// to come back (`adoptedHoldGrace`), as its terminal would have held the shell.
    private var adoptedHold: UInt64?
    static let adoptedHoldGrace: TimeAmount = .seconds(10)
    /// Writers' input waits for the terminal to take what it has.
    private var inputBlocked = false
    private(set) var ignored = 0
    private(set) var slowConsumerEvents = 0
    /// The name its audit events give the user who started it ("" for a session adopted from
    /// a vault before this one), and the window size last set: what a recording begins with.
    var user = ""
    private(set) var size: (columns: UInt16, rows: UInt16) = (80, 24)
    /// With `--record`: where what the session shows goes.
    var tap: RecorderTap?

    /// A new session around a new shell, with a new id and secrets, its ring in `state` (the
    /// memory file the nursery made with the shell; taken over).
    convenience init(shell: Int32, state: SystemPackage.FileDescriptor, settings: SessionSettings, on loop: EventLoop, logger: Logger,
                     ended: @escaping (Session) -> Void, signal: @escaping (Int32, @escaping @Sendable () -> Void) -> Void,
                     release: @escaping (Session, @escaping @Sendable () -> Void) -> Void) throws(SystemCallError) {
        let id = settings.hostID.isEmpty ? SessionToken.random(bytes: 12) : settings.hostID + "." + SessionToken.random(bytes: 12)
        let identity = KeptRing.Identity(id: id, writeSecret: SessionToken.random(bytes: 18),
                                         readSecret: SessionToken.random(bytes: 18), shell: shell, created: UInt64(time(nil)))
        let ring = try KeptRing.create(in: state, capacity: settings.ringBytes, identity: identity)
        self.init(ring: ring, settings: settings, on: loop, logger: logger, ended: ended, signal: signal, release: release)
    }

    /// A session around `ring`, new or kept by a vault before this one.
    init(ring: KeptRing, settings: SessionSettings, on loop: EventLoop, logger: Logger, ended: @escaping (Session) -> Void,
         signal: @escaping (Int32, @escaping @Sendable () -> Void) -> Void,
         release: @escaping (Session, @escaping @Sendable () -> Void) -> Void) {
        self.loop = loop
        let identity = ring.identity
        (id, writeSecret, readSecret, shell, created) = (identity.id, identity.writeSecret, identity.readSecret, identity.shell, identity.created)
        self.ring = ring
        self.settings = settings
        self.logger = logger
        self.ended = ended
        self.signal = signal
        self.release = release
        adoptedHold = ring.adoptions > 0 ? ring.writerHold : nil
    }

    /// The terminal is open: the session runs from here.
    func started(on terminal: Terminal) {
        self.terminal = terminal
        terminal.onInputDrained = { [unowned self] in
            inputBlocked = false
            for client in clients.values where client.writer { client.circuit.isDeliveryPaused = false }
        }
        terminal.onInputTaken = { [ring] stream, count in ring.inputWritten(stream, count: count) }
        if adoptedHold != nil {
            loop.scheduleTask(in: Self.adoptedHoldGrace) { [self] in
                adoptedHold = nil
                updateReading()
            }
        }
        updateReading()
        // An adopted session may have nobody coming back; a new one has its first client on
        // the way (a linger of 0 would end it before that client is added).
        if ring.adoptions > 0 { startLingerIfIdle() }
    }

    // MARK: The shell's side

    /// The shell wrote: its output is read into the ring (up to 64 KiB a wake-up, in reads of
    /// at most 4 KiB), and sent to every client that is caught up.
    func terminalReadable() {
        guard let terminal else { return }
        var outcome = KeptRing.TerminalRead.wouldBlock
        let before = ring.end
        reads: for _ in 0..<16 {
            outcome = ring.read(terminal: terminal.fd, keep: isHungUp ? nil : slowestWriter)
            guard case .read = outcome else { break reads }
        }
        if let tap, ring.end > before { tap.output(self, from: before) }
        for client in Array(clients.values) { client.pump() }
        if case .closed = outcome {
            terminal.close()
            return
        }
        updateReading()
        terminal.rearm()
    }

    private var slowestWriter: UInt64? {
        let writers = clients.values.lazy.filter(\.writer).map(\.cursor).min()
        guard let adoptedHold else { return writers }
        return min(writers ?? adoptedHold, adoptedHold)
    }

    /// The PTY is read while no writer has paused it and every writer has less than a whole
    /// ring still to read. The slowest writer's cursor is kept with the ring.
    private func updateReading() {
        let slowest = slowestWriter
        ring.writerHold = slowest
        let caughtUp = slowest.map { ring.end - $0 < UInt64(ring.capacity) } ?? true
        terminal?.reading = isHungUp || (!paused && caughtUp)
    }

    /// The terminal closed: the shell and its jobs are gone, or the session was hung up. Its
    /// status is waited for a little (a shell that ignores SIGHUP may outlive its terminal).
    func terminalDidClose() {
        terminal = nil
        terminalClosed = true
        guard exit == nil else { return finish() }
        exitWait = loop.scheduleTask(in: .seconds(2)) { [self] in
            // No nursery reaped it (one of a service since restarted started it).
            if exit == nil { exit = .unknown }
            finish()
        }
    }

    /// The nursery reaped the shell.
    func shellExited(_ exit: Exit) {
        self.exit = exit
        if terminalClosed { finish() }
    }

    private func finish() {
        guard !isFinished else { return }
        isFinished = true
        tap?.ended(self)
        releaseKept {}
        exitWait?.cancel()
        linger?.cancel()
        ended(self)
        logger.info("session ended", metadata: metadata.merging(["shell_exit": "\(exit.map { "\($0)" } ?? "unknown")"]) { $1 })
        for client in Array(clients.values) { client.pump() }
    }

    /// Output bytes so far.
    var bytesOut: UInt64 { ring.end }

    /// The status clients are told once they have the last of the output.
    var exitStatus: Exit? { exit }

    /// Input for the shell, from a writer, counted against its input stream if it named one.
    func input(_ bytes: ByteBuffer, stream: Int?) {
        guard let terminal else { return }
        tap?.input(self, bytes, terminal: terminal.fd)
        guard !terminal.write(bytes, stream: stream), !inputBlocked else { return }
        // Writers' messages wait on their circuits (within their credit) until it is taken.
        inputBlocked = true
        for client in clients.values where client.writer { client.circuit.isDeliveryPaused = true }
    }

    /// TIOCSWINSZ: the terminal's foreground process group gets SIGWINCH.
    func resize(rows: UInt16, columns: UInt16) {
        guard let terminal else { return }
        let changed = size != (columns, rows)
        size = (columns, rows)
        terminal.resize(rows: rows, columns: columns)
        if changed { tap?.resized(self) }
    }

    /// The size a new session's terminal was made with, before anything is recorded.
    func sized(columns: UInt16, rows: UInt16) { size = (columns, rows) }

    /// `--record-failure end`: part of the recording would be lost, so the session ends;
    /// its clients are told why first.
    func endForRecording() {
        guard !isHungUp, !isFinished else { return }
        for client in Array(clients.values) { client.end(.recordingFailed, last: .refused(.recordingFailed)) }
        hangUp("its recording failed, and --record-failure end is set")
    }

    /// A writer's PAUSE: the PTY is not read until `resume` (never once hung up).
    func pause() {
        paused = true
        updateReading()
    }

    func resume() {
        paused = false
        updateReading()
    }

    /// Ends the session from the vault's side: the operator's signal first, if it is not the
    /// SIGHUP the terminal sends, then the terminal is closed.
    func hangUp(_ why: String) {
        guard !isHungUp, !isFinished else { return }
        isHungUp = true
        logger.info("session hung up: \(why)", metadata: metadata)
        updateReading()
        // The supervisor's copy of the terminal would keep it open.
        releaseKept { [self] in
            loop.execute { [self] in
                guard settings.endSignal != SIGHUP else {
                    terminal?.close()
                    return
                }
                signal(settings.endSignal) { [self] in loop.execute { self.terminal?.close() } }
            }
        }
    }

    /// The supervisor lets go of the session's terminal and ring, once.
    private func releaseKept(then done: @escaping @Sendable () -> Void) {
        guard !released else { return done() }
        released = true
        release(self, done)
    }

    // MARK: Clients

    /// A client attaches, wanting output from `offset`: it starts there if the ring holds it
    /// (clamped to what exists), at the oldest byte held otherwise or without an offset.
    /// Returns its number, where it starts and what it missed.
    func attach(from offset: UInt64?) -> (client: Int, offset: UInt64, skipped: UInt64) {
        let start: UInt64, skipped: UInt64
        if let offset, offset >= ring.start {
            (start, skipped) = (min(offset, ring.end), 0)
        } else {
            (start, skipped) = (ring.start, offset.map { ring.start - $0 } ?? 0)
        }
        linger?.cancel()
        linger = nil
        defer { nextClient += 1 }
        return (nextClient, start, skipped)
    }

    /// The attachment `attach` numbered is ready to be sent output and to take commands
    /// (what waited on its circuit is read now, unless it writes and input is blocked).
    func add(_ client: Attachment) {
        clients[client.number] = client
        if client.writer { adoptedHold = nil }
        updateReading()
        client.circuit.isDeliveryPaused = client.writer && inputBlocked
        client.pump()
    }

    /// A client's attachment ended. The last one out starts the linger.
    func detach(_ client: Attachment) {
        guard clients.removeValue(forKey: client.number) != nil else { return }
        if client.writer { updateReading() }
        startLingerIfIdle()
    }

    private func startLingerIfIdle() {
        guard clients.isEmpty, !isFinished, !isHungUp else { return }
        // Cancelling on the loop the task runs on keeps it from running, and the loop is ours.
        linger?.cancel()
        linger = loop.scheduleTask(in: TimeAmount(settings.linger)) { [self] in
            linger = nil
            hangUp("nobody attached within the linger (\(settings.linger))")
        }
    }

    /// A client has been sent output up to its cursor.
    func advanced(_ client: Attachment) {
        if client.writer { updateReading() }
    }

    /// Ends one client's attachment, or every client's; false when there is no such client.
    func kick(_ number: Int?) -> Bool {
        let kicked = clients.values.filter { number == nil || $0.number == number }
        for client in kicked { client.end(.kicked, last: .refused(.kicked)) }
        return !kicked.isEmpty || number == nil
    }

    func countIgnored() { ignored += 1 }
    func countSlowConsumer() { slowConsumerEvents += 1 }

    /// What `cloister ctl sessions` shows. No secret.
    func summary() -> SessionSummary {
        SessionSummary(
            id: id, shell: shell, ageSeconds: UInt32(clamping: max(0, Int64(time(nil)) - Int64(created))),
            bytesOut: ring.end, ringHeld: UInt32(clamping: ring.heldBytes), ringCapacity: UInt32(clamping: ring.capacity),
            slowConsumerEvents: UInt32(clamping: slowConsumerEvents), ignored: UInt32(clamping: ignored),
            adoptions: ring.adoptions,
            clients: clients.sorted { $0.key < $1.key }.map { key, client in
                SessionSummary.Client(client: UInt32(clamping: key), worker: client.worker, writer: client.writer,
                                      lag: ring.end - client.cursor)
            })
    }

    func info(title: String, writer: Bool, offset: UInt64, skipped: UInt64, inputStream: Int?) -> SessionInfo {
        SessionInfo(title: title, session: id, secret: writer ? writeSecret : nil, readSecret: readSecret,
                    offset: offset, skipped: skipped, inputOffset: inputStream.map(inputOffset))
    }

    /// The slot of a writer's input stream in the kept ring.
    func inputSlot(for name: [UInt8]) -> Int { ring.inputSlot(for: name) }

    /// How much of the stream in `slot` the terminal took, or will take from what waits here.
    private func inputOffset(_ slot: Int) -> UInt64 {
        ring.inputCount(slot) + UInt64(terminal?.pendingBytes(of: slot) ?? 0)
    }
}

/// Session ids and secrets.
public enum SessionToken {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// `count` random bytes' worth of URL-safe text (it rides in URL fragments): six bits of
    /// getrandom(2) per character, drawn in one call.
    public static func random(bytes count: Int) -> String {
        let length = count * 4 / 3
        // One byte per character, and spares for the first (see below).
        guard let random = try? randomBytes(length + 8) else { fatalError("getrandom failed: no secret can be made") }
        var characters = random.prefix(length).map { alphabet[Int($0 & 63)] }
        // Never a leading "-": an id is typed on command lines (`cloister ctl kick ID`,
        // `cloister attach --session ID`), where it would read as an option. The first of the
        // spare bytes below 248 (62 * 4) picks one of the 62 letters and digits, unbiased;
        // the rare draw with none falls back to "A", under a tenth of a bit lost.
        characters[0] = random.dropFirst(length).first { $0 < 248 }.map { alphabet[Int($0 % 62)] } ?? alphabet[0]
        return String(decoding: characters, as: UTF8.self)
    }
}
