#if canImport(Glibc)
import Glibc
#endif

/// The traffic `cloister policy learn` drives through a server (and the integration tests
/// check still passes): every HTTP route and refusal, ttyd sessions that echo, resize,
/// pause, stream output, end by exit and by the client leaving, and the WebSocket protocol
/// violations a server must answer. Throws on the first answer that is not the expected one.
public enum Workload {
    public struct Unexpected: Error, CustomStringConvertible {
        public var description: String
    }

    static func expect(_ condition: Bool, _ what: @autoclosure () -> String) throws {
        if !condition { throw Unexpected(description: what()) }
    }

    /// One round of everything, for a server on `port` with credential `userAndPassword`
    /// whose terminals run a POSIX shell.
    public static func run(port: UInt16, userAndPassword: String) throws {
        try http(port: port, userAndPassword: userAndPassword)
        try session(port: port, token: TerminalClient.token(userAndPassword))
        try leave(port: port, token: TerminalClient.token(userAndPassword))
        try refusals(port: port)
        try violations(port: port, token: TerminalClient.token(userAndPassword))
    }

    public static func http(port: UInt16, userAndPassword: String) throws {
        let auth = ["Authorization": "Basic \(TerminalClient.token(userAndPassword))"]
        var r = try TerminalClient.get(port: port, path: "/", headers: auth)
        try expect(r.status == 200 && String(decoding: r.body, as: UTF8.self).contains("<html"), "GET / with credential: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/")
        try expect(r.status == 401 && r.header("WWW-Authenticate") != nil, "GET / without credential: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/token", headers: auth)
        try expect(r.status == 200 && String(decoding: r.body, as: UTF8.self).contains(TerminalClient.token(userAndPassword)),
                   "GET /token: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/missing")
        try expect(r.status == 404, "GET /missing: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/", rawHead: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        try expect(r.status == 405, "POST /: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/", headers: ["X-Padding": String(repeating: "a", count: 20000)])
        try expect(r.status == 431, "oversized header: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/", rawHead: "NOT HTTP AT ALL\r\n\r\n")
        try expect(r.status == 400, "garbage request: \(r.status)")
        r = try TerminalClient.get(port: port, path: "/ws")
        try expect(r.status == 400, "GET /ws without upgrade: \(r.status)")
    }

    /// A full session: echo, resize, pause and resume, a burst of output, exit.
    /// With `tls`, over TLS (a listener that serves it).
    public static func session(port: UInt16, token: String, tls: Bool = false) throws {
        let client = try TerminalClient.connect(port: port, tls: tls)
        try client.authenticate(token: token, columns: 80, rows: 24)
        try client.input("echo ready-$((6*7))\r")
        try client.readOutput { $0.contains("ready-42") }
        try client.input("stty size\r")
        try client.readOutput { $0.contains("24 80") }
        try client.resize(columns: 132, rows: 43)
        try client.input("stty size\r")
        try client.readOutput { $0.contains("43 132") }
        try client.sendFrame(opcode: 0x9, payload: Array("ping".utf8))
        try client.pause()
        try client.input("head -c 100000 /dev/zero | tr '\\0' x; echo; echo burst-done\r")
        try client.resume()
        try client.readOutput { $0.contains("burst-done") }
        // ttyd's JSON, split over a text frame and a continuation.
        try client.sendFrame(opcode: 0x2, payload: Array("0echo frag".utf8), fin: false)
        try client.sendFrame(opcode: 0x0, payload: Array("mented\r".utf8), fin: true)
        try client.readOutput { $0.contains("fragmented") }
        try client.input("exit 3\r")
        let closed = try client.awaitClose()
        try expect(closed.code == 1000 && closed.reason.contains("3"), "exit 3 closed with \(closed)")
    }

    /// The client goes away without a word; the shell is hung up.
    public static func leave(port: UInt16, token: String) throws {
        let client = try TerminalClient.connect(port: port)
        try client.authenticate(token: token)
        try client.input("echo left-$((1+1))\r")
        try client.readOutput { $0.contains("left-2") }
    }

    public static func refusals(port: UInt16) throws {
        let client = try TerminalClient.connect(port: port)
        try client.authenticate(token: TerminalClient.token("nobody:wrong"))
        let closed = try client.awaitClose()
        try expect(closed.code == 1008, "wrong credential closed with \(closed)")
        do {
            _ = try TerminalClient.connect(port: port, origin: "http://evil.example")
            throw Unexpected(description: "a foreign Origin was accepted")
        } catch let failure as TerminalClient.Failure {
            try expect(failure.description.contains("403"), "foreign Origin: \(failure)")
        }
        let notJSON = try TerminalClient.connect(port: port)
        try notJSON.sendFrame(opcode: 0x1, payload: Array("hello".utf8))
        try expect(try notJSON.awaitClose().code == 1008, "non-JSON first message")
    }

    /// Frames RFC 6455 says to fail the connection on, with the code each must get.
    public static func violations(port: UInt16, token: String) throws {
        let cases: [(String, UInt16, (TerminalClient) throws -> Void)] = [
            ("unmasked frame", 1002, { try $0.sendFrame(opcode: 0x2, payload: [0x30], masked: false) }),
            ("reserved bit", 1002, { try $0.sendFrame(opcode: 0x2, payload: [0x30], reservedBits: 0x4) }),
            ("reserved opcode", 1002, { try $0.sendFrame(opcode: 0x3, payload: []) }),
            ("continuation first", 1002, { try $0.sendFrame(opcode: 0x0, payload: [0x30]) }),
            ("invalid UTF-8 text", 1007, { try $0.sendFrame(opcode: 0x1, payload: [0x30, 0xc3, 0x28]) }),
            ("close code 1005", 1002, { try $0.sendFrame(opcode: 0x8, payload: [0x03, 0xed]) }),
            ("close reason not UTF-8", 1007, { try $0.sendFrame(opcode: 0x8, payload: [0x03, 0xe8, 0xff]) }),
            ("fragmented ping", 1002, { try $0.sendFrame(opcode: 0x9, payload: [], fin: false) }),
            // The server may close while the frame is still being written.
            ("oversized frame", 1009, { try? $0.sendFrame(opcode: 0x2, payload: [UInt8](repeating: 0x30, count: 300 * 1024)) }),
            ("normal close", 1000, { try $0.closeNormally() }),
        ]
        for (name, code, send) in cases {
            let client = try TerminalClient.connect(port: port)
            try send(client)
            let closed = try client.awaitClose()
            try expect(closed.code == code, "\(name): expected close \(code), got \(closed)")
        }
    }
}
