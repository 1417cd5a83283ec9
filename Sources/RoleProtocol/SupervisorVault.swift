/// Supervisor → vault, each the first and only message of a conversation the supervisor
/// opens; the vault ends the conversation once it has acted on it. `.configure` comes first,
/// then `.nurseryLink`, then one `.workerLink` per worker.
public enum SupervisorToVault: LinkMessage {
    /// The credential clients must present (ttyd's AuthToken form), or nil to let everyone in.
    case configure(credential: [UInt8]?)
    /// With the vault's end of its transport to the nursery (`Link.vaultNursery`).
    case nurseryLink
    /// With the vault's end of a transport to worker `worker` (`Link.workerVault`).
    case workerLink(worker: UInt32)

    enum Kind: UInt8 { case configure = 0x4b, nurseryLink = 0x4e, workerLink = 0x57 }

    public var encoded: [UInt8] {
        switch self {
        case .configure(let credential):
            var w = FieldWriter(kind: Kind.configure.rawValue)
            w.rest([credential == nil ? 0 : 1] + (credential ?? []))
            return w.bytes
        case .nurseryLink: return [Kind.nurseryLink.rawValue]
        case .workerLink(let worker):
            var w = FieldWriter(kind: Kind.workerLink.rawValue)
            w.u32(worker)
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        switch self {
        case .configure: return 0
        case .nurseryLink, .workerLink: return 1
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
        case .nurseryLink:
            try Self.expect(1, descriptors, kind: kind)
            self = .nurseryLink
        case .workerLink:
            try Self.expect(1, descriptors, kind: kind)
            self = .workerLink(worker: try r.u32())
        }
        try r.done()
    }
}
