/// One audited fact: what happened, and its fields as ordered names and values. A role that
/// vouches for a fact sends it to the supervisor, which writes the audit trail; the record's
/// layout is fixed (a kind byte, then at most `maxFields` short name/value pairs), so the
/// supervisor needs no general parser for it, and which role vouches is decided by the link
/// the record came on, never by the record.
public struct AuditRecord: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        case credentialAccepted = 1, credentialRefused, sessionStarted, attached, detached, sessionEnded
        case control, violation, roleRestarted, refusalsSummarised
        case recordingStarted, recordingCheckpoint, recordingGap, recordingEnded, recordingDeleted, fileTransfer

        /// The event's name in the trail.
        public var description: String {
            switch self {
            case .credentialAccepted: return "credential.accepted"
            case .credentialRefused: return "credential.refused"
            case .sessionStarted: return "session.started"
            case .attached: return "session.attached"
            case .detached: return "session.detached"
            case .sessionEnded: return "session.ended"
            case .control: return "control.action"
            case .violation: return "sandbox.violation"
            case .roleRestarted: return "role.restarted"
            case .refusalsSummarised: return "credential.refused.repeated"
            case .recordingStarted: return "recording.started"
            case .recordingCheckpoint: return "recording.checkpoint"
            case .recordingGap: return "recording.gap"
            case .recordingEnded: return "recording.ended"
            case .recordingDeleted: return "recording.deleted"
            case .fileTransfer: return "file.transfer"
            }
        }
    }

    public static let maxFields = 16
    /// A field's name: lower-case ASCII letters and underscores.
    public static let maxName = 32
    public static let maxValue = 255

    public var kind: Kind
    public var fields: [(name: String, value: String)]

    /// Values longer than `maxValue` bytes are cut (at a character boundary); fields past
    /// `maxFields` are dropped.
    public init(_ kind: Kind, _ fields: [(String, String)]) {
        self.kind = kind
        self.fields = fields.prefix(Self.maxFields).map { (name: $0.0, value: Self.cut($0.1)) }
    }

    public subscript(name: String) -> String? { fields.first { $0.name == name }?.value }

    public static func == (a: AuditRecord, b: AuditRecord) -> Bool {
        a.kind == b.kind && a.fields.elementsEqual(b.fields) { $0.name == $1.name && $0.value == $1.value }
    }

    static func cut(_ value: String) -> String {
        guard value.utf8.count > maxValue else { return value }
        var out = ""
        for c in value where out.utf8.count + c.utf8.count <= maxValue { out.append(c) }
        return out
    }

    static func isName(_ bytes: [UInt8]) -> Bool {
        (1...maxName).contains(bytes.count) && bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x5f }
    }

    func write(to w: inout FieldWriter) {
        w.rest([kind.rawValue, UInt8(fields.count)])
        for field in fields {
            w.short(Array(field.name.utf8.prefix(Self.maxName)))
            w.short(Array(field.value.utf8.prefix(Self.maxValue)))
        }
    }

    static func read<K>(from r: inout FieldReader<K>) throws(LinkMessageError) -> AuditRecord {
        guard let kind = Kind(rawValue: try r.u8()) else { throw r.malformed }
        let count = Int(try r.u8())
        guard count <= maxFields else { throw r.malformed }
        var fields: [(String, String)] = []
        for _ in 0..<count {
            let name = try r.short(limit: maxName)
            guard isName(name) else { throw r.malformed }
            fields.append((String(decoding: name, as: UTF8.self), try r.shortText(limit: maxValue)))
        }
        return AuditRecord(kind, fields)
    }
}
