/// Supervisor → vault, each the first and only message of a conversation the supervisor
/// opens; the vault ends the conversation once it has acted on it. `.configure` comes first,
/// then `.nurseryLink`, then one `.workerLink` per worker. The session requests (for
/// `cloister ctl`) are answered with `VaultToSupervisor` before the end.
public enum SupervisorToVault: LinkMessage {
    /// The credential clients must present (ttyd's AuthToken form), or nil to let everyone in.
    case configure(credential: [UInt8]?)
    /// Instead of one credential: web users whose passwords are checked against their hashes
    /// (`WebUsers`); replaces any credential, as `.configure` replaces any users.
    case configureUsers(WebUsers)
    /// With the vault's end of its transport to the nursery (`Link.vaultNursery`).
    case nurseryLink
    /// With `--record`: the vault's end of a feed to the running recorder
    /// (`Link.vaultRecorder`), replacing any before it; the vault announces every session it
    /// has on it, then feeds each.
    case recorderFeed
    /// With the vault's end of a transport to worker `worker` (`Link.workerVault`).
    case workerLink(worker: UInt32)
    /// Every session, as `VaultToSupervisor.sessions` pages.
    case listSessions
    /// End one client's attachment (or, without one, every client's); the session lingers.
    case kick(session: String, client: UInt32?)
    /// End a session: its terminal is closed, the shell gets SIGHUP.
    case hangUp(session: String)
    /// How many clients are attached now, and how many ever were (`--once`, `--exit-no-clients`).
    case attachmentCount
    /// A session a vault before this one kept (`VaultToSupervisor.keep`), with its PTY master
    /// and its kept ring: the vault takes it over. Sent after `.nurseryLink`, before any
    /// `.workerLink`.
    case adopt(session: String, shell: Int32)

    enum Kind: UInt8 {
        case configure = 0x4b, nurseryLink = 0x4e, workerLink = 0x57, listSessions = 0x6c, kick = 0x6b, hangUp = 0x68
        case attachmentCount = 0x61, configureUsers = 0x55, adopt = 0x64, recorderFeed = 0x52
    }

    public var encoded: [UInt8] {
        switch self {
        case .configure(let credential):
            var w = FieldWriter(kind: Kind.configure.rawValue)
            w.rest([credential == nil ? 0 : 1] + (credential ?? []))
            return w.bytes
        case .configureUsers(let users):
            var w = FieldWriter(kind: Kind.configureUsers.rawValue)
            w.long(users.encoded)
            return w.bytes
        case .nurseryLink: return [Kind.nurseryLink.rawValue]
        case .recorderFeed: return [Kind.recorderFeed.rawValue]
        case .attachmentCount: return [Kind.attachmentCount.rawValue]
        case .workerLink(let worker):
            var w = FieldWriter(kind: Kind.workerLink.rawValue)
            w.u32(worker)
            return w.bytes
        case .listSessions: return [Kind.listSessions.rawValue]
        case .kick(let session, let client):
            var w = FieldWriter(kind: Kind.kick.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            if let client { w.u32(client) }
            return w.bytes
        case .hangUp(let session):
            var w = FieldWriter(kind: Kind.hangUp.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            return w.bytes
        case .adopt(let session, let shell):
            var w = FieldWriter(kind: Kind.adopt.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            w.u32(UInt32(bitPattern: shell))
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        switch self {
        case .configure, .configureUsers, .listSessions, .kick, .hangUp, .attachmentCount: return 0
        case .nurseryLink, .workerLink, .recorderFeed: return 1
        case .adopt: return 2
        }
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToVault")
        let kind = r.kind
        switch kind {
        case .configure:
            try Self.expect(0, descriptors, kind: kind)
            switch try r.u8() {
            case 0: self = .configure(credential: nil)
            case 1: self = .configure(credential: try r.rest(limit: LinkLimits.token))
            default: throw r.malformed
            }
        case .configureUsers:
            try Self.expect(0, descriptors, kind: kind)
            let bytes = try r.long(limit: WebUsers.maxBytes)
            guard let users = try? WebUsers.parse(bytes) else { throw r.malformed }
            self = .configureUsers(users)
        case .nurseryLink:
            try Self.expect(1, descriptors, kind: kind)
            self = .nurseryLink
        case .recorderFeed:
            try Self.expect(1, descriptors, kind: kind)
            self = .recorderFeed
        case .workerLink:
            try Self.expect(1, descriptors, kind: kind)
            self = .workerLink(worker: try r.u32())
        case .listSessions:
            try Self.expect(0, descriptors, kind: kind)
            self = .listSessions
        case .kick:
            try Self.expect(0, descriptors, kind: kind)
            let session = try r.shortText(limit: LinkLimits.sessionField)
            self = .kick(session: session, client: r.atEnd ? nil : try r.u32())
        case .hangUp:
            try Self.expect(0, descriptors, kind: kind)
            self = .hangUp(session: try r.shortText(limit: LinkLimits.sessionField))
        case .attachmentCount:
            try Self.expect(0, descriptors, kind: kind)
            self = .attachmentCount
        case .adopt:
            try Self.expect(2, descriptors, kind: kind)
            self = .adopt(session: try r.shortText(limit: LinkLimits.sessionField), shell: Int32(bitPattern: try r.u32()))
        }
        try r.done()
    }
}

/// What `cloister ctl sessions` shows of one session. No secret ever travels here.
public struct SessionSummary: Sendable, Equatable {
    public struct Client: Sendable, Equatable {
        public var client: UInt32
        public var worker: UInt32
        public var writer: Bool
        /// Output bytes the session has and this client has not been sent yet.
        public var lag: UInt64

        public init(client: UInt32, worker: UInt32, writer: Bool, lag: UInt64) {
            (self.client, self.worker, self.writer, self.lag) = (client, worker, writer, lag)
        }
    }

    public var id: String
    public var shell: Int32
    public var ageSeconds: UInt32
    public var bytesOut: UInt64
    public var ringHeld: UInt32
    public var ringCapacity: UInt32
    public var slowConsumerEvents: UInt32
    public var ignored: UInt32
    /// How many vaults took the session over from one that ended.
    public var adoptions: UInt32
    public var clients: [Client]

    public init(id: String, shell: Int32, ageSeconds: UInt32, bytesOut: UInt64, ringHeld: UInt32, ringCapacity: UInt32,
                slowConsumerEvents: UInt32, ignored: UInt32, adoptions: UInt32 = 0, clients: [Client]) {
        (self.id, self.shell, self.ageSeconds, self.bytesOut, self.ringHeld, self.ringCapacity) = (id, shell, ageSeconds, bytesOut, ringHeld, ringCapacity)
        (self.slowConsumerEvents, self.ignored, self.adoptions, self.clients) = (slowConsumerEvents, ignored, adoptions, clients)
    }
}

/// Vault → supervisor: the answers to the session requests, and, each on a conversation the
/// vault opens, what the supervisor keeps for the vault after it (answered by the end).
public enum VaultToSupervisor: LinkMessage {
    /// With a new session's PTY master and kept ring, which the supervisor holds (never reads
    /// or maps) until `.release`, and gives to the next vault as `.adopt` if this one ends.
    case keep(session: String, shell: Int32)
    /// The session is over: the supervisor closes its copies (sent before the vault closes
    /// its own to hang the terminal up).
    case release(session: String)
    /// A page of sessions; more pages may follow until the vault ends the conversation.
    case sessions([SessionSummary])
    /// Whether the session (and client) named existed.
    case done(found: Bool)
    /// Clients attached now, and attachments started since the vault started.
    case attachments(current: UInt32, started: UInt64)
    /// A fact the vault vouches for (a credential checked, a session's life), for the audit
    /// trail, each on a conversation of its own.
    case audit(AuditRecord)

    /// Sessions per page, so that a page stays well within a message.
    public static let pageSize = 200

    enum Kind: UInt8 { case sessions = 0x73, done = 0x64, attachments = 0x41, keep = 0x4b, release = 0x52, audit = 0x75 }

    public var encoded: [UInt8] {
        switch self {
        case .audit(let record):
            var w = FieldWriter(kind: Kind.audit.rawValue)
            record.write(to: &w)
            return w.bytes
        case .sessions(let list):
            var w = FieldWriter(kind: Kind.sessions.rawValue)
            w.u16(UInt16(list.count))
            for s in list {
                w.short(Array(s.id.utf8.prefix(LinkLimits.sessionField)))
                w.u32(UInt32(bitPattern: s.shell))
                w.u32(s.ageSeconds)
                w.u64(s.bytesOut)
                w.u32(s.ringHeld)
                w.u32(s.ringCapacity)
                w.u32(s.slowConsumerEvents)
                w.u32(s.ignored)
                w.u32(s.adoptions)
                w.u16(UInt16(min(s.clients.count, Int(UInt16.max))))
                for c in s.clients.prefix(Int(UInt16.max)) {
                    w.u32(c.client)
                    w.u32(c.worker)
                    w.rest([c.writer ? 1 : 0])
                    w.u64(c.lag)
                }
            }
            return w.bytes
        case .done(let found): return [Kind.done.rawValue, found ? 1 : 0]
        case .attachments(let current, let started):
            var w = FieldWriter(kind: Kind.attachments.rawValue)
            w.u32(current)
            w.u64(started)
            return w.bytes
        case .keep(let session, let shell):
            var w = FieldWriter(kind: Kind.keep.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            w.u32(UInt32(bitPattern: shell))
            return w.bytes
        case .release(let session):
            var w = FieldWriter(kind: Kind.release.rawValue)
            w.short(Array(session.utf8.prefix(LinkLimits.sessionField)))
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        if case .keep = self { return 2 }
        return 0
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "VaultToSupervisor")
        let kind = r.kind
        try Self.expect(kind == .keep ? 2 : 0, descriptors, kind: kind)
        switch kind {
        case .keep:
            self = .keep(session: try r.shortText(limit: LinkLimits.sessionField), shell: Int32(bitPattern: try r.u32()))
        case .release:
            self = .release(session: try r.shortText(limit: LinkLimits.sessionField))
        case .sessions:
            let count = Int(try r.u16())
            guard count <= Self.pageSize else { throw r.malformed }
            var list: [SessionSummary] = []
            for _ in 0..<count {
                let id = try r.shortText(limit: LinkLimits.sessionField)
                let shell = Int32(bitPattern: try r.u32())
                let age = try r.u32(), bytes = try r.u64(), held = try r.u32(), capacity = try r.u32()
                let slow = try r.u32(), ignored = try r.u32(), adoptions = try r.u32()
                var clients: [SessionSummary.Client] = []
                for _ in 0..<Int(try r.u16()) {
                    let client = try r.u32(), worker = try r.u32()
                    let writer = try r.u8()
                    guard writer <= 1 else { throw r.malformed }
                    clients.append(.init(client: client, worker: worker, writer: writer == 1, lag: try r.u64()))
                }
                list.append(SessionSummary(id: id, shell: shell, ageSeconds: age, bytesOut: bytes, ringHeld: held,
                                           ringCapacity: capacity, slowConsumerEvents: slow, ignored: ignored, adoptions: adoptions,
                                           clients: clients))
            }
            self = .sessions(list)
        case .done:
            let found = try r.u8()
            guard found <= 1 else { throw r.malformed }
            self = .done(found: found == 1)
        case .attachments:
            self = .attachments(current: try r.u32(), started: try r.u64())
        case .audit:
            self = .audit(try AuditRecord.read(from: &r))
        }
        try r.done()
    }
}
