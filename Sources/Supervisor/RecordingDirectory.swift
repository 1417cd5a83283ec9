import FoundationEssentials
import Logging
import Recording
import RoleProtocol
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `--record DIR`: the directory the recordings live in, held open by the supervisor, which
/// alone opens, lists and deletes files in it. The recorder asks for each session's file and
/// gets a descriptor (a new file, created exclusively, never following a link; or the file a
/// recorder before it left unfinished); it can write nothing else. Retention deletes the
/// oldest finished recordings past `--record-max-size` and `--record-max-age`, each deletion
/// audited.
public final class RecordingDirectory: Sendable {
    public struct Retention: Sendable {
        public var maxBytes: UInt64?
        public var maxAge: Duration?
        public init(maxBytes: UInt64? = nil, maxAge: Duration? = nil) { (self.maxBytes, self.maxAge) = (maxBytes, maxAge) }
    }

    public let path: String
    private let directory: FileDescriptor
    private let retention: Retention
    /// Files handed out and not reported finished, by session.
    private let unfinished = Mutex<[String: String]>([:])
    private let logger: Logger
    let audit: AuditTrail?

    /// Opens (making it, mode 0750, if it is missing) the directory: it must be a directory
    /// of this process's user that no other user may write.
    public static func open(path: String) throws(SystemCallError) -> FileDescriptor {
        if mkdir(path, 0o750) != 0 && errno != EEXIST { throw SystemCallError(call: "mkdir", errno: Errno(rawValue: errno), detail: path) }
        let fd = try valueOrErrno("open", detail: path) { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw SystemCallError(call: "fstat", errno: Errno(rawValue: errno), detail: path)
        }
        guard info.st_uid == geteuid() else {
            close(fd)
            throw SystemCallError(call: "open", errno: .permissionDenied, detail: "\(path) belongs to uid \(info.st_uid), not to this server's user (uid \(geteuid()))")
        }
        guard info.st_mode & 0o002 == 0 else {
            close(fd)
            throw SystemCallError(call: "open", errno: .permissionDenied, detail: "\(path) may be written by every user")
        }
        return FileDescriptor(rawValue: fd)
    }

    public init(path: String, directory: FileDescriptor, retention: Retention, audit: AuditTrail?, logger: Logger) {
        (self.path, self.directory, self.retention, self.audit, self.logger) = (path, directory, retention, audit, logger)
    }

    deinit { try? directory.close() }

    // MARK: What is in it

    /// One recording as `ctl recordings` shows it.
    public struct Entry: Sendable, Codable, Equatable {
        public var file: String
        public var session: String
        public var user: String
        public var sequence: Int
        /// Seconds since the epoch.
        public var start: Int
        public var durationSeconds: Double
        public var bytes: UInt64
        /// "ok", "recording" (still being written), or the first problem `verify` finds.
        public var verified: String
    }

    /// The `.cast` files' names.
    private func names() -> [String] {
        guard let copy = try? valueOrErrno("dup", { dup(directory.rawValue) }), let dir = fdopendir(copy) else { return [] }
        defer { closedir(dir) }
        rewinddir(dir)
        var out: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".cast"), !name.hasPrefix(".") { out.append(name) }
        }
        return out.sorted()
    }

    private func read(_ name: String, limit: Int = 1 << 30) -> [UInt8]? {
        guard let fd = try? valueOrErrno("openat", { openat(directory.rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }) else { return nil }
        let file = FileDescriptor(rawValue: fd)
        defer { try? file.close() }
        return try? file.readToEnd(limit: limit)
    }

    /// The header line (the first, at most 64 KiB), without reading the rest.
    private func firstLine(_ name: String) -> [UInt8]? {
        guard let fd = try? valueOrErrno("openat", { openat(directory.rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }) else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            guard n > 0 else { break }
            filled += n
            if let end = buffer[..<filled].firstIndex(of: 0x0a) { return Array(buffer[..<end]) }
        }
        return nil
    }

    private func info(_ name: String) -> stat? {
        var info = stat()
        return fstatat(directory.rawValue, name, &info, AT_SYMLINK_NOFOLLOW) == 0 ? info : nil
    }

    /// Where the sequence stands: the highest sequence number in the directory and that
    /// recording's header link ("" for none), for the next recorder.
    func sequence() -> (last: Int, link: String) {
        var best: (Int, String) = (0, "")
        for name in names() {
            guard let line = firstLine(name) else { continue }
            guard let header = try? JSONDecoder().decode(Asciicast.Header.self, from: Data(line)), let cloister = header.cloister,
                  cloister.sequence > best.0, let chain = HashChain.afterHeader(line, previous: cloister.previous) else { continue }
            best = (cloister.sequence, chain.hex)
        }
        return best
    }

    /// Every recording, checked against its chain and the directory's sequence (one larger
    /// than 1 GiB is listed from its header, unchecked).
    public func list() -> [Entry] {
        let open = Set(unfinished.withLock { $0.values })
        var files: [(name: String, contents: [UInt8])] = [], unread: [Entry] = []
        for name in names() {
            if let contents = read(name) {
                files.append((name, contents))
            } else {
                let cloister = firstLine(name).flatMap { try? JSONDecoder().decode(Asciicast.Header.self, from: Data($0)) }
                unread.append(Entry(file: name, session: cloister?.cloister?.session ?? "", user: cloister?.cloister?.user ?? "",
                                    sequence: cloister?.cloister?.sequence ?? 0, start: cloister?.timestamp ?? 0, durationSeconds: 0,
                                    bytes: UInt64(info(name)?.st_size ?? 0),
                                    verified: open.contains(name) ? "recording" : "not checked: larger than 1 GiB (cloister recordings verify reads it)"))
            }
        }
        // In the files' order: each one's size is what was read of it.
        return (unread + zip(files, RecordingVerifier.check(directory: files)).map { file, checked in
            let cloister = checked.header?.cloister
            let name = file.name
            return Entry(file: name, session: cloister?.session ?? "", user: cloister?.user ?? "", sequence: cloister?.sequence ?? 0,
                         start: checked.header?.timestamp ?? 0, durationSeconds: checked.duration,
                         bytes: UInt64(file.contents.count),
                         verified: open.contains(name) ? "recording" : checked.findings.first.map { "line \($0.line): \($0.problem)" } ?? "ok")
        }).sorted { ($0.sequence, $0.file) < ($1.sequence, $1.file) }
    }

    // MARK: The recorder's requests

    /// Serves the conversations `recorder` opens until its transport closes.
    func serve(_ recorder: RolePool.Instance) async {
        await withDiscardingTaskGroup { group in
            while let circuit = try? await recorder.transport.accept() {
                group.addTask { await self.conversation(circuit, recorder: recorder) }
            }
        }
    }

    private func conversation(_ circuit: RoleCircuit, recorder: RolePool.Instance) async {
        let received: Received<RecorderToSupervisor>?
        do {
            received = try await circuit.receive(RecorderToSupervisor.self)
        } catch {
            logger.error("refused a message from the recorder", metadata: ["recorder_pid": "\(recorder.pid)", "error": "\(error)"])
            try? await circuit.send([], end: true)
            return
        }
        switch received?.message {
        case .open(let session):
            do {
                let (fd, existing) = try file(for: session)
                defer { try? fd.close() }
                try await circuit.send(SupervisorToRecorder.file(existing: existing), descriptors: [fd], end: true)
            } catch {
                logger.error("no file for a recording", metadata: ["session": "\(session)", "error": "\(error)"])
                try? await circuit.send(SupervisorToRecorder.refused("\(error)"), end: true)
            }
            return
        case .finished(let session):
            unfinished.withLock { _ = $0.removeValue(forKey: session) }
            enforceRetention()
        case .audit(let record):
            var record = record
            if let session = record["session"], let file = unfinished.withLock({ $0[session] }) {
                record = AuditRecord(record.kind, record.fields.map { ($0.name, $0.value) } + [("file", file)])
            }
            audit?.record(record, vouchedBy: "recorder")
        case nil:
            break
        }
        try? await circuit.send([], end: true)
    }

    /// The session's unfinished file, or a new one named by the time and the session
    /// (created exclusively, mode 0640, never through a link).
    private func file(for session: String) throws(SystemCallError) -> (FileDescriptor, existing: Bool) {
        precondition(RecorderFeed.isSessionID(session), "the decoder checks session ids")
        if let name = unfinished.withLock({ $0[session] }) {
            if let fd = try? valueOrErrno("openat", { openat(directory.rawValue, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC) }) {
                // A recorder told to finish (the server stopping) ended its recordings, and one larger than
                // the recorder reads back to go on with is left as it is (`verify` says it
                // was cut): the session goes on in a new one.
                var info = stat()
                guard Self.isFinished(fd) || fstat(fd, &info) != 0 || info.st_size > Self.continuedBytes else {
                    return (FileDescriptor(rawValue: fd), true)
                }
                close(fd)
            } else {
                logger.warning("an unfinished recording is gone; the session's recording goes on in a new file", metadata: ["file": "\(name)"])
            }
        }
        var now = time(nil), parts = tm()
        gmtime_r(&now, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let name = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z-\(session).cast"
        let fd = try valueOrErrno("openat", detail: "\(path)/\(name)") {
            openat(directory.rawValue, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o640)
        }
        unfinished.withLock { $0[session] = name }
        return (FileDescriptor(rawValue: fd), false)
    }

    /// The largest unfinished recording a new recorder reads back (its chain is recomputed
    /// in memory) to go on with.
    static let continuedBytes = 1 << 30

    /// Whether the recording in `fd` ends with its final checkpoint.
    static func isFinished(_ fd: CInt) -> Bool {
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_size > 0 else { return false }
        var tail = [UInt8](repeating: 0, count: 256)
        let offset = max(0, Int(info.st_size) - tail.count)
        let n = pread(fd, &tail, tail.count, off_t(offset))
        guard n > 0 else { return false }
        let lines = tail[..<n].split(separator: 0x0a)
        guard let last = lines.last, let event = Asciicast.Event.parse(last) else { return false }
        return event.code == "m" && event.data.hasPrefix(RecordingWriter.endPrefix)
    }

    // MARK: Retention

    /// Deletes finished recordings older than `maxAge`, then the oldest until the rest fit
    /// in `maxBytes`; each deletion is audited.
    func enforceRetention(now: Int = time(nil)) {
        guard retention.maxBytes != nil || retention.maxAge != nil else { return }
        let open = Set(unfinished.withLock { $0.values })
        var files = names().filter { !open.contains($0) }.compactMap { name in info(name).map { (name: name, info: $0) } }
            .sorted { ($0.info.st_mtim.tv_sec, $0.name) < ($1.info.st_mtim.tv_sec, $1.name) }
        var total = files.reduce(UInt64(0)) { $0 + UInt64($1.info.st_size) } + open.reduce(UInt64(0)) { $0 + UInt64(info($1)?.st_size ?? 0) }
        var doomed: [(String, stat, String)] = []
        if let maxAge = retention.maxAge {
            let cutoff = now - Int(maxAge.components.seconds)
            while let first = files.first, first.info.st_mtim.tv_sec < cutoff {
                doomed.append((first.name, first.info, "older than --record-max-age"))
                total -= UInt64(first.info.st_size)
                files.removeFirst()
            }
        }
        if let maxBytes = retention.maxBytes {
            while total > maxBytes, let first = files.first {
                doomed.append((first.name, first.info, "over --record-max-size"))
                total -= UInt64(first.info.st_size)
                files.removeFirst()
            }
        }
        for (name, info, why) in doomed {
            guard unlinkat(directory.rawValue, name, 0) == 0 else {
                logger.error("a recording past retention was not deleted", metadata: ["file": "\(name)", "error": "\(SystemCallError(call: "unlinkat", errno: Errno(rawValue: errno)))"])
                continue
            }
            audit?.record(AuditRecord(.recordingDeleted, [("file", name), ("bytes", "\(info.st_size)"), ("reason", why)]), vouchedBy: "supervisor")
        }
    }

    /// `enforceRetention` every minute until cancelled.
    func enforceRetentionPeriodically() async {
        while !Task.isCancelled {
            enforceRetention()
            await Wait.sleep(for: .seconds(60))
        }
    }
}
