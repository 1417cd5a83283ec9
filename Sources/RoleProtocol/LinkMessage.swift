import Circuits
import Logging
import SystemPackage

/// A message of one link in one direction: a kind byte and a fixed binary layout, so no role
/// needs a general parser for what its peers send. Each type decodes only its own kinds, so a
/// message that belongs to another link or direction is refused as unknown.
public protocol LinkMessage: Sendable, Equatable {
    /// The payload on the circuit.
    var encoded: [UInt8] { get }
    /// How many descriptors travel with the message.
    var descriptorCount: Int { get }
    /// Decodes a payload that arrived with `descriptors` descriptors.
    init(decoding payload: [UInt8], descriptors: Int) throws(LinkMessageError)
}

/// Why a payload is not a message of the type it was decoded as.
public enum LinkMessageError: Error, Sendable, Equatable, CustomStringConvertible {
    case empty(type: String)
    case unknownKind(UInt8, type: String)
    /// The body does not have the kind's layout (too short, too long, a bad field).
    case malformed(kind: String, length: Int)
    case oversized(kind: String, length: Int, limit: Int)
    case descriptorCount(kind: String, expected: Int, received: Int)

    public var description: String {
        switch self {
        case .empty(let type): return "empty \(type) message"
        case let .unknownKind(kind, type): return "kind 0x\(String(kind, radix: 16)) is not a \(type) message"
        case let .malformed(kind, length): return "malformed \(kind) message (\(length) bytes)"
        case let .oversized(kind, length, limit): return "\(kind) message of \(length) bytes exceeds \(limit)"
        case let .descriptorCount(kind, expected, received): return "\(kind) message with \(received) descriptor(s), expected \(expected)"
        }
    }
}

/// Bounds on the variable-length fields, well above what a legitimate peer sends.
public enum LinkLimits {
    /// A credential as presented (ttyd's AuthToken: base64 of user:password).
    public static let token = 4096
    /// Window titles and failure reasons.
    public static let text = 1024
    /// A session's id and each of its secrets.
    public static let sessionField = 64
    /// A client's name for its input stream (`AttachRequest.inputStream`).
    public static let inputStream = 31
    /// A client's address as a trusted proxy forwarded it: a numeric IPv6 address at most.
    public static let forwardedAddress = 45
    /// The largest memory file a vault may ask the nursery for (`VaultToNursery.spawn`): a
    /// ring of `--session-ring` at its largest (1 GiB) and its header.
    public static let keptStateBytes = (1 << 30) + (1 << 16)
    /// Arguments from a client's URL (ttyd's --url-arg): how many, and the bytes of each.
    public static let urlArguments = 16, urlArgument = 255
    /// A web user's name, as a reverse proxy's header gives it (ttyd's --auth-header).
    public static let userName = 255
    /// What a worker asks the keyholder to sign: a TLS 1.3 CertificateVerify input is 130
    /// bytes and a TLS 1.2 ServerKeyExchange's about 170.
    public static let signedData = 512
    /// A signature: an RSA key of 8192 bits makes one of 1024 bytes.
    public static let signature = 1024
    /// Workers in one `KeyholderToSupervisor.counts`.
    public static let countedWorkers = 4096
}

/// How a shell ended, as wait(2) tells it.
public enum Exit: Equatable, Sendable, CustomStringConvertible {
    case status(Int32)
    case signal(Int32)
    /// The shell is gone (its terminal closed) and nobody who reaped it could say how: it was
    /// started by a nursery of a service that has since been restarted.
    case unknown

    public var description: String {
        switch self {
        case .status(let code): return "exit status \(code)"
        case .signal(let signal): return "signal \(signal)"
        case .unknown: return "ended, status unknown"
        }
    }
}

/// Big-endian fields, written in order.
struct FieldWriter {
    var bytes: [UInt8]

    init(kind: UInt8) { bytes = [kind] }

    mutating func u16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xff)] }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xffff)) }
    mutating func u64(_ v: UInt64) { u32(UInt32(v >> 32)); u32(UInt32(v & 0xffff_ffff)) }
    /// How a shell ended: a byte for how, then the status or signal (read by `decodeExit`).
    mutating func exit(_ exit: Exit) {
        switch exit {
        case .status(let code): bytes.append(0); u32(UInt32(bitPattern: code))
        case .signal(let signal): bytes.append(1); u32(UInt32(bitPattern: signal))
        case .unknown: bytes.append(2); u32(0)
        }
    }
    /// A field of at most 255 bytes, its length first.
    mutating func short(_ field: [UInt8]) {
        precondition(field.count <= 255)
        bytes.append(UInt8(field.count))
        bytes += field
    }
    /// A field of at most 65535 bytes, its length first.
    mutating func long(_ field: [UInt8]) {
        precondition(field.count <= 0xffff)
        u16(UInt16(field.count))
        bytes += field
    }
    mutating func rest(_ tail: some Sequence<UInt8>) { bytes += tail }

    /// A packet link's greeting, in place of a circuits handshake: the link's intent and the
    /// sender's build, so that a socket connected to anything else fails loudly.
    mutating func hello(intent: String, build: String) {
        short(Array(intent.utf8.prefix(255)))
        short(Array(build.utf8.prefix(255)))
    }

    /// Command arguments (ttyd's --url-arg): their count, then each as a `short` field.
    mutating func commandArguments(_ arguments: [[UInt8]]) {
        bytes.append(UInt8(arguments.count))
        for argument in arguments { short(argument) }
    }

    /// Text of at most `LinkLimits.text` bytes, cut at a character boundary, so that what is
    /// written always decodes.
    mutating func text(_ text: String) {
        var count = 0
        for character in text {
            let size = character.utf8.count
            guard count + size <= LinkLimits.text else { break }
            bytes += character.utf8
            count += size
        }
    }
}

/// Reads the body after the kind byte; every read checks the length, so a short body is a
/// `.malformed` error, never a trap. The kind is named (by reflection) only for an error:
/// decoding is on every message's path.
struct FieldReader<Kind> {
    let body: ArraySlice<UInt8>
    let kind: Kind
    var offset: Int

    init(_ payload: [UInt8], kind: Kind) {
        body = payload.dropFirst()
        self.kind = kind
        offset = body.startIndex
    }

    var malformed: LinkMessageError { .malformed(kind: "\(kind)", length: body.count + 1) }

    /// Reads the kind byte of a `type` message: an empty payload or an unknown kind is an
    /// error (a message of another link or direction is one).
    init(_ payload: [UInt8], of type: @autoclosure () -> String) throws(LinkMessageError)
        where Kind: RawRepresentable, Kind.RawValue == UInt8 {
        guard let first = payload.first else { throw .empty(type: type()) }
        guard let kind = Kind(rawValue: first) else { throw .unknownKind(first, type: type()) }
        self.init(payload, kind: kind)
    }

    mutating func u16() throws(LinkMessageError) -> UInt16 {
        guard body.endIndex - offset >= 2 else { throw malformed }
        defer { offset += 2 }
        return UInt16(body[offset]) << 8 | UInt16(body[offset + 1])
    }

    mutating func u32() throws(LinkMessageError) -> UInt32 {
        let high = try u16()
        return UInt32(high) << 16 | UInt32(try u16())
    }

    mutating func u64() throws(LinkMessageError) -> UInt64 {
        let high = try u32()
        return UInt64(high) << 32 | UInt64(try u32())
    }

    /// A field written by `FieldWriter.short`, at most `limit` bytes.
    mutating func short(limit: Int) throws(LinkMessageError) -> [UInt8] {
        try bytes(Int(try u8()), limit: limit)
    }

    /// A `short` field that must be UTF-8: decoding it leniently would turn a bad byte into
    /// a replacement character, a different name than the one sent.
    mutating func shortText(limit: Int) throws(LinkMessageError) -> String {
        guard let text = String(validating: try short(limit: limit), as: UTF8.self) else { throw malformed }
        return text
    }

    /// Arguments written by `FieldWriter.commandArguments`: 1 to `LinkLimits.urlArguments` of
    /// at most `LinkLimits.urlArgument` bytes, none with a NUL (each becomes a C string).
    mutating func commandArguments() throws(LinkMessageError) -> [[UInt8]] {
        let count = Int(try u8())
        guard (1...LinkLimits.urlArguments).contains(count) else { throw malformed }
        var arguments: [[UInt8]] = []
        for _ in 0..<count {
            let argument = try short(limit: LinkLimits.urlArgument)
            guard !argument.contains(0) else { throw malformed }
            arguments.append(argument)
        }
        return arguments
    }

    /// A packet link's greeting (`FieldWriter.hello`): the intent and the build, as UTF-8.
    mutating func hello() throws(LinkMessageError) -> (intent: String, build: String) {
        let intent = try short(limit: 255), build = try short(limit: 255)
        guard let i = String(validating: intent, as: UTF8.self), let b = String(validating: build, as: UTF8.self) else { throw malformed }
        return (i, b)
    }

    /// A field written by `FieldWriter.long`, at most `limit` bytes.
    mutating func long(limit: Int) throws(LinkMessageError) -> [UInt8] {
        try bytes(Int(try u16()), limit: limit)
    }

    private mutating func bytes(_ count: Int, limit: Int) throws(LinkMessageError) -> [UInt8] {
        guard count <= limit else { throw .oversized(kind: "\(kind)", length: count, limit: limit) }
        guard body.endIndex - offset >= count else { throw malformed }
        defer { offset += count }
        return Array(body[offset..<offset + count])
    }

    mutating func u8() throws(LinkMessageError) -> UInt8 {
        guard offset < body.endIndex else { throw malformed }
        defer { offset += 1 }
        return body[offset]
    }

    /// The rest of the body, at most `limit` bytes.
    mutating func rest(limit: Int = .max) throws(LinkMessageError) -> [UInt8] {
        let tail = Array(body[offset...])
        guard tail.count <= limit else { throw .oversized(kind: "\(kind)", length: tail.count, limit: limit) }
        offset = body.endIndex
        return tail
    }

    /// The rest as UTF-8 text.
    mutating func text(limit: Int = LinkLimits.text) throws(LinkMessageError) -> String {
        guard let text = String(validating: try rest(limit: limit), as: UTF8.self) else { throw malformed }
        return text
    }

    var atEnd: Bool { offset == body.endIndex }

    /// The body must have been read to its end.
    func done() throws(LinkMessageError) {
        guard offset == body.endIndex else { throw malformed }
    }
}

extension LinkMessage {
    /// Checks the descriptor count a kind expects (decoders call it first).
    static func expect<Kind>(_ expected: Int, _ received: Int, kind: Kind) throws(LinkMessageError) {
        guard expected == received else { throw .descriptorCount(kind: "\(kind)", expected: expected, received: received) }
    }
}

/// One message as received: the decoded message, its descriptors (closed unless taken) and
/// whether it was the peer's last in the conversation.
public struct Received<M: LinkMessage>: Sendable {
    public var message: M
    public var descriptors: ReceivedDescriptors?
    public var isEnd: Bool
}

extension Circuit where Id == UInt16 {
    /// Sends `message` with exactly the descriptors its kind carries.
    public func send<M: LinkMessage>(_ message: M, descriptors: [FileDescriptor] = [], end: Bool = false) async throws {
        precondition(descriptors.count == message.descriptorCount, "\(message) carries \(message.descriptorCount) descriptor(s)")
        try await send(message.encoded, descriptors: descriptors, end: end)
    }

    /// The next message, decoded as `M`; nil when the peer ended the conversation without
    /// one. A message that is not an `M` throws (its descriptors are closed).
    public func receive<M: LinkMessage>(_ type: M.Type) async throws -> Received<M>? {
        let raw = try await receive()
        if raw.isEnd && raw.payload.isEmpty && (raw.descriptors?.count ?? 0) == 0 { return nil }
        do {
            let message = try M(decoding: raw.payload, descriptors: raw.descriptors?.count ?? 0)
            return Received(message: message, descriptors: raw.descriptors, isEnd: raw.isEnd)
        } catch {
            raw.descriptors?.close()
            throw error
        }
    }

    /// The first message of a conversation the supervisor opened, as a role serves it: nil when
    /// the supervisor ended it without one, or when it is not an `M` (then refused: logged, and
    /// the conversation ended).
    public func firstMessage<M: LinkMessage>(_ type: M.Type, logger: Logger) async -> Received<M>? {
        do {
            return try await receive(type)
        } catch {
            logger.error("refused a message from the supervisor", metadata: ["error": "\(error)"])
            try? await send([], end: true)
            return nil
        }
    }

    /// Sends one message and waits until the peer has ended the conversation: the peer has
    /// acted on it. Any message the peer sends meanwhile is dropped.
    public func tell<M: LinkMessage>(_ message: M, descriptors: [FileDescriptor] = []) async throws {
        try await send(message, descriptors: descriptors, end: true)
        while !(try await receive()).isEnd {}
    }
}
