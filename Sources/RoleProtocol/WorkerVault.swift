/// Worker → vault. An attachment is one circuit the worker opens: `.attach` first, answered
/// by `VaultToWorker.accepted` or `.refused`; then input, resizes and pause/resume one way
/// and output the other, until the shell exits (`.exited`) or the worker ends the
/// conversation (the client left). A `.check` conversation asks whether a credential is
/// valid (HTTP basic auth) and is answered by `.accepted` or `.refused`.
public enum WorkerToVault: LinkMessage {
    case check(token: [UInt8])
    case attach(columns: UInt16, rows: UInt16, token: [UInt8])
    case input([UInt8])
    case resize(columns: UInt16, rows: UInt16)
    case pause
    case resume

    enum Kind: UInt8 { case check = 0x43, attach = 0x41, input = 0x69, resize = 0x72, pause = 0x70, resume = 0x71 }

    public var encoded: [UInt8] {
        switch self {
        case .check(let token):
            return [Kind.check.rawValue] + token
        case .attach(let columns, let rows, let token):
            var w = FieldWriter(kind: Kind.attach.rawValue)
            w.u16(columns)
            w.u16(rows)
            w.rest(token)
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
            self = .attach(columns: columns, rows: rows, token: try r.rest(limit: LinkLimits.token))
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
    /// The credential is right (and, for an attachment, a shell runs): the window title.
    case accepted(title: String)
    case refused(Refusal)
    case output([UInt8])
    /// The shell ended; the vault's last message of the attachment.
    case exited(Exit)

    /// Why the vault said no. A worker tells its client no more than the case.
    public enum Refusal: UInt8, Sendable, CaseIterable {
        case badCredential = 1
        /// The first message of the conversation was not a check or an attach.
        case malformedRequest = 2
        /// The credential was right, but no terminal could be started.
        case noTerminal = 3
    }

    enum Kind: UInt8 { case accepted = 0x59, refused = 0x44, output = 0x6f, exited = 0x78 }

    public var encoded: [UInt8] {
        switch self {
        case .accepted(let title):
            var w = FieldWriter(kind: Kind.accepted.rawValue)
            w.text(title)
            return w.bytes
        case .refused(let refusal): return [Kind.refused.rawValue, refusal.rawValue]
        case .output(let bytes): return [Kind.output.rawValue] + bytes
        case .exited(let exit): return Self.encode(exit, kind: Kind.exited.rawValue)
        }
    }

    /// Output is the bulk of all traffic: encoded straight from the buffer it was read into.
    public static func encodeOutput(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: Kind.output.rawValue, count: bytes.count + 1)
        out.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[1...]).copyMemory(from: bytes) }
        return out
    }

    public var descriptorCount: Int { 0 }

    public init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError) {
        var r = try FieldReader<Kind>(payload, of: "VaultToWorker")
        let kind = r.kind
        try Self.expect(0, descriptors, kind: kind)
        switch kind {
        case .accepted: self = .accepted(title: try r.text())
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
        switch exit {
        case .status(let code): w.rest([0]); w.u32(UInt32(bitPattern: code))
        case .signal(let signal): w.rest([1]); w.u32(UInt32(bitPattern: signal))
        }
        return w.bytes
    }

    static func decodeExit<Kind>(_ r: inout FieldReader<Kind>) throws(LinkMessageError) -> Exit {
        let how = try r.u8()
        let value = Int32(bitPattern: try r.u32())
        switch how {
        case 0: return .status(value)
        case 1: return .signal(value)
        default: throw r.malformed
        }
    }
}
