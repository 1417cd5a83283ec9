/// Supervisor → recorder (`Link.supervisorRecorder`). The supervisor's conversations carry
/// `.directory` first, then a `.feed` per vault, and `.finish` before the recorder is
/// stopped; each is ended by the recorder once acted on. `.file` and `.refused` answer the recorder's `RecorderToSupervisor.open`.
public enum SupervisorToRecorder: LinkMessage {
    /// The recording directory's last sequence number and that recording's header link
    /// (`RecordingWriter.headerLink`; "" when the directory has none): where the sequence
    /// goes on.
    case directory(last: UInt32, link: String)
    /// With the recorder's end of a vault's feed (`Link.vaultRecorder`).
    case feed
    /// With the file for the session asked for, opened for writing by the supervisor inside
    /// the recording directory; `existing`: the recording a recorder before this one began,
    /// to go on with.
    case file(existing: Bool)
    case refused(String)
    /// End every recording open now, with a last marker giving `reason` (the server stops or
    /// is upgraded; the vault has stopped). Ended by the recorder once each is on disk.
    case finish(reason: String)

    enum Kind: UInt8 { case directory = 0x44, feed = 0x46, file = 0x66, refused = 0x72, finish = 0x45 }

    public var encoded: [UInt8] {
        switch self {
        case .directory(let last, let link):
            var w = FieldWriter(kind: Kind.directory.rawValue)
            w.u32(last)
            w.short(Array(link.utf8.prefix(64)))
            return w.bytes
        case .feed: return [Kind.feed.rawValue]
        case .file(let existing): return [Kind.file.rawValue, existing ? 1 : 0]
        case .refused(let reason):
            var w = FieldWriter(kind: Kind.refused.rawValue)
            w.text(reason)
            return w.bytes
        case .finish(let reason):
            var w = FieldWriter(kind: Kind.finish.rawValue)
            w.text(reason)
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        switch self {
        case .feed, .file: return 1
        case .directory, .refused, .finish: return 0
        }
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToRecorder")
        let kind = r.kind
        switch kind {
        case .directory:
            try Self.expect(0, descriptors, kind: kind)
            let last = try r.u32()
            let link = try r.shortText(limit: 64)
            guard link.isEmpty || (link.utf8.count == 64 && link.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                throw r.malformed
            }
            self = .directory(last: last, link: link)
        case .feed:
            try Self.expect(1, descriptors, kind: kind)
            self = .feed
        case .file:
            try Self.expect(1, descriptors, kind: kind)
            switch try r.u8() {
            case 0: self = .file(existing: false)
            case 1: self = .file(existing: true)
            default: throw r.malformed
            }
        case .refused:
            try Self.expect(0, descriptors, kind: kind)
            self = .refused(try r.text())
        case .finish:
            try Self.expect(0, descriptors, kind: kind)
            self = .finish(reason: try r.text())
        }
        try r.done()
    }
}

/// Recorder → supervisor, each the first message of a conversation the recorder opens.
/// `.open` is answered with `SupervisorToRecorder.file` or `.refused`; the others are ended.
public enum RecorderToSupervisor: LinkMessage {
    /// A file for `session`'s recording: a new one, or the one the supervisor opened for
    /// that session before and was not told is finished.
    case open(session: String)
    /// The session's recording has its final checkpoint; it is closed.
    case finished(session: String)
    /// A fact the recorder vouches for (a recording started, a checkpoint, a gap, an end).
    case audit(AuditRecord)

    enum Kind: UInt8 { case open = 0x4f, finished = 0x46, audit = 0x41 }

    public var encoded: [UInt8] {
        switch self {
        case .open(let session):
            var w = FieldWriter(kind: Kind.open.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            return w.bytes
        case .finished(let session):
            var w = FieldWriter(kind: Kind.finished.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            return w.bytes
        case .audit(let record):
            var w = FieldWriter(kind: Kind.audit.rawValue)
            record.write(to: &w)
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "RecorderToSupervisor")
        try Self.expect(0, descriptors, kind: r.kind)
        switch r.kind {
        case .open:
            let session = try r.shortText(limit: LinkLimits.sessionField)
            // The session names a file: only what a vault's ids are made of.
            guard RecorderFeed.isSessionID(session) else { throw r.malformed }
            self = .open(session: session)
        case .finished:
            let session = try r.shortText(limit: LinkLimits.sessionField)
            guard RecorderFeed.isSessionID(session) else { throw r.malformed }
            self = .finished(session: session)
        case .audit: self = .audit(try AuditRecord.read(from: &r))
        }
        try r.done()
    }
}
