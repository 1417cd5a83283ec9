/// What a client asks for when it attaches: a new session (no `session`), or to join one.
public struct AttachRequest: Sendable, Equatable {
    public var columns: UInt16
    public var rows: UInt16
    /// The credential as the client presented it (ttyd's AuthToken).
    public var token: [UInt8]
    /// The session to join, with the secret that lets the client write or only watch.
    public var session: (id: [UInt8], secret: [UInt8])?
    /// The first output byte wanted; nil: whatever the session's ring holds.
    public var offset: UInt64?
    /// Join without writing, even with the writing secret.
    public var readonly: Bool
    /// For a new session: arguments appended to the command (ttyd's --url-arg), at most
    /// `LinkLimits.urlArguments` of at most `LinkLimits.urlArgument` bytes, none with a NUL.
    public var arguments: [[UInt8]]
    /// The client's name for its input stream (at most `LinkLimits.inputStream` bytes): a
    /// writer that names one is told how much of that stream reached the terminal, so that
    /// it sends the rest again after a lost connection.
    public var inputStream: [UInt8]?
    /// The client's address as a `--trusted-proxy` forwarded it (`X-Forwarded-For`'s last
    /// entry, a numeric address), for the audit trail: the worker vouches for it.
    public var forwardedFor: [UInt8]?

    public init(columns: UInt16, rows: UInt16, token: [UInt8], session: (id: [UInt8], secret: [UInt8])? = nil,
                offset: UInt64? = nil, readonly: Bool = false, arguments: [[UInt8]] = [], inputStream: [UInt8]? = nil,
                forwardedFor: [UInt8]? = nil) {
        (self.columns, self.rows, self.token, self.session, self.offset, self.readonly) = (columns, rows, token, session, offset, readonly)
        self.arguments = arguments
        self.inputStream = inputStream
        self.forwardedFor = forwardedFor
    }

    public static func == (a: AttachRequest, b: AttachRequest) -> Bool {
        a.columns == b.columns && a.rows == b.rows && a.token == b.token && a.session?.id == b.session?.id
            && a.session?.secret == b.session?.secret && a.offset == b.offset && a.readonly == b.readonly
            && a.arguments == b.arguments && a.inputStream == b.inputStream && a.forwardedFor == b.forwardedFor
    }
}

/// What the vault tells a client once attached (Cloister's session message).
public struct SessionInfo: Sendable, Equatable {
    public var title: String
    public var session: String
    /// The writing secret: only to a writer.
    public var secret: String?
    public var readSecret: String
    /// The stream offset of the next output byte this client gets.
    public var offset: UInt64
    /// Bytes the client asked for that the ring no longer held.
    public var skipped: UInt64
    /// For a writer that named its input stream: how many bytes of it the terminal has taken
    /// (or will, from what the vault holds); the client sends what follows again.
    public var inputOffset: UInt64?

    public init(title: String, session: String, secret: String?, readSecret: String, offset: UInt64, skipped: UInt64,
                inputOffset: UInt64? = nil) {
        (self.title, self.session, self.secret, self.readSecret, self.offset, self.skipped) = (title, session, secret, readSecret, offset, skipped)
        self.inputOffset = inputOffset
    }
}

/// Worker → vault. An attachment is one circuit the worker opens: `.attach` first, answered
/// by `VaultToWorker.attached` or `.refused`; then input, resizes and pause/resume one way
/// and output the other, until the shell exits (`.exited`) or the worker ends the
/// conversation (the client left; the session lingers). A `.check` conversation asks whether
/// a credential is valid (HTTP basic auth) and is answered by `.accepted` or `.refused`.
public enum WorkerToVault: LinkMessage {
    case check(token: [UInt8])
    case attach(AttachRequest)
    case input([UInt8])
    case resize(columns: UInt16, rows: UInt16)
    case pause
    case resume

    enum Kind: UInt8 { case check = 0x43, attach = 0x41, input = 0x69, resize = 0x72, pause = 0x70, resume = 0x71 }

    /// The first byte of an `.input` message, for the vault's path that writes the rest to
    /// the terminal as it arrived.
    public static var inputKind: UInt8 { Kind.input.rawValue }

    public var encoded: [UInt8] {
        switch self {
        case .check(let token):
            return [Kind.check.rawValue] + token
        case .attach(let request):
            var w = FieldWriter(kind: Kind.attach.rawValue)
            w.u16(request.columns)
            w.u16(request.rows)
            let flags: UInt8 = (request.readonly ? 1 : 0) | (request.session != nil ? 2 : 0) | (request.offset != nil ? 4 : 0)
                | (request.arguments.isEmpty ? 0 : 8) | (request.inputStream != nil ? 16 : 0) | (request.forwardedFor != nil ? 32 : 0)
            w.rest([flags])
            if let offset = request.offset { w.u64(offset) }
            if let session = request.session {
                w.short(session.id)
                w.short(session.secret)
            }
            if !request.arguments.isEmpty { w.commandArguments(request.arguments) }
            if let stream = request.inputStream { w.short(stream) }
            if let forwarded = request.forwardedFor { w.short(forwarded) }
            w.rest(request.token)
            return w.bytes
        case .input(let bytes): return [Kind.input.rawValue] + bytes
        case .resize(let columns, let rows):
            var w = FieldWriter(kind: Kind.resize.rawValue)
            w.u16(columns)
            w.u16(rows)
            return w.bytes
        case .pause: return [Kind.pause.rawValue]
        case .resume: return [Kind.resume.rawValue]
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "WorkerToVault")
        let kind = r.kind
        try Self.expect(0, descriptors, kind: kind)
        switch kind {
        case .check: self = .check(token: try r.rest(limit: LinkLimits.token))
        case .attach:
            let columns = try r.u16(), rows = try r.u16()
            let flags = try r.u8()
            guard flags & ~63 == 0 else { throw r.malformed }
            let offset = flags & 4 != 0 ? try r.u64() : nil
            var session: (id: [UInt8], secret: [UInt8])?
            if flags & 2 != 0 {
                let id = try r.short(limit: LinkLimits.sessionField)
                session = (id, try r.short(limit: LinkLimits.sessionField))
            }
            let arguments = flags & 8 != 0 ? try r.commandArguments() : []
            let stream = flags & 16 != 0 ? try r.short(limit: LinkLimits.inputStream) : nil
            let forwarded = flags & 32 != 0 ? try r.short(limit: LinkLimits.forwardedAddress) : nil
            self = .attach(AttachRequest(columns: columns, rows: rows, token: try r.rest(limit: LinkLimits.token),
                                         session: session, offset: offset, readonly: flags & 1 != 0, arguments: arguments,
                                         inputStream: stream, forwardedFor: forwarded))
        case .input: self = .input(try r.rest())
        case .resize:
            let columns = try r.u16(), rows = try r.u16()
            self = .resize(columns: columns, rows: rows)
        case .pause: self = .pause
        case .resume: self = .resume
        }
        try r.done()
    }
}

/// Vault → worker, on an attachment or check conversation the worker opened.
public enum VaultToWorker: LinkMessage {
    /// The credential is right (the answer to a check): the window title.
    case accepted(title: String)
    /// Attached to a session (the answer to an attach).
    case attached(SessionInfo)
    case refused(Refusal)
    case output([UInt8])
    /// The client fell further behind than the session's ring holds: its output goes on at
    /// `offset`, `skipped` bytes later than where it was.
    case resynced(offset: UInt64, skipped: UInt64)
    /// The shell ended; the vault's last message of the attachment.
    case exited(Exit)

    /// Why the vault said no. A worker tells its client no more than the case.
    public enum Refusal: UInt8, Sendable, CaseIterable {
        case badCredential = 1
        /// The first message of the conversation was not a check or an attach.
        case malformedRequest = 2
        /// The credential was right, but no terminal could be started.
        case noTerminal = 3
        /// A slow client, by the operator's policy, is disconnected rather than re-synchronised.
        case tooSlow = 4
        /// The operator ended this client's attachment (`cloister ctl kick`).
        case kicked = 5
        /// As many clients as the server takes are attached (`--once`: one).
        case busy = 6
        /// The session's id names another host of the fleet (`--host-id`).
        case otherHost = 7
        /// The session's recording failed and the operator's rules end such sessions
        /// (`--record-failure end`).
        case recordingFailed = 8
    }

    /// Output's kind byte is ttyd's output type ("0"): an output message is, byte for byte,
    /// the message the worker sends its client, so output passes through without a copy.
    enum Kind: UInt8 { case accepted = 0x59, attached = 0x54, refused = 0x44, output = 0x30, resynced = 0x52, exited = 0x78 }

    /// The first byte of an `.output` message (see `Kind`).
    public static var outputKind: UInt8 { Kind.output.rawValue }

    public var encoded: [UInt8] {
        switch self {
        case .accepted(let title):
            var w = FieldWriter(kind: Kind.accepted.rawValue)
            w.text(title)
            return w.bytes
        case .attached(let info):
            var w = FieldWriter(kind: Kind.attached.rawValue)
            w.u64(info.offset)
            w.u64(info.skipped)
            w.u64(info.inputOffset ?? .max)
            w.short(Array(info.session.utf8))
            w.short(Array(info.readSecret.utf8))
            w.rest([info.secret == nil ? 0 : 1])
            if let secret = info.secret { w.short(Array(secret.utf8)) }
            w.text(info.title)
            return w.bytes
        case .resynced(let offset, let skipped):
            var w = FieldWriter(kind: Kind.resynced.rawValue)
            w.u64(offset)
            w.u64(skipped)
            return w.bytes
        case .refused(let refusal): return [Kind.refused.rawValue, refusal.rawValue]
        case .output(let bytes): return [Kind.output.rawValue] + bytes
        case .exited(let exit): return Self.encode(exit, kind: Kind.exited.rawValue)
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "VaultToWorker")
        let kind = r.kind
        try Self.expect(0, descriptors, kind: kind)
        switch kind {
        case .accepted: self = .accepted(title: try r.text())
        case .attached:
            let offset = try r.u64(), skipped = try r.u64(), inputOffset = try r.u64()
            func text(_ bytes: [UInt8]) throws(LinkMessageError) -> String {
                guard let s = String(validating: bytes, as: UTF8.self) else { throw r.malformed }
                return s
            }
            let session = try text(try r.short(limit: LinkLimits.sessionField))
            let readSecret = try text(try r.short(limit: LinkLimits.sessionField))
            let hasSecret = try r.u8()
            guard hasSecret <= 1 else { throw r.malformed }
            let secret = hasSecret == 1 ? try text(try r.short(limit: LinkLimits.sessionField)) : nil
            self = .attached(SessionInfo(title: try r.text(), session: session, secret: secret, readSecret: readSecret,
                                         offset: offset, skipped: skipped, inputOffset: inputOffset == .max ? nil : inputOffset))
        case .resynced:
            let offset = try r.u64()
            self = .resynced(offset: offset, skipped: try r.u64())
        case .refused:
            guard let refusal = Refusal(rawValue: try r.u8()) else { throw r.malformed }
            self = .refused(refusal)
        case .output: self = .output(try r.rest())
        case .exited: self = .exited(try Self.decodeExit(&r))
        }
        try r.done()
    }
}

extension LinkMessage {
    static func encode(_ exit: Exit, kind: UInt8) -> [UInt8] {
        var w = FieldWriter(kind: kind)
        w.exit(exit)
        return w.bytes
    }

    static func decodeExit<Kind>(_ r: inout FieldReader<Kind>) throws(LinkMessageError) -> Exit {
        let how = try r.u8()
        let value = Int32(bitPattern: try r.u32())
        switch how {
        case 0: return .status(value)
        case 1: return .signal(value)
        case 2 where value == 0: return .unknown
        default: throw r.malformed
        }
    }
}
