/// Supervisor → worker, each the first and only message of a conversation the supervisor
/// opens. The worker ends the conversation when it is done with it: for `.client`, when the
/// client has gone, which is how the supervisor counts a worker's open connections.
public enum SupervisorToWorker: LinkMessage {
    /// With the accepted client socket.
    case client
    /// With the worker's end of its transport to the vault (`Link.workerVault`).
    case vaultLink(worker: UInt32)

    enum Kind: UInt8 { case client = 0x63, vaultLink = 0x4c }

    public var encoded: [UInt8] {
        switch self {
        case .client: return [Kind.client.rawValue]
        case .vaultLink(let worker):
            var w = FieldWriter(kind: Kind.vaultLink.rawValue)
            w.u32(worker)
            return w.bytes
        }
    }

    public var descriptorCount: Int { 1 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToWorker")
        let kind = r.kind
        try Self.expect(1, descriptors, kind: kind)
        switch kind {
        case .client: self = .client
        case .vaultLink: self = .vaultLink(worker: try r.u32())
        }
        try r.done()
    }
}
