/// Supervisor → worker, each the first and only message of a conversation the supervisor
/// opens. The worker ends the conversation when it is done with it: for `.client`, when the
/// client has gone, which is how the supervisor counts a worker's open connections.
public enum SupervisorToWorker: LinkMessage {
    /// With an accepted client socket, TLS when its listener is marked so. `newSessions`
    /// false while the server drains: the client may resume or join a session, and a request
    /// for a new one is refused (a balancer then asks another host). `trustedProxy`: the
    /// connection comes from an address given as `--trusted-proxy`, whose `X-Forwarded-For`
    /// names the client.
    case client(tls: Bool, newSessions: Bool, trustedProxy: Bool = false)
    /// With the worker's end of its transport to the vault (`Link.workerVault`).
    case vaultLink(worker: UInt32)
    /// With the worker's end of its transport to the keyholder (`Link.workerKeyholder`) and a
    /// sealed memory file holding the certificate chain (PEM) the keyholder's key belongs to,
    /// whose type is `keyKind` (`SigningKey.Kind`): the worker serves TLS with both from now on.
    case keyholderLink(worker: UInt32, keyKind: UInt8)

    enum Kind: UInt8 { case client = 0x63, vaultLink = 0x4c, tlsClient = 0x74, keyholderLink = 0x6b }

    public var encoded: [UInt8] {
        switch self {
        case .client(let tls, let newSessions, let trustedProxy):
            return [tls ? Kind.tlsClient.rawValue : Kind.client.rawValue, (newSessions ? 1 : 0) | (trustedProxy ? 2 : 0)]
        case .vaultLink(let worker):
            var w = FieldWriter(kind: Kind.vaultLink.rawValue)
            w.u32(worker)
            return w.bytes
        case .keyholderLink(let worker, let keyKind):
            var w = FieldWriter(kind: Kind.keyholderLink.rawValue)
            w.u32(worker)
            w.rest([keyKind])
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        if case .keyholderLink = self { return 2 }
        return 1
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToWorker")
        let kind = r.kind
        try Self.expect(kind == .keyholderLink ? 2 : 1, descriptors, kind: kind)
        switch kind {
        case .client, .tlsClient:
            let flags = try r.u8()
            guard flags & ~3 == 0 else { throw r.malformed }
            self = .client(tls: kind == .tlsClient, newSessions: flags & 1 != 0, trustedProxy: flags & 2 != 0)
        case .vaultLink: self = .vaultLink(worker: try r.u32())
        case .keyholderLink: self = .keyholderLink(worker: try r.u32(), keyKind: try r.u8())
        }
        try r.done()
    }
}

/// Worker → supervisor, on a `.client` conversation before the worker ends
/// it: what the supervisor needs to count the connection for admission (`Admission`).
public enum WorkerToSupervisor: LinkMessage, Equatable {
    /// The vault accepted the client's credential: it is no longer an unauthenticated
    /// connection.
    case authenticated

    enum Kind: UInt8 { case authenticated = 0x61 }

    public var encoded: [UInt8] { [Kind.authenticated.rawValue] }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "WorkerToSupervisor")
        try Self.expect(0, descriptors, kind: r.kind)
        self = .authenticated
        try r.done()
    }
}
