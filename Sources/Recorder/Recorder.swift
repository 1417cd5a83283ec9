import FoundationEssentials
import Logging
import Recording
import RoleProtocol
import Synchronization
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// Turns the vault's feed into recordings. A session's events wait (up to
/// `RecorderSettings.heldBytesPerSession`) while the supervisor opens its file; from then on
/// each is written as it comes. Output carries its offset in the session's stream, so a hole
/// (events the vault dropped, a restart of either side) is marked where it is, as is every
/// gap the vault reports. Sequence numbers and the links between recordings are given as
/// files arrive, under one lock, so the directory is one sequence whatever the order in
/// which sessions start and end.
final class Recorder: Sendable {
    /// Asks the supervisor for a session's file; calls back with it, or with why there is none.
    typealias Opener = @Sendable (_ session: String, _ done: @escaping @Sendable (Result<(fd: CInt, existing: Bool), OpenFailure>) -> Void) -> Void
    struct OpenFailure: Error { var reason: String }

    private final class Recording {
        let user: String
        var size: (columns: UInt16, rows: UInt16)
        /// The first event's time, microseconds since the epoch: the recording's zero.
        var zero: UInt64
        /// The next output byte expected.
        var expected: UInt64
        var fd: CInt = -1
        var writer: RecordingWriter?
        var sequence = 0
        /// Events waiting for the file, and their output bytes.
        var held: [RecorderFeed] = []
        var heldBytes = 0
        /// Events dropped while held was full: a gap once the file is there.
        var overflow: (events: Int, bytes: UInt64) = (0, 0)
        var lastTime = 0.0
        var failed = false
        /// Files moved through the session (trzsz, ZMODEM), as its output shows them start.
        var transfers = TransferSpotter()
        var bytes: UInt64 = 0

        init(user: String, size: (UInt16, UInt16), zero: UInt64, expected: UInt64) {
            (self.user, self.size, self.zero, self.expected) = (user, size, zero, expected)
        }
    }

    private struct State {
        var recordings: [String: Recording] = [:]
        var lastSequence = 0
        var lastLink = ""
        var unannounced: Set<String> = []
    }

    private let state = Mutex(State())
    private let settings: RecorderSettings
    private let logger: Logger
    private let open: Opener
    /// Facts for the audit trail, and a recording's end, for the supervisor.
    private let audit: @Sendable (AuditRecord) -> Void
    private let finished: @Sendable (String) -> Void

    init(settings: RecorderSettings, logger: Logger, open: @escaping Opener, audit: @escaping @Sendable (AuditRecord) -> Void,
         finished: @escaping @Sendable (String) -> Void) {
        (self.settings, self.logger, self.open, self.audit, self.finished) = (settings, logger, open, audit, finished)
    }

    /// Where the directory's sequence stands (from the supervisor, before any feed).
    func directory(last: Int, link: String) {
        state.withLock { s in (s.lastSequence, s.lastLink) = (last, link) }
    }

    /// One event of the feed.
    func handle(_ event: RecorderFeed) {
        guard let session = event.session else { return }
        var ask = false
        state.withLock { s in
            if case .started(_, let user, let columns, let rows, let offset, _) = event, s.recordings[session.id] == nil {
                s.recordings[session.id] = Recording(user: user, size: (columns, rows), zero: session.time, expected: offset)
                ask = true
            }
            guard let recording = s.recordings[session.id] else {
                // The vault announces a session before its events; one it did not is its bug,
                // said once per session (bounded).
                if s.unannounced.count < 1024, s.unannounced.insert(session.id).inserted {
                    logger.warning("events for a session that was not announced are dropped", metadata: ["session": "\(session.id)"])
                }
                return
            }
            apply(event, to: recording, id: session.id, s: &s)
        }
        if ask { requestFile(session.id) }
    }

    private func requestFile(_ id: String) {
        open(id) { [self] result in
            switch result {
            case .success(let file): opened(id, fd: file.fd, existing: file.existing)
            case .failure(let failure):
                logger.error("no file for a recording; the session is not recorded", metadata: ["session": "\(id)", "reason": "\(failure.reason)"])
                audit(AuditRecord(.recordingGap, [("session", id), ("reason", "no file: \(failure.reason)")]))
                state.withLock { _ = $0.recordings.removeValue(forKey: id) }
            }
        }
    }

    /// The supervisor opened the session's file: the header (or, for a recording a recorder
    /// before this one began, what follows its last whole line), then what waited.
    private func opened(_ id: String, fd: CInt, existing: Bool) {
        state.withLock { s in
            guard let recording = s.recordings[id], recording.fd < 0 else {
                close(fd)
                return
            }
            recording.fd = fd
            do {
                let continued = existing ? try continuation(fd) : nil
                if existing && continued == nil && lseek(fd, 0, SEEK_END) != 0 {
                    throw OpenFailure(reason: "the file handed over is neither empty nor an unfinished recording")
                }
                if let continuation = continued {
                    recording.writer = RecordingWriter(continuing: continuation, checkpointEvery: settings.checkpointEvery,
                                                       write: writer(fd, recording), checkpointed: checkpointed(id, recording))
                    recording.sequence = continuation.header.cloister?.sequence ?? 0
                    recording.zero = UInt64(continuation.header.timestamp) * 1_000_000
                    recording.lastTime = continuation.lastTime
                    try recording.writer?.marker("gap: the recorder restarted; output goes on at byte \(recording.expected) of the session",
                                                 at: recording.lastTime)
                    audit(AuditRecord(.recordingGap, [("session", id), ("reason", "the recorder restarted"), ("sequence", "\(recording.sequence)")]))
                } else {
                    s.lastSequence += 1
                    recording.sequence = s.lastSequence
                    let header = Asciicast.Header(
                        width: Int(recording.size.columns), height: Int(recording.size.rows), timestamp: Int(recording.zero / 1_000_000),
                        env: ["TERM": "xterm-256color"],
                        cloister: .init(session: id, user: recording.user, sequence: recording.sequence, previous: s.lastLink))
                    // Whole seconds: the events' times count from there.
                    recording.zero = UInt64(header.timestamp) * 1_000_000
                    let writer = try RecordingWriter(header: header, checkpointEvery: settings.checkpointEvery,
                                                     write: writer(fd, recording), checkpointed: checkpointed(id, recording))
                    recording.writer = writer
                    s.lastLink = writer.headerLink
                    audit(AuditRecord(.recordingStarted, [("session", id), ("user", recording.user), ("sequence", "\(recording.sequence)"),
                                                          ("header_link", writer.headerLink)]))
                }
                if recording.overflow.events > 0 {
                    try gap(recording, id: id, events: recording.overflow.events, bytes: recording.overflow.bytes,
                            why: "the recording's file was being opened", at: recording.lastTime)
                    recording.overflow = (0, 0)
                }
                let held = recording.held
                recording.held = []
                recording.heldBytes = 0
                for event in held { apply(event, to: recording, id: id, s: &s) }
            } catch {
                fail(recording, id: id, error)
            }
        }
    }

    /// What an existing file holds, cut back to its last whole line.
    private func continuation(_ fd: CInt) throws -> RecordingWriter.Continuation? {
        var contents: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try valueOrErrno("read") { read(fd, &buffer, buffer.count) }
            if n == 0 { break }
            contents += buffer[..<n]
        }
        guard let continuation = RecordingWriter.Continuation(contents) else { return nil }
        _ = try valueOrErrno("ftruncate") { ftruncate(fd, off_t(continuation.keptBytes)) }
        _ = try valueOrErrno("lseek") { Int(lseek(fd, off_t(continuation.keptBytes), SEEK_SET)) }
        return continuation
    }

    private func writer(_ fd: CInt, _ recording: Recording) -> ([UInt8]) throws -> Void {
        { [unowned recording] bytes in
            try bytes.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    done += try valueOrErrno("write") { write(fd, raw.baseAddress! + done, raw.count - done) }
                }
            }
            recording.bytes += UInt64(bytes.count)
        }
    }

    private func checkpointed(_ id: String, _ recording: Recording) -> (Int, String) -> Void {
        { [audit, unowned recording] lines, head in
            audit(AuditRecord(.recordingCheckpoint, [("session", id), ("sequence", "\(recording.sequence)"), ("lines", "\(lines)"), ("head", head)]))
        }
    }

    /// One event, written, or held while the file is being opened.
    private func apply(_ event: RecorderFeed, to recording: Recording, id: String, s: inout State) {
        guard !recording.failed else {
            if case .ended = event {
                if recording.fd >= 0 { close(recording.fd) }
                s.recordings[id] = nil
            }
            return
        }
        guard let writer = recording.writer else {
            let size: Int
            if case .output(_, _, let bytes) = event { size = bytes.count } else { size = 16 }
            if recording.heldBytes + size > settings.heldBytesPerSession {
                if case .output(_, _, let bytes) = event { recording.overflow.bytes += UInt64(bytes.count) }
                recording.overflow.events += 1
                return
            }
            recording.held.append(event)
            recording.heldBytes += size
            return
        }
        guard let session = event.session else { return }
        let at = max(recording.lastTime, Double(Int64(session.time) - Int64(recording.zero)) / 1_000_000)
        recording.lastTime = at
        do {
            switch event {
            case .hello: break
            case .started(_, _, let columns, let rows, let offset, _):
                if offset > recording.expected {
                    try gap(recording, id: id, events: 0, bytes: offset - recording.expected, why: "the vault restarted", at: at)
                    recording.expected = offset
                }
                if (columns, rows) != recording.size {
                    recording.size = (columns, rows)
                    try writer.resize(columns: Int(columns), rows: Int(rows), at: at)
                }
            case .output(_, let offset, var bytes):
                if offset > recording.expected {
                    try gap(recording, id: id, events: 0, bytes: offset - recording.expected, why: "output missing from the feed", at: at)
                } else if offset < recording.expected {
                    // Already written (a vault after a restart sent it again).
                    let seen = recording.expected - offset
                    guard seen < UInt64(bytes.count) else { return }
                    bytes.removeFirst(Int(seen))
                }
                recording.expected = max(recording.expected, offset) + UInt64(bytes.count)
                try writer.output(bytes, at: at)
                for transfer in recording.transfers.scan(bytes, at: at) {
                    audit(AuditRecord(.fileTransfer, [("session", id), ("user", recording.user), ("protocol", transfer.protocolName),
                                                      ("direction", transfer.direction), ("sequence", "\(recording.sequence)"),
                                                      ("recording_seconds", "\(Int(at))")]))
                }
            case .input(_, let bytes):
                try writer.input(bytes, at: at)
            case .resize(_, let columns, let rows):
                recording.size = (columns, rows)
                try writer.resize(columns: Int(columns), rows: Int(rows), at: at)
            case .gap(_, let events, let bytes):
                try gap(recording, id: id, events: Int(events), bytes: bytes, why: "the vault dropped events: the recorder fell behind or was away", at: at)
                // The output among them is a hole the next output's offset shows too: said once.
                recording.expected += bytes
            case .ended(_, let exit):
                // Forgotten whatever the end's writes do.
                defer {
                    if recording.fd >= 0 { close(recording.fd) }
                    s.recordings[id] = nil
                }
                try end(recording, id: id, writer: writer, exit: exit, why: nil, at: at)
            }
        } catch {
            fail(recording, id: id, error)
        }
    }

    /// The recorder is about to stop (the server stops or is upgraded, or its supervisor is
    /// gone): every recording still open ends here, with a last marker saying why, so that
    /// each checks; a session that goes on is recorded in a new file by the next recorder.
    func finishAll(_ why: String) {
        state.withLock { s in
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let micros = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec / 1000)
            for (id, recording) in s.recordings {
                if let writer = recording.writer, !recording.failed {
                    do {
                        try end(recording, id: id, writer: writer, exit: nil, why: why,
                                at: max(recording.lastTime, Double(micros - Int64(recording.zero)) / 1_000_000))
                        continue
                    } catch {
                        fail(recording, id: id, error)
                    }
                }
                if recording.fd >= 0 { close(recording.fd) }
            }
            s.recordings = [:]
        }
    }

    /// A recording's last lines (the exit status, or a marker saying why it stops), on disk
    /// and audited with its last link; the supervisor is told it is finished.
    private func end(_ recording: Recording, id: String, writer: RecordingWriter, exit: String?, why: String?, at: Double) throws {
        if let why { try writer.marker("the recording stops here: \(why)", at: at) }
        let head = try writer.finish(exit: exit, at: at)
        _ = fdatasync(recording.fd)
        close(recording.fd)
        recording.fd = -1
        audit(AuditRecord(.recordingEnded, [("session", id), ("sequence", "\(recording.sequence)"), exit.map { ("exit", $0) } ?? ("reason", why ?? ""),
                                            ("duration_seconds", "\(Int(at))"), ("bytes", "\(recording.bytes)"), ("head", head)]))
        finished(id)
    }

    private func gap(_ recording: Recording, id: String, events: Int, bytes: UInt64, why: String, at: Double) throws {
        let what = [events > 0 ? "\(events) event\(events == 1 ? "" : "s")" : nil, bytes > 0 ? "\(bytes) bytes of output" : nil]
            .compactMap { $0 }.joined(separator: ", ")
        try recording.writer?.marker("gap: \(what.isEmpty ? "events" : what) not recorded (\(why))", at: at)
        audit(AuditRecord(.recordingGap, [("session", id), ("sequence", "\(recording.sequence)"), ("events", "\(events)"),
                                          ("bytes", "\(bytes)"), ("reason", why)]))
    }

    /// A write failed (the disk is full, the file is gone): the recording stops here.
    private func fail(_ recording: Recording, id: String, _ error: any Error) {
        recording.failed = true
        logger.error("a recording failed; the rest of the session is not recorded", metadata: ["session": "\(id)", "error": "\(error)"])
        audit(AuditRecord(.recordingGap, [("session", id), ("sequence", "\(recording.sequence)"), ("reason", "write failed: \(error)")]))
    }
}
