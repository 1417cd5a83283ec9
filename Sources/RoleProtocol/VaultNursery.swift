/// Vault → nursery, each the first and only message of a conversation the vault opens.
public enum VaultToNursery: LinkMessage {
    /// Start the command on a new PTY of this size, with `arguments` appended (ttyd's
    /// --url-arg; the vault passes them only when the operator allowed them), and `user`,
    /// the web user a reverse proxy named (ttyd's --auth-header), in its environment.
    /// With `stateBytes`, also a memory file of that size, its size sealed, for the session's
    /// kept state (the vault's ring), so that the sandboxed vault never creates or sizes a
    /// file. Answered by `NurseryToVault.spawned` or `.failed`.
    case spawn(columns: UInt16, rows: UInt16, arguments: [[UInt8]] = [], user: [UInt8]? = nil, stateBytes: UInt32 = 0)
    /// A session ended: send `signal` to the process group of the shell `pid` (ttyd's
    /// --signal; SIGHUP comes from the terminal itself). The nursery signals only shells it
    /// started and has not reaped. Answered by the conversation's end.
    case signal(pid: Int32, signal: Int32)

    enum Kind: UInt8 { case spawn = 0x53, signal = 0x6b }

    public var encoded: [UInt8] {
        switch self {
        case .spawn(let columns, let rows, let arguments, let user, let stateBytes):
            var w = FieldWriter(kind: Kind.spawn.rawValue)
            w.u16(columns)
            w.u16(rows)
            w.rest([(arguments.isEmpty ? 0 : 1) | (user == nil ? 0 : 2) | (stateBytes == 0 ? 0 : 4)])
            if !arguments.isEmpty { w.commandArguments(arguments) }
            if let user { w.short(user) }
            if stateBytes != 0 { w.u32(stateBytes) }
            return w.bytes
        case .signal(let pid, let signal):
            var w = FieldWriter(kind: Kind.signal.rawValue)
            w.u32(UInt32(bitPattern: pid))
            w.rest([UInt8(clamping: signal)])
            return w.bytes
        }
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "VaultToNursery")
        let kind = r.kind
        try Self.expect(0, descriptors, kind: kind)
        switch kind {
        case .spawn:
            let columns = try r.u16(), rows = try r.u16()
            let flags = try r.u8()
            guard flags & ~7 == 0 else { throw r.malformed }
            let arguments = flags & 1 != 0 ? try r.commandArguments() : []
            var user: [UInt8]?
            if flags & 2 != 0 {
                let name = try r.short(limit: LinkLimits.userName)
                guard !name.isEmpty, !name.contains(0) else { throw r.malformed }
                user = name
            }
            let stateBytes = flags & 4 != 0 ? try r.u32() : 0
            guard flags & 4 == 0 || (1...LinkLimits.keptStateBytes).contains(Int(stateBytes)) else { throw r.malformed }
            self = .spawn(columns: columns, rows: rows, arguments: arguments, user: user, stateBytes: stateBytes)
        case .signal:
            let pid = Int32(bitPattern: try r.u32())
            let signal = Int32(try r.u8())
            guard pid > 1, (1...64).contains(signal) else { throw r.malformed }
            self = .signal(pid: pid, signal: signal)
        }
        try r.done()
    }
}

/// Nursery → vault: the answer to a spawn (`.spawned` with the PTY master, and the state
/// file when one was asked for; or `.failed`),
/// each ending its conversation; and, on a conversation of the nursery's own, `.exited` once
/// a shell has been reaped.
public enum NurseryToVault: LinkMessage {
    case spawned(pid: Int32, withState: Bool = false)
    case failed(reason: String)
    case exited(pid: Int32, Exit)

    enum Kind: UInt8 { case spawned = 0x50, failed = 0x46, exited = 0x78 }

    public var encoded: [UInt8] {
        switch self {
        case .spawned(let pid, _):
            var w = FieldWriter(kind: Kind.spawned.rawValue)
            w.u32(UInt32(bitPattern: pid))
            return w.bytes
        case .failed(let reason):
            var w = FieldWriter(kind: Kind.failed.rawValue)
            w.text(reason)
            return w.bytes
        case .exited(let pid, let exit):
            var w = FieldWriter(kind: Kind.exited.rawValue)
            w.u32(UInt32(bitPattern: pid))
            w.exit(exit)
            return w.bytes
        }
    }

    public var descriptorCount: Int {
        if case .spawned(_, let withState) = self { return withState ? 2 : 1 }
        return 0
    }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "NurseryToVault")
        let kind = r.kind
        switch kind {
        case .spawned:
            if descriptors != 2 { try Self.expect(1, descriptors, kind: kind) }
            self = .spawned(pid: Int32(bitPattern: try r.u32()), withState: descriptors == 2)
        case .failed:
            try Self.expect(0, descriptors, kind: kind)
            self = .failed(reason: try r.text())
        case .exited:
            try Self.expect(0, descriptors, kind: kind)
            let pid = Int32(bitPattern: try r.u32())
            self = .exited(pid: pid, try Self.decodeExit(&r))
        }
        try r.done()
    }
}
