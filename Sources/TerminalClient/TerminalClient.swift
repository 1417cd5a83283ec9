import FoundationEssentials

#if canImport(Glibc)
import Glibc
import SystemCalls
#endif

/// A small blocking WebSocket client speaking ttyd's protocol, for the tests, the benchmark
/// and `policy learn`'s workload. It can also send frames a correct client never would
/// (unmasked, reserved bits, bad UTF-8) to check the server's handling of them.
public final class TerminalClient {
    public struct Failure: Error, CustomStringConvertible, Equatable {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// The server closed the WebSocket with this code and reason.
    public struct Closed: Error, CustomStringConvertible, Equatable {
        public var code: UInt16?
        public var reason: String
        public var description: String { "closed by the server: \(code.map(String.init) ?? "no code") \(reason)" }
    }

    public struct Frame: Equatable {
        public var fin: Bool
        public var opcode: UInt8
        public var payload: [UInt8]
    }

    public let socket: Int32
    /// Received bytes not parsed yet: `buffer[consumed...]`.
    private var buffer: [UInt8] = []
    private var consumed = 0
    /// What one read takes, kept: zeroing 64 KiB for every read cost the client more than
    /// parsing what it read.
    private var chunk = [UInt8](repeating: 0, count: 65536)
    /// Terminal output received so far ('0' messages), not yet taken.
    public private(set) var output: [UInt8] = []
    public private(set) var title: String?
    /// The last session message (Cloister's), and how many came.
    public private(set) var session: SessionMessage?
    public private(set) var sessionMessages = 0
    /// Output bytes received since the last session message.
    public private(set) var received: UInt64 = 0

    init(socket: Int32) { self.socket = socket }
    deinit { close(socket) }

    // MARK: Connecting

    /// `from`: the local address to connect from (another loopback address is another source
    /// for a server's limits per source).
    public static func tcp(host: String = "127.0.0.1", port: UInt16, timeoutSeconds: Int = 10, from: String? = nil) throws -> Int32 {
        let address = SocketAddress.inet(host: host, port: port)
        let fd = try address.socket(Int32(SOCK_STREAM.rawValue))
        do {
            if let from { try SocketAddress.inet(host: from, port: 0).bind(fd) }
            try address.connect(fd)
        } catch {
            close(fd)
            throw error
        }
        setOptions(fd, timeoutSeconds: timeoutSeconds)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    /// A read that waits longer than `timeoutSeconds` fails (EAGAIN).
    private static func setOptions(_ fd: Int32, timeoutSeconds: Int) {
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    public struct Response {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]
        public func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }
    }

    /// One HTTP/1.1 request on a new connection (closed afterwards).
    public static func get(port: UInt16, path: String, headers: [String: String] = [:], host: String = "127.0.0.1",
                           rawHead: String? = nil) throws -> Response {
        let client = TerminalClient(socket: try tcp(host: host, port: port))
        var head = rawHead ?? "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nConnection: close\r\n"
        if rawHead == nil {
            for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
            head += "\r\n"
        }
        try writeAll(client.socket, Array(head.utf8))
        let (status, parsed) = try client.readHead()
        let length = parsed.first { $0.0.lowercased() == "content-length" }.flatMap { Int($0.1) }
        while length.map({ client.buffer.count < $0 }) ?? true {
            guard try client.fill() else { break }
        }
        return Response(status: status, headers: parsed, body: Array(client.buffer.prefix(length ?? client.buffer.count)))
    }

    /// Opens a WebSocket to `path` with ttyd's subprotocol; throws `Failure` carrying the
    /// HTTP status when the server refuses the handshake.
    /// With `tls`, over TLS (HTTP/1.1 by ALPN; the chain not verified: for tests and
    /// benchmarks against a certificate they made); `verification` checks it.
    public static func connect(port: UInt16, path: String = "/ws", origin: String? = nil, subprotocol: String? = "tty",
                               host: String = "127.0.0.1", timeoutSeconds: Int = 10,
                               headers: [(String, String)] = [], tls: Bool = false,
                               verification: ClientTLS.Verification? = nil, from: String? = nil) throws -> TerminalClient {
        var fd = try tcp(host: host, port: port, timeoutSeconds: timeoutSeconds, from: from)
        if tls || verification != nil {
            fd = try ClientTLS.tunnel(socket: fd, address: host, verification: verification ?? .none, timeoutSeconds: timeoutSeconds)
            setOptions(fd, timeoutSeconds: timeoutSeconds)
        }
        let client = TerminalClient(socket: fd)
        var key = [UInt8](repeating: 0, count: 16)
        for i in key.indices { key[i] = UInt8.random(in: 0...255) }
        var head = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        head += "Sec-WebSocket-Key: \(base64(key))\r\nSec-WebSocket-Version: 13\r\n"
        if let subprotocol { head += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        if let origin { head += "Origin: \(origin)\r\n" }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        try client.write(Array(head.utf8))
        let (status, _) = try client.readHead()
        guard status == 101 else { throw Failure("handshake refused with HTTP \(status)") }
        return client
    }

    private func readHead() throws -> (Int, [(String, String)]) {
        let terminator: [UInt8] = [13, 10, 13, 10]
        while true {
            if let end = find(terminator) {
                let head = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 4)  // only before any frame, when consumed == 0
                var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw Failure("bad status line") }
                let headers = lines.compactMap { line -> (String, String)? in
                    guard let colon = line.firstIndex(of: ":") else { return nil }
                    return (String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces)
                }
                return (status, headers)
            }
            guard try fill() else { throw Failure("connection closed before the response head") }
        }
    }

    private func find(_ needle: [UInt8]) -> Int? {
        guard buffer.count >= needle.count else { return nil }
        for i in 0...(buffer.count - needle.count) where buffer[i] == needle[0] && Array(buffer[i..<i + needle.count]) == needle {
            return i
        }
        return nil
    }

    /// Reads more into the buffer; false at end of stream.
    private func fill() throws -> Bool {
        if consumed > 65536 && consumed * 2 > buffer.count {
            buffer.removeFirst(consumed)
            consumed = 0
        }
        let n = read(socket, &chunk, chunk.count)
        if n > 0 {
            buffer += chunk[..<n]
            return true
        }
        if n == 0 || errno == ECONNRESET { return false }
        if errno == EAGAIN || errno == EWOULDBLOCK { throw Failure("timed out waiting for the server") }
        throw Failure("read: errno \(errno)")
    }

    // MARK: Frames

    public func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true, masked: Bool = true, reservedBits: UInt8 = 0) throws {
        var frame: [UInt8] = [(fin ? 0x80 : 0) | (reservedBits << 4) | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            frame.append(maskBit | UInt8(payload.count))
        } else if payload.count <= 0xffff {
            frame += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
        } else {
            frame.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { frame.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xff)) }
        }
        if masked {
            let key = (0..<4).map { _ in UInt8.random(in: 0...255) }
            frame += key
            frame += payload.enumerated().map { $1 ^ key[$0 % 4] }
        } else {
            frame += payload
        }
        try write(frame)
    }

    public func receiveFrame() throws -> Frame {
        while true {
            if let frame = parseFrame() { return frame }
            guard try fill() else { throw Failure("connection closed") }
        }
    }

    private func parseFrame() -> Frame? {
        let available = buffer.count - consumed
        guard available >= 2 else { return nil }
        let base = consumed
        var length = Int(buffer[base + 1] & 0x7f)
        var offset = 2
        if length == 126 {
            guard available >= 4 else { return nil }
            length = Int(buffer[base + 2]) << 8 | Int(buffer[base + 3])
            offset = 4
        } else if length == 127 {
            guard available >= 10 else { return nil }
            length = buffer[base + 2..<base + 10].reduce(0) { $0 << 8 | Int($1) }
            offset = 10
        }
        guard available >= offset + length else { return nil }
        let frame = Frame(fin: buffer[base] & 0x80 != 0, opcode: buffer[base] & 0x0f,
                          payload: Array(buffer[base + offset..<base + offset + length]))
        consumed += offset + length
        return frame
    }

    /// The close frame the server sent (the connection may have gone on to close). Skips
    /// everything else.
    public func awaitClose() throws -> Closed {
        while true {
            let frame = try receiveFrame()
            if frame.opcode == 0x8 { return Self.closed(frame.payload) }
            take(frame)
        }
    }

    static func closed(_ payload: [UInt8]) -> Closed {
        guard payload.count >= 2 else { return Closed(code: nil, reason: "") }
        return Closed(code: UInt16(payload[0]) << 8 | UInt16(payload[1]), reason: String(decoding: payload[2...], as: UTF8.self))
    }

    private func take(_ frame: Frame) {
        guard frame.opcode == 0x2 || frame.opcode == 0x1, let type = frame.payload.first else { return }
        switch type {
        case UInt8(ascii: "0"):
            output += frame.payload.dropFirst()
            received += UInt64(frame.payload.count - 1)
        case UInt8(ascii: "1"): title = String(decoding: frame.payload.dropFirst(), as: UTF8.self)
        case UInt8(ascii: "S"):
            if let message = try? JSONDecoder().decode(SessionMessage.self, from: Data(frame.payload.dropFirst())) {
                session = message
                sessionMessages += 1
                received = 0  // counted from the offset the message gives
            }
        default: break
        }
    }

    /// Cloister's session message: which session, its secrets, and the stream offset of the
    /// next output byte.
    public struct SessionMessage: Codable, Sendable, Equatable {
        public var session: String
        public var secret: String?
        public var read_secret: String
        public var offset: UInt64
        public var skipped: UInt64
        /// How much of the input stream named in the hello reached the terminal.
        public var input_offset: UInt64?
        public var lagged: Bool?
    }

    /// A random name of 22 URL-safe characters (132 bits): a client's input stream.
    public static func randomName() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        let bytes = (try? randomBytes(22)) ?? (0..<22).map { _ in UInt8.random(in: 0...255) }
        return String(decoding: bytes.map { alphabet[Int($0 & 63)] }, as: UTF8.self)
    }

    // MARK: ttyd

    /// ttyd's first message; with `session`, Cloister's additions to join one.
    public func authenticate(token: String, columns: Int = 80, rows: Int = 24, session: String? = nil,
                             secret: String? = nil, offset: UInt64? = nil, readonly: Bool = false, input: String? = nil) throws {
        var json = "{\"AuthToken\":\"\(token)\",\"columns\":\(columns),\"rows\":\(rows)"
        if let input { json += ",\"input\":\"\(input)\"" }
        if let session { json += ",\"session\":\"\(session)\"" }
        if let secret { json += ",\"secret\":\"\(secret)\"" }
        if let offset { json += ",\"offset\":\(offset)" }
        if readonly { json += ",\"readonly\":true" }
        try sendFrame(opcode: 0x1, payload: Array((json + "}").utf8))
    }

    /// Waits for the session message that follows a successful attach.
    @discardableResult
    public func awaitSession() throws -> SessionMessage {
        while session == nil {
            let frame = try receiveFrame()
            if frame.opcode == 0x8 { throw Self.closed(frame.payload) }
            take(frame)
        }
        return session!
    }

    /// The next output as it comes: waits for at least one output message and returns what
    /// has arrived. A close from the server throws `Closed`.
    public func readSome() throws -> [UInt8] {
        while output.isEmpty {
            let frame = try receiveFrame()
            if frame.opcode == 0x8 { throw Self.closed(frame.payload) }
            if frame.opcode == 0x9 { try sendFrame(opcode: 0xA, payload: frame.payload); continue }
            take(frame)
        }
        defer { output = [] }
        return output
    }

    /// Input as bytes (a terminal's keys need not be UTF-8).
    public func input(bytes: [UInt8]) throws { try sendFrame(opcode: 0x2, payload: [UInt8(ascii: "0")] + bytes) }

    /// Output received and not yet returned by a read.
    public func takeOutput() -> [UInt8] {
        defer { output = [] }
        return output
    }

    /// The stream offset just past the last output byte received: where to resume.
    public var resumeOffset: UInt64? { session.map { $0.offset + received } }

    public func input(_ text: String) throws { try sendFrame(opcode: 0x2, payload: [UInt8(ascii: "0")] + Array(text.utf8)) }
    public func resize(columns: Int, rows: Int) throws {
        try sendFrame(opcode: 0x2, payload: Array("1{\"columns\":\(columns),\"rows\":\(rows)}".utf8))
    }
    public func pause() throws { try sendFrame(opcode: 0x2, payload: [UInt8(ascii: "2")]) }
    public func resume() throws { try sendFrame(opcode: 0x2, payload: [UInt8(ascii: "3")]) }

    /// Reads output until `done` holds for everything received so far (which is then taken
    /// and returned). A close from the server throws `Closed`.
    @discardableResult
    public func readOutput(until done: (String) -> Bool) throws -> String {
        while !done(String(decoding: output, as: UTF8.self)) {
            let frame = try receiveFrame()
            if frame.opcode == 0x8 { throw Self.closed(frame.payload) }
            if frame.opcode == 0x9 { try sendFrame(opcode: 0xA, payload: frame.payload); continue }
            take(frame)
        }
        defer { output = [] }
        return String(decoding: output, as: UTF8.self)
    }

    /// Reads output until `marker` has arrived (searching only what is new each time, so long
    /// outputs cost linear time); returns everything received.
    public func readOutput(untilMarker marker: String) throws -> [UInt8] {
        let needle = Array(marker.utf8)
        var searched = 0
        while true {
            if output.count >= needle.count {
                var i = max(0, searched - needle.count + 1)
                while i + needle.count <= output.count {
                    if output[i] == needle[0] && output[i..<i + needle.count].elementsEqual(needle) {
                        defer { output = [] }
                        return output
                    }
                    i += 1
                }
                searched = output.count
            }
            let frame = try receiveFrame()
            if frame.opcode == 0x8 { throw Self.closed(frame.payload) }
            take(frame)
        }
    }

    /// Takes whatever output arrives within `seconds` and returns it (for checking that
    /// output stops, e.g. while paused).
    public func drainOutput(forSeconds seconds: Int) throws -> [UInt8] {
        var short = timeval(tv_sec: seconds, tv_usec: 0)
        var saved = timeval()
        var length = socklen_t(MemoryLayout<timeval>.size)
        getsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &saved, &length)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &short, socklen_t(MemoryLayout<timeval>.size))
        defer { setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &saved, socklen_t(MemoryLayout<timeval>.size)) }
        let deadline = time(nil) + seconds
        while time(nil) < deadline {
            guard let frame = try? receiveFrame() else { break }
            if frame.opcode == 0x8 { throw Self.closed(frame.payload) }
            take(frame)
        }
        defer { output = [] }
        return output
    }

    public func closeNormally() throws {
        try sendFrame(opcode: 0x8, payload: [0x03, 0xe8])
    }

    // MARK: Helpers

    /// To the server (over TLS, the tunnel's plain end).
    func write(_ bytes: [UInt8]) throws { try Self.writeAll(socket, bytes) }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            // MSG_NOSIGNAL: a server that closed is an error here, not SIGPIPE.
            sent += try bytes[sent...].withUnsafeBytes { (b) throws(SystemCallError) in
                try valueOrErrno("send") { send(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL)) }
            }
        }
    }

    public static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    /// ttyd's AuthToken for a credential.
    public static func token(_ userAndPassword: String) -> String { base64(Array(userAndPassword.utf8)) }
}

private extension String {
    /// Over the UTF-8 bytes: trimming Characters from the end cost more than the rest of a
    /// session's handshake, and the benchmarks run this client against the servers.
    var trimmingSpaces: String {
        let bytes = Array(utf8)
        guard let first = bytes.firstIndex(where: { $0 != UInt8(ascii: " ") }),
              let last = bytes.lastIndex(where: { $0 != UInt8(ascii: " ") }) else { return "" }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
