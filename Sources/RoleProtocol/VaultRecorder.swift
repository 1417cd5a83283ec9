/// Vault → recorder (`Link.vaultRecorder`): a plain SOCK_SEQPACKET socket, one event a
/// packet, no circuits and no answer. The vault sends without waiting (MSG_DONTWAIT): when
/// the socket is full, the event is dropped and counted, never waited for, so a slow or dead
/// recorder never holds a shell back; the next packet that fits is a `.gap` saying what was
/// lost. Output carries its offset in the session's output stream, so the recorder sees any
/// hole itself. Times are microseconds since the epoch (CLOCK_REALTIME), as the vault read them.
public enum RecorderFeed: LinkMessage, Equatable {
    /// The first packet: the link's intent and the vault's build.
    case hello(intent: String, build: String)
    /// A session to record from `offset` of its output on: new, or (`resumed`) one already
    /// running when this link was made (the recorder or the vault was restarted).
    case started(Session, user: String, columns: UInt16, rows: UInt16, offset: UInt64, resumed: Bool)
    case output(Session, offset: UInt64, bytes: [UInt8])
    /// What a writer typed, as the terminal took it (sent only with `--record-input`, and
    /// only while the terminal echoes).
    case input(Session, bytes: [UInt8])
    case resize(Session, columns: UInt16, rows: UInt16)
    /// Events the vault dropped for this session (the socket was full or not there), and
    /// output bytes among them.
    case gap(Session, events: UInt32, bytes: UInt64)
    /// The session is over; `exit` as `Exit` describes it.
    case ended(Session, exit: String)

    /// Which session, and when (microseconds since the epoch).
    public struct Session: Sendable, Equatable {
        public var id: String
        public var time: UInt64
        public init(id: String, time: UInt64) { (self.id, self.time) = (id, time) }
    }

    /// The largest output a packet carries (the vault reads at most 64 KiB a wake-up).
    public static let maxOutput = 64 * 1024
    /// The largest packet, with its fields.
    public static let maxPacket = maxOutput + 256

    enum Kind: UInt8 { case hello = 0x68, started = 0x53, output = 0x6f, input = 0x69, resize = 0x72, gap = 0x67, ended = 0x45 }

    public var encoded: [UInt8] {
        func head(_ kind: Kind, _ session: Session) -> FieldWriter {
            var w = FieldWriter(kind: kind.rawValue)
            w.short(Array(session.id.utf8.prefix(LinkLimits.sessionField)))
            w.u64(session.time)
            return w
        }
        switch self {
        case .hello(let intent, let build):
            var w = FieldWriter(kind: Kind.hello.rawValue)
            w.hello(intent: intent, build: build)
            return w.bytes
        case .started(let session, let user, let columns, let rows, let offset, let resumed):
            var w = head(.started, session)
            w.short(Array(user.utf8.prefix(LinkLimits.userName)))
            w.u16(columns)
            w.u16(rows)
            w.u64(offset)
            w.rest([resumed ? 1 : 0])
            return w.bytes
        case .output(let session, let offset, let bytes):
            var w = head(.output, session)
            w.u64(offset)
            w.rest(bytes)
            return w.bytes
        case .input(let session, let bytes):
            var w = head(.input, session)
            w.rest(bytes)
            return w.bytes
        case .resize(let session, let columns, let rows):
            var w = head(.resize, session)
            w.u16(columns)
            w.u16(rows)
            return w.bytes
        case .gap(let session, let events, let bytes):
            var w = head(.gap, session)
            w.u32(events)
            w.u64(bytes)
            return w.bytes
        case .ended(let session, let exit):
            var w = head(.ended, session)
            w.text(exit)
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public var session: Session? {
        switch self {
        case .hello: return nil
        case .started(let s, _, _, _, _, _), .output(let s, _, _), .input(let s, _), .resize(let s, _, _), .gap(let s, _, _), .ended(let s, _):
            return s
        }
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "RecorderFeed")
        try Self.expect(0, descriptors, kind: r.kind)
        if r.kind == .hello {
            let (intent, build) = try r.hello()
            self = .hello(intent: intent, build: build)
            try r.done()
            return
        }
        let id = try r.shortText(limit: LinkLimits.sessionField)
        guard Self.isSessionID(id) else { throw r.malformed }
        let session = Session(id: id, time: try r.u64())
        switch r.kind {
        case .hello: throw r.malformed
        case .started:
            let user = try r.shortText(limit: LinkLimits.userName)
            let (columns, rows, offset) = (try r.u16(), try r.u16(), try r.u64())
            switch try r.u8() {
            case 0: self = .started(session, user: user, columns: columns, rows: rows, offset: offset, resumed: false)
            case 1: self = .started(session, user: user, columns: columns, rows: rows, offset: offset, resumed: true)
            default: throw r.malformed
            }
        case .output: self = .output(session, offset: try r.u64(), bytes: try r.rest(limit: Self.maxOutput))
        case .input: self = .input(session, bytes: try r.rest(limit: Self.maxOutput))
        case .resize: self = .resize(session, columns: try r.u16(), rows: try r.u16())
        case .gap: self = .gap(session, events: try r.u32(), bytes: try r.u64())
        case .ended: self = .ended(session, exit: try r.text())
        }
        try r.done()
    }

    /// A session id as the vault makes them (`[host.]token`: letters, digits, '-', '_', '.'),
    /// so that one can name a file.
    public static func isSessionID(_ id: String) -> Bool {
        (1...LinkLimits.sessionField).contains(id.utf8.count) && id.utf8.first != UInt8(ascii: ".")
            && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }
            && !id.contains("..")
    }
}
