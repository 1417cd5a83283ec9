/// What Cloister's processes say to each other on circuits. Every message is a tag byte and
/// a fixed binary layout, so no role needs a general parser for its peers' messages; a
/// malformed one decodes to nil and the receiver ends the conversation.
///
/// Conversations:
/// - supervisor → worker: `.client` (with the client socket), `.vaultLink` (with the worker's
///   end of its transport to the vault). The worker ends the client's conversation when the
///   client has gone, which is how the supervisor counts open connections.
/// - supervisor → vault: `.configure` first, then `.nurseryLink` and one `.workerLink` per
///   worker (each with the vault's end of a transport).
/// - worker → vault, one circuit per attachment: `.attach`, answered by `.accepted` or
///   `.denied`; then `.input`/`.resize`/`.pause`/`.resume` one way and `.output` the other,
///   until `.exited` (the shell ended) or the worker's end (the client left).
///   A `.check` conversation asks whether a credential is valid (HTTP basic auth) and is
///   answered by `.accepted` or `.denied`.
/// - vault → nursery, one circuit per shell: `.spawn`, answered by `.spawned` (with the PTY
///   master) or `.denied`; `.exited` when the shell has been reaped.
public enum RoleMessage: Equatable, Sendable {
    case client
    case vaultLink(worker: UInt32)
    case configure(credential: [UInt8]?)
    case nurseryLink
    case workerLink(worker: UInt32)
    case attach(columns: UInt16, rows: UInt16, token: [UInt8])
    case check(token: [UInt8])
    case accepted(title: String)
    case denied(reason: String)
    case input([UInt8])
    case output([UInt8])
    case resize(columns: UInt16, rows: UInt16)
    case pause
    case resume
    case exited(Exit)
    case spawn(columns: UInt16, rows: UInt16)
    case spawned(pid: Int32)

    /// How a shell ended, as wait(2) tells it.
    public enum Exit: Equatable, Sendable, CustomStringConvertible {
        case status(Int32)
        case signal(Int32)
        public var description: String {
            switch self {
            case .status(let code): return "exit status \(code)"
            case .signal(let signal): return "signal \(signal)"
            }
        }
    }

    private enum Tag: UInt8 {
        case client = 0x63, vaultLink = 0x4c, configure = 0x4b, nurseryLink = 0x4e, workerLink = 0x57
        case attach = 0x41, check = 0x43, accepted = 0x59, denied = 0x44
        case input = 0x69, output = 0x6f, resize = 0x72, pause = 0x70, resume = 0x71
        case exited = 0x78, spawn = 0x53, spawned = 0x50
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        func u16(_ v: UInt16) { out += [UInt8(v >> 8), UInt8(v & 0xff)] }
        func u32(_ v: UInt32) { out += [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
        switch self {
        case .client: out = [Tag.client.rawValue]
        case .vaultLink(let worker): out = [Tag.vaultLink.rawValue]; u32(worker)
        case .configure(let credential):
            out = [Tag.configure.rawValue, credential == nil ? 0 : 1] + (credential ?? [])
        case .nurseryLink: out = [Tag.nurseryLink.rawValue]
        case .workerLink(let worker): out = [Tag.workerLink.rawValue]; u32(worker)
        case .attach(let columns, let rows, let token):
            out = [Tag.attach.rawValue]; u16(columns); u16(rows); out += token
        case .check(let token): out = [Tag.check.rawValue] + token
        case .accepted(let title): out = [Tag.accepted.rawValue] + Array(title.utf8)
        case .denied(let reason): out = [Tag.denied.rawValue] + Array(reason.utf8)
        case .input(let bytes): out = [Tag.input.rawValue] + bytes
        case .output(let bytes): out = [Tag.output.rawValue] + bytes
        case .resize(let columns, let rows): out = [Tag.resize.rawValue]; u16(columns); u16(rows)
        case .pause: out = [Tag.pause.rawValue]
        case .resume: out = [Tag.resume.rawValue]
        case .exited(let exit):
            switch exit {
            case .status(let code): out = [Tag.exited.rawValue, 0]; u32(UInt32(bitPattern: code))
            case .signal(let signal): out = [Tag.exited.rawValue, 1]; u32(UInt32(bitPattern: signal))
            }
        case .spawn(let columns, let rows): out = [Tag.spawn.rawValue]; u16(columns); u16(rows)
        case .spawned(let pid): out = [Tag.spawned.rawValue]; u32(UInt32(bitPattern: pid))
        }
        return out
    }

    /// Output is the bulk of all traffic: encoded without building the enum.
    public static func encodeOutput(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: Tag.output.rawValue, count: bytes.count + 1)
        out.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[1...]).copyMemory(from: bytes) }
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        guard let first = bytes.first, let tag = Tag(rawValue: first) else { return nil }
        let body = bytes[1...]
        func u16(_ at: Int) -> UInt16 { UInt16(body[body.startIndex + at]) << 8 | UInt16(body[body.startIndex + at + 1]) }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) << 16 | UInt32(u16(at + 2)) }
        func text() -> String? { String(validating: body, as: UTF8.self) }
        switch tag {
        case .client: guard body.isEmpty else { return nil }; self = .client
        case .vaultLink: guard body.count == 4 else { return nil }; self = .vaultLink(worker: u32(0))
        case .configure:
            guard let flag = body.first, flag <= 1 else { return nil }
            self = .configure(credential: flag == 1 ? Array(body.dropFirst()) : nil)
        case .nurseryLink: guard body.isEmpty else { return nil }; self = .nurseryLink
        case .workerLink: guard body.count == 4 else { return nil }; self = .workerLink(worker: u32(0))
        case .attach:
            guard body.count >= 4 else { return nil }
            self = .attach(columns: u16(0), rows: u16(2), token: Array(body.dropFirst(4)))
        case .check: self = .check(token: Array(body))
        case .accepted: guard let t = text() else { return nil }; self = .accepted(title: t)
        case .denied: guard let t = text() else { return nil }; self = .denied(reason: t)
        case .input: self = .input(Array(body))
        case .output: self = .output(Array(body))
        case .resize: guard body.count == 4 else { return nil }; self = .resize(columns: u16(0), rows: u16(2))
        case .pause: guard body.isEmpty else { return nil }; self = .pause
        case .resume: guard body.isEmpty else { return nil }; self = .resume
        case .exited:
            guard body.count == 5, body.first! <= 1 else { return nil }
            let value = Int32(bitPattern: u32(1))
            self = .exited(body.first! == 0 ? .status(value) : .signal(value))
        case .spawn: guard body.count == 4 else { return nil }; self = .spawn(columns: u16(0), rows: u16(2))
        case .spawned: guard body.count == 4 else { return nil }; self = .spawned(pid: Int32(bitPattern: u32(0)))
        }
    }
}

/// Intents named in the circuits handshake of each kind of transport.
public enum RoleIntent {
    public static let supervisorWorker = "cloister.supervisor-worker/1"
    public static let supervisorVault = "cloister.supervisor-vault/1"
    public static let workerVault = "cloister.worker-vault/1"
    public static let vaultNursery = "cloister.vault-nursery/1"
}
