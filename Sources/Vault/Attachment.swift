import Logging
import NIOCore
import RoleProtocol

/// One client on a session: the circuit the worker opened for it, its cursor into the
/// session's output, and whether it may write. Output goes from the ring as the circuit's
/// credit allows (the worker grants it as its client takes it); the client's commands come
/// the other way (a viewer's are ignored and counted), until the shell exits, the client
/// leaves, the operator kicks it, or (by the operator's policy) it falls behind what the ring
/// holds.
///
/// Everything here belongs to the vault's event loop.
final class Attachment: @unchecked Sendable {
    enum Ending: String {
        case shellExited = "shell exited", clientLeft = "client left", tooSlow = "too slow", kicked = "kicked"
        case recordingFailed = "recording failed"
    }

    /// Largest output message: what a caught-up client gets is one terminal read, at most this.
    static var outputLimit: Int { 64 * 1024 }

    let number: Int
    let circuit: RoleChannelCircuit
    let session: Session
    let writer: Bool
    let worker: UInt32
    /// The writer's input stream in the session's kept ring, if it named one.
    let inputStream: Int?
    /// The offset of the next output byte this client is sent.
    private(set) var cursor: UInt64
    /// The worker link's logger; each line adds `metadata`.
    private let logger: Logger
    private var metadata: Logger.Metadata { ["session": "\(session.id)", "mode": "\(writer ? "writer" : "viewer")", "client": "\(number)"] }
    private(set) var ending: Ending?
    /// The vault counts attachments from admission to here.
    private let ended: (_ ending: String) -> Void

    init(number: Int, circuit: RoleChannelCircuit, session: Session, writer: Bool, worker: UInt32, cursor: UInt64,
         inputStream: Int?, logger: Logger, ended: @escaping (_ ending: String) -> Void) {
        (self.number, self.circuit, self.session, self.writer, self.worker, self.cursor) = (number, circuit, session, writer, worker, cursor)
        self.inputStream = inputStream
        self.logger = logger
        self.ended = ended
    }

    /// Tells the client where it is attached, then sends it output from its cursor on.
    func start(_ info: SessionInfo, openAttachments: Int) {
        circuit.onMessage = { [self] payload, isEnd in received(payload, isEnd: isEnd) }
        circuit.onWritable = { [self] in pump() }
        circuit.onFailure = { [self] _ in end(.clientLeft, last: nil) }
        logger.info("attachment started", metadata: metadata.merging(["offset": "\(info.offset)", "skipped": "\(info.skipped)",
                                                                      "open_attachments": "\(openAttachments)"]) { $1 })
        // A new conversation has a whole window of credit.
        let sent = (try? circuit.send(VaultToWorker.attached(info).encoded)) == true
        // Added before what the worker sent meanwhile is read, the client's end among it: a
        // client that already left (or a link that failed) ends its attachment like any
        // other, and the session lingers.
        session.add(self)
        if !sent { end(.clientLeft, last: nil) }
    }

    // MARK: The client's commands

    private func received(_ payload: ByteBuffer, isEnd: Bool) {
        guard ending == nil else { return }
        if payload.readableBytes > 0 { command(payload) }
        if isEnd { end(.clientLeft, last: nil) }
    }

    private func command(_ payload: ByteBuffer) {
        // Input, the bulk of what clients send, goes to the terminal as it arrived.
        if payload.getInteger(at: payload.readerIndex, as: UInt8.self) == WorkerToVault.inputKind {
            guard writer else { return session.countIgnored() }
            return session.input(payload.getSlice(at: payload.readerIndex + 1, length: payload.readableBytes - 1)!, stream: inputStream)
        }
        switch try? WorkerToVault(decoding: Array(buffer: payload), descriptors: 0) {
        case .resize(let columns, let rows) where writer: session.resize(rows: rows, columns: columns)
        case .pause where writer: session.pause()
        case .resume where writer: session.resume()
        case .input, .resize, .pause, .resume: session.countIgnored()
        case .attach, .check, nil:
            // A worker that sends what does not belong on an attachment ends it.
            logger.warning("attachment ended: a message that does not belong on it", metadata: metadata)
            end(.clientLeft, last: nil)
        }
    }

    // MARK: Output

    /// Sends what the ring has beyond the cursor, as far as credit goes; the status once the
    /// session is over and everything was sent.
    func pump() {
        while ending == nil {
            guard let next = session.ring.read(from: cursor, limit: Self.outputLimit) else {
                if session.isFinished { end(.shellExited, last: session.exitStatus.map { .exited($0) }) }
                return
            }
            if next.skipped > 0 {
                session.countSlowConsumer()
                guard session.settings.slowConsumer == .resync else { return end(.tooSlow, last: .refused(.tooSlow)) }
                guard send(VaultToWorker.resynced(offset: next.offset, skipped: next.skipped).encoded) else { return }
                cursor = next.offset
                continue
            }
            guard (try? circuit.send(next.bytes, kind: VaultToWorker.outputKind)) == true else { return }
            cursor = next.offset + UInt64(next.bytes.readableBytes)
            session.advanced(self)
        }
    }

    /// False when there is no credit (`onWritable` follows) or the link has failed
    /// (`onFailure` follows).
    private func send(_ bytes: [UInt8]) -> Bool { (try? circuit.send(bytes)) == true }

    // MARK: Ending

    /// Ends the attachment for `ending`, with the client told `last` if there is a word for
    /// it. Whatever the worker still sends on the circuit, until its own end, is dropped.
    func end(_ ending: Ending, last: VaultToWorker?) {
        guard self.ending == nil else { return }
        self.ending = ending
        logger.info("attachment ended", metadata: metadata.merging(["ending": "\(ending.rawValue)"]) { $1 })
        session.detach(self)
        ended(ending.rawValue)
        circuit.onMessage = { _, _ in }
        circuit.onWritable = nil
        circuit.isDeliveryPaused = false
        guard let last else { return circuit.end() }
        sendLast(last)
    }

    /// The attachment's last word (why it ended). A client that stopped reading (the one an
    /// operator kicks or the policy drops) has left the circuit without credit, so the word
    /// waits a little, then the circuit is abandoned and the worker closes the connection
    /// without it.
    private func sendLast(_ message: VaultToWorker) {
        let circuit = self.circuit
        do {
            if try circuit.send(message.encoded, end: true) { return }
        } catch {
            return  // the link is gone
        }
        let giveUp = session.loop.scheduleTask(in: .seconds(5)) { circuit.abandon() }
        circuit.onWritable = {
            giveUp.cancel()
            _ = try? circuit.send(message.encoded, end: true)
        }
    }
}
