/// Supervisor → template (`Link.supervisorTemplate`): a plain SOCK_SEQPACKET socket, one
/// message a packet, no circuits (the template stays single-threaded, so it runs no
/// transport). Each request is answered with `TemplateToSupervisor.forked` before the next.
public enum SupervisorToTemplate: LinkMessage, Equatable {
    /// Fork a worker, with the worker's ends of its transport and of its listener hand-off.
    case fork

    enum Kind: UInt8 { case fork = 0x66 }

    public var encoded: [UInt8] { [Kind.fork.rawValue] }
    public var descriptorCount: Int { 2 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToTemplate")
        try Self.expect(2, descriptors, kind: r.kind)
        self = .fork
        try r.done()
    }
}

/// Template → supervisor.
public enum TemplateToSupervisor: LinkMessage, Equatable {
    /// The first message: the link's intent and the template's build, as a circuits handshake
    /// names them, so that a socket connected to anything else fails loudly.
    case hello(intent: String, build: String)
    /// The worker forked for the last request: its pid, with a pidfd of it.
    case forked(pid: UInt32)
    /// A worker the template forked has ended and was reaped: its wait status.
    case exited(pid: UInt32, waitStatus: UInt32)

    enum Kind: UInt8 { case hello = 0x68, forked = 0x46, exited = 0x58 }

    public var encoded: [UInt8] {
        switch self {
        case .hello(let intent, let build):
            var w = FieldWriter(kind: Kind.hello.rawValue)
            w.hello(intent: intent, build: build)
            return w.bytes
        case .forked(let pid):
            var w = FieldWriter(kind: Kind.forked.rawValue)
            w.u32(pid)
            return w.bytes
        case .exited(let pid, let status):
            var w = FieldWriter(kind: Kind.exited.rawValue)
            w.u32(pid)
            w.u32(status)
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        if case .forked = self { return 1 }
        return 0
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "TemplateToSupervisor")
        let kind = r.kind
        try Self.expect(kind == .forked ? 1 : 0, descriptors, kind: kind)
        switch kind {
        case .hello:
            let (intent, build) = try r.hello()
            self = .hello(intent: intent, build: build)
        case .forked: self = .forked(pid: try r.u32())
        case .exited: self = .exited(pid: try r.u32(), waitStatus: try r.u32())
        }
        try r.done()
    }
}
