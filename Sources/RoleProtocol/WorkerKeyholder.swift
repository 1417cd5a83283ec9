/// Worker → keyholder, on `Link.workerKeyholder`: one conversation per signature, which
/// the keyholder answers with `KeyholderToWorker` and ends.
public enum WorkerToKeyholder: LinkMessage {
    /// Sign `data` (as TLS gives it, not hashed) with the TLS signature scheme `scheme`.
    case sign(scheme: UInt16, data: [UInt8])

    enum Kind: UInt8 { case sign = 0x53 }

    public var encoded: [UInt8] {
        switch self {
        case .sign(let scheme, let data):
            var w = FieldWriter(kind: Kind.sign.rawValue)
            w.u16(scheme)
            w.rest(data)
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "WorkerToKeyholder")
        try Self.expect(0, descriptors, kind: r.kind)
        switch r.kind {
        case .sign:
            let scheme = try r.u16()
            let data = try r.rest(limit: LinkLimits.signedData)
            guard !data.isEmpty else { throw r.malformed }
            self = .sign(scheme: scheme, data: data)
        }
        try r.done()
    }
}

/// Keyholder → worker: the signature, or why there is none.
public enum KeyholderToWorker: LinkMessage {
    case signature([UInt8])
    case refused(String)

    enum Kind: UInt8 { case signature = 0x73, refused = 0x72 }

    public var encoded: [UInt8] {
        switch self {
        case .signature(let bytes):
            var w = FieldWriter(kind: Kind.signature.rawValue)
            w.rest(bytes)
            return w.bytes
        case .refused(let reason):
            var w = FieldWriter(kind: Kind.refused.rawValue)
            w.text(reason)
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "KeyholderToWorker")
        try Self.expect(0, descriptors, kind: r.kind)
        switch r.kind {
        case .signature: self = .signature(try r.rest(limit: LinkLimits.signature))
        case .refused: self = .refused(try r.text())
        }
        try r.done()
    }
}

/// Supervisor → keyholder, each the first message of a conversation the supervisor opens.
/// `.workerLink` is ended by the keyholder once it serves the link; `.counts` is answered
/// with `KeyholderToSupervisor.counts` and ended.
public enum SupervisorToKeyholder: LinkMessage {
    /// With the keyholder's end of a transport to worker `worker` (`Link.workerKeyholder`).
    case workerLink(worker: UInt32)
    /// The signatures made and refused, per worker.
    case counts

    enum Kind: UInt8 { case workerLink = 0x57, counts = 0x63 }

    public var encoded: [UInt8] {
        switch self {
        case .workerLink(let worker):
            var w = FieldWriter(kind: Kind.workerLink.rawValue)
            w.u32(worker)
            return w.bytes
        case .counts: return [Kind.counts.rawValue]
        }
    }

    public var descriptorCount: Int {
        switch self {
        case .workerLink: return 1
        case .counts: return 0
        }
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToKeyholder")
        switch r.kind {
        case .workerLink:
            try Self.expect(1, descriptors, kind: r.kind)
            self = .workerLink(worker: try r.u32())
        case .counts:
            try Self.expect(0, descriptors, kind: r.kind)
            self = .counts
        }
        try r.done()
    }
}

/// Keyholder → supervisor.
public enum KeyholderToSupervisor: LinkMessage {
    public struct Count: Sendable, Equatable {
        public var worker: UInt32
        public var signed: UInt64
        public var refused: UInt64
        public init(worker: UInt32, signed: UInt64, refused: UInt64) {
            (self.worker, self.signed, self.refused) = (worker, signed, refused)
        }
    }

    /// Per worker linked now, at most `LinkLimits.countedWorkers` of them.
    case counts([Count])

    enum Kind: UInt8 { case counts = 0x43 }

    public var encoded: [UInt8] {
        switch self {
        case .counts(let counts):
            var w = FieldWriter(kind: Kind.counts.rawValue)
            for c in counts.prefix(LinkLimits.countedWorkers) {
                w.u32(c.worker)
                w.u64(c.signed)
                w.u64(c.refused)
            }
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "KeyholderToSupervisor")
        try Self.expect(0, descriptors, kind: r.kind)
        switch r.kind {
        case .counts:
            let body = try r.rest(limit: LinkLimits.countedWorkers * 20)
            guard body.count % 20 == 0 else { throw r.malformed }
            var counts: [Count] = []
            var fields = FieldReader<Kind>([Kind.counts.rawValue] + body, kind: .counts)
            for _ in 0..<(body.count / 20) {
                counts.append(Count(worker: try fields.u32(), signed: try fields.u64(), refused: try fields.u64()))
            }
            self = .counts(counts)
        }
        try r.done()
    }
}
