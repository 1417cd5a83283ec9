import FoundationEssentials
import RoleProtocol

/// ttyd 1.7's terminal protocol, as the worker reads it from clients: one command byte,
/// then the payload. Pure functions of the bytes; the session (`TerminalSession`) does the I/O.
enum TtydProtocol {
    /// Client to server.
    static let input = UInt8(ascii: "0"), resize = UInt8(ascii: "1"), pause = UInt8(ascii: "2"), resume = UInt8(ascii: "3")
    /// Server to client.
    static let output = UInt8(ascii: "0"), title = UInt8(ascii: "1"), preferences = UInt8(ascii: "2")

    /// The first client message: JSON with the credential and the window size.
    struct Hello: Decodable, Equatable {
        var AuthToken: String?
        var columns: Int?
        var rows: Int?
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
    static func hello(_ bytes: [UInt8]) -> Hello? {
        try? JSONDecoder().decode(Hello.self, from: Data(bytes))
    }

    /// A client command as the vault takes it: '0' input, '1' resize JSON, '2' pause,
    /// '3' resume. Anything else (and a resize out of bounds) is ignored, as ttyd does.
    static func command(_ bytes: [UInt8]) -> WorkerToVault? {
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
