/// Supervisor → nursery, each the first and only message of a conversation the supervisor
/// opens, answered by the end. A spawned nursery outlives the vaults it serves: each new vault
/// gets a new link to the same nursery, which keeps its shells, reaps them and reports their
/// ends to whichever vault is linked. A nursery that died leaves its shells to the supervisor
/// (a subreaper, so it becomes their parent): the next nursery is given them to signal, and
/// told of their ends, which the supervisor reaps.
public enum SupervisorToNursery: LinkMessage {
    /// With the nursery's end of a transport to a new vault (`Link.vaultNursery`).
    case vaultLink
    /// A shell an earlier nursery started, with a pidfd of it: the vault may have it
    /// signalled.
    case adoptShell(pid: Int32)
    /// An adopted shell ended (the supervisor reaped it): the vault is told.
    case shellEnded(pid: Int32, Exit)

    enum Kind: UInt8 { case vaultLink = 0x56, adoptShell = 0x61, shellEnded = 0x65 }

    public var encoded: [UInt8] {
        switch self {
        case .vaultLink: return [Kind.vaultLink.rawValue]
        case .adoptShell(let pid):
            var w = FieldWriter(kind: Kind.adoptShell.rawValue)
            w.u32(UInt32(bitPattern: pid))
            return w.bytes
        case .shellEnded(let pid, let exit):
            var w = FieldWriter(kind: Kind.shellEnded.rawValue)
            w.u32(UInt32(bitPattern: pid))
            w.exit(exit)
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        if case .shellEnded = self { return 0 }
        return 1
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "SupervisorToNursery")
        let kind = r.kind
        switch kind {
        case .vaultLink:
            try Self.expect(1, descriptors, kind: kind)
            self = .vaultLink
        case .adoptShell:
            try Self.expect(1, descriptors, kind: kind)
            self = .adoptShell(pid: Int32(bitPattern: try r.u32()))
        case .shellEnded:
            try Self.expect(0, descriptors, kind: kind)
            let pid = Int32(bitPattern: try r.u32())
            self = .shellEnded(pid: pid, try Self.decodeExit(&r))
        }
        try r.done()
    }
}
