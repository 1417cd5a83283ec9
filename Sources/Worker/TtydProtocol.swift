import FoundationEssentials
import RoleProtocol

#if canImport(Glibc)
import Glibc
#endif

/// ttyd 1.7's terminal protocol, as the worker reads it from clients: one command byte,
/// then the payload. Pure functions of the bytes; the session (`TerminalSession`) does the I/O.
package enum TtydProtocol {
    /// Client to server.
    static let input = UInt8(ascii: "0"), resize = UInt8(ascii: "1"), pause = UInt8(ascii: "2"), resume = UInt8(ascii: "3")
    /// Server to client. `session` is Cloister's own (ttyd's clients ignore types they do
    /// not know): the session a client is attached to, as JSON.
    static let output = UInt8(ascii: "0"), title = UInt8(ascii: "1"), preferences = UInt8(ascii: "2")
    static let session = UInt8(ascii: "S")

    /// The first client message: ttyd's JSON with the credential and the window size, and
    /// Cloister's additions to join a session.
    package struct Hello: Decodable, Equatable {
        var AuthToken: String?
        var columns: Int?
        var rows: Int?
        var session: String?
        var secret: String?
        var offset: UInt64?
        var readonly: Bool?
        /// The client's name for its input stream: it is told how much of it reached the
        /// terminal (`input_offset`) and sends the rest again after a lost connection.
        var input: String?
    }

    /// The vault's attach request for a hello, or nil when the hello names a session without
    /// a secret (or a secret without a session), or fields longer than any the vault issues.
    package static func attachRequest(_ hello: Hello) -> AttachRequest? {
        var request = AttachRequest(columns: bounded(hello.columns, default: 80), rows: bounded(hello.rows, default: 24),
                                    token: Array((hello.AuthToken ?? "").utf8), offset: hello.offset,
                                    readonly: hello.readonly ?? false)
        if let input = hello.input {
            guard (1...LinkLimits.inputStream).contains(input.utf8.count) else { return nil }
            request.inputStream = Array(input.utf8)
        }
        switch (hello.session, hello.secret) {
        case (nil, nil): break
        case let (id?, secret?):
            let (id, secret) = (Array(id.utf8), Array(secret.utf8))
            guard id.count <= LinkLimits.sessionField, secret.count <= LinkLimits.sessionField else { return nil }
            request.session = (id, secret)
        default: return nil
        }
        return request
    }

    /// The session message a client gets once attached, and again after a re-synchronisation.
    static func sessionMessage(_ info: SessionInfo, resynced: Bool = false) -> [UInt8] {
        struct Message: Encodable {
            var session: String
            var secret: String?
            var read_secret: String
            var offset: UInt64
            var skipped: UInt64
            var input_offset: UInt64?
            var lagged: Bool?
        }
        let message = Message(session: info.session, secret: info.secret, read_secret: info.readSecret, offset: info.offset,
                              skipped: info.skipped, input_offset: info.inputOffset, lagged: resynced ? true : nil)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return [session] + ((try? encoder.encode(message)).map(Array.init) ?? [])
    }

    /// The `arg` values of a URI's query, in order, decoded as a form does (`%XX`, `+` for a
    /// space): ttyd's --url-arg. Nil when there are more than `LinkLimits.urlArguments`, one
    /// is longer than `LinkLimits.urlArgument` bytes, or one has a NUL or a bad escape.
    package static func urlArguments(_ uri: String) -> [[UInt8]]? {
        guard let question = uri.firstIndex(of: "?") else { return [] }
        var arguments: [[UInt8]] = []
        for pair in uri[uri.index(after: question)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts[0] == "arg" else { continue }
            guard parts.count == 2, let value = formDecoded(parts[1]), !value.contains(0),
                  value.count <= LinkLimits.urlArgument, arguments.count < LinkLimits.urlArguments else { return nil }
            arguments.append(value)
        }
        return arguments
    }

    static func formDecoded(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.popFirst() {
            switch byte {
            case UInt8(ascii: "+"): out.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard bytes.count >= 2, let value = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                out.append(value)
                bytes.removeFirst(2)
            default: out.append(byte)
            }
        }
        return out
    }

    struct WindowSize: Decodable {
        var columns: Int
        var rows: Int
    }

    /// A window size within the bounds a resize may set.
    static func bounded(_ value: Int?, default fallback: Int) -> UInt16 {
        UInt16(min(9999, max(1, value ?? fallback)))
    }

    /// The first message, or nil when it is not ttyd's JSON.
    package static func hello(_ bytes: [UInt8]) -> Hello? {
        try? JSONDecoder().decode(Hello.self, from: Data(bytes))
    }

    /// A client command as the vault takes it: '0' input, '1' resize JSON, '2' pause,
    /// '3' resume. Anything else (and a resize out of bounds) is ignored, as ttyd does.
    package static func command(_ bytes: [UInt8]) -> WorkerToVault? {
        guard let type = bytes.first else { return nil }
        switch type {
        case input: return .input(Array(bytes.dropFirst()))
        case resize:
            guard let size = try? JSONDecoder().decode(WindowSize.self, from: Data(bytes.dropFirst())),
                  (1...9999).contains(size.columns), (1...9999).contains(size.rows) else { return nil }
            return .resize(columns: UInt16(size.columns), rows: UInt16(size.rows))
        case pause: return .pause
        case resume: return .resume
        default: return nil
        }
    }
}
