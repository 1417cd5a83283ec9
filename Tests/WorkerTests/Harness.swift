import Circuits
import Logging
import NIOCore
import NIOEmbedded
import RoleProtocol
import Synchronization
import TestSupport
import WebAssets
import XCTest
@testable import Worker

/// A vault the test controls: it accepts one credential and records what conversations
/// send. Conversations run on the loop of the client that opens them, as the real link's do.
final class FakeVault: TerminalService {
    static let token = Array("dXNlcjpwYXNz".utf8)  // base64("user:pass")

    let conversations = Mutex<[FakeConversation]>([])
    let reply: @Sendable (WorkerToVault) -> VaultToWorker
    /// No vault to ask (it is restarting): no conversation can be opened.
    let gone = Mutex(false)

    init(reply: @escaping @Sendable (WorkerToVault) -> VaultToWorker = FakeVault.acceptRightToken) {
        self.reply = reply
    }

    static func acceptRightToken(_ first: WorkerToVault) -> VaultToWorker {
        switch first {
        case .attach(let request) where request.token == FakeVault.token:
            return .attached(SessionInfo(title: "fake-title", session: "sid", secret: request.readonly ? nil : "wsecret",
                                         readSecret: "rsecret", offset: 0, skipped: 0))
        case .check(let token) where token == FakeVault.token:
            return .accepted(title: "fake-title")
        default:
            return .refused(.badCredential)
        }
    }

    func conversation(on loop: EventLoop) -> (any VaultConversation)? {
        if gone.withLock({ $0 }) { return nil }
        let conversation = FakeConversation(loop: loop, reply: reply)
        conversations.withLock { $0.append(conversation) }
        return conversation
    }

    /// The conversations that asked to attach.
    var attachments: [FakeConversation] {
        conversations.withLock { $0.filter { if case .attach? = $0.sent.withLock({ $0.first }) { true } else { false } } }
    }

    var last: FakeConversation? { attachments.last }
}

/// A conversation whose messages from the worker are recorded (the first answered with the
/// vault's `reply`), and to which the test sends the vault's side. Its callbacks run on the
/// client's loop.
final class FakeConversation: VaultConversation, @unchecked Sendable {
    let loop: EventLoop
    let sent = Mutex<[WorkerToVault]>([])
    let ended = Mutex(false)
    private let reply: @Sendable (WorkerToVault) -> VaultToWorker
    /// On `loop`: what the test said while delivery was paused.
    private var held: [(ByteBuffer, Bool)] = []

    var onMessage: ((ByteBuffer, Bool) -> Void)?
    var onWritable: (() -> Void)?
    var onFailure: ((CircuitError) -> Void)?
    var isDeliveryPaused = false {
        didSet { if !isDeliveryPaused { deliverHeld() } }
    }

    init(loop: EventLoop, reply: @escaping @Sendable (WorkerToVault) -> VaultToWorker) {
        self.loop = loop
        self.reply = reply
    }

    func send(_ bytes: [UInt8], end: Bool) throws(CircuitError) -> Bool {
        guard let message = try? WorkerToVault(decoding: bytes, descriptors: 0) else { return true }
        let first = sent.withLock { s in
            s.append(message)
            return s.count == 1
        }
        if end { ended.withLock { $0 = true } }
        if first { say(reply(message), end: end) }
        return true
    }

    func end() { ended.withLock { $0 = true } }

    func abandon() {
        ended.withLock { $0 = true }
        onMessage = nil
        onWritable = nil
        onFailure = nil
    }

    /// What the vault says next (output, exit), on the client's loop.
    func say(_ message: VaultToWorker, end: Bool = false) {
        loop.execute { [self] in
            held.append((ByteBuffer(bytes: message.encoded), end))
            deliverHeld()
        }
    }

    /// The vault's link goes away.
    func hangUp() { loop.execute { [self] in onFailure?(.peerClosed) } }

    private func deliverHeld() {
        while !isDeliveryPaused, let onMessage, !held.isEmpty {
            let (payload, end) = held.removeFirst()
            onMessage(payload, end)
        }
    }
}

/// One worker pipeline on an in-memory channel: bytes in as a client would send them,
/// bytes out as the client would read them. No socket, no vault process.
final class WorkerUnderTest {
    let channel = NIOAsyncTestingChannel()
    let vault: FakeVault
    private var received: [UInt8] = []

    /// The assets `cloister serve` would load from this checkout and Debian's xterm.js.
    static let assets: Result<AssetBundle, AssetError> = Result { () throws(AssetError) in
        try AssetLoader.load(AssetSources(webDirectory: packageRoot + "/web", xtermDirectory: xtermDirectory))
    }

    init(settings: WebWorker.Settings = .init(), terms: WebWorker.ConnectionTerms = .init(), vault: FakeVault = FakeVault(),
         assets: AssetBundle? = nil) async throws {
        self.vault = vault
        var logger = Logger(label: "test.worker")
        logger.logLevel = .critical
        let worker = WebWorker(settings: settings, service: vault, assets: try assets ?? Self.assets.get(), logger: logger)
        let channel = self.channel
        _ = try await channel.eventLoop.submit { try worker.configure(channel, terms: terms) }.get()
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeInbound(ByteBuffer(bytes: bytes))
    }

    /// Everything written to the client so far, waiting until `until` holds on it (the
    /// worker may answer from another task) or five seconds passed.
    @discardableResult
    func output(until: ([UInt8]) -> Bool = { !$0.isEmpty }) async throws -> [UInt8] {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            // Work the pipeline queues for itself (futures hopping back to the loop) runs only
            // when the test loop is run.
            await channel.testingEventLoop.run()
            while let chunk = try await channel.readOutbound(as: ByteBuffer.self) {
                received += Array(buffer: chunk)
            }
            if until(received) || ContinuousClock.now > deadline { return received }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    func text(until needle: String) async throws -> String {
        String(decoding: try await output { String(decoding: $0, as: UTF8.self).contains(needle) }, as: UTF8.self)
    }

    /// Drops what was read so far.
    func consume() { received = [] }

    var isActive: Bool {
        get async {
            let channel = self.channel
            return (try? await channel.eventLoop.submit { channel.isActive }.get()) ?? false
        }
    }

    func finish() async {
        _ = try? await channel.finish()
    }
}

/// RFC 6455 frames as a client writes them (masked) and as the server writes them.
enum Frames {
    static func client(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, rsv: UInt8 = 0, masked: Bool = true) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | (rsv << 4) | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            out.append(maskBit | UInt8(payload.count))
        } else if payload.count <= 0xffff {
            out.append(maskBit | 126)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
        } else {
            out.append(maskBit | 127)
            out += (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xff) }
        }
        guard masked else { return out + payload }
        let key: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        return out + key + payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
    }

    static func text(_ s: String, fin: Bool = true) -> [UInt8] { client(0x1, Array(s.utf8), fin: fin) }
    static func binary(_ b: [UInt8], fin: Bool = true) -> [UInt8] { client(0x2, b, fin: fin) }
    static func continuation(_ b: [UInt8], fin: Bool = true) -> [UInt8] { client(0x0, b, fin: fin) }

    /// The server's frames in `bytes` (unmasked), as (opcode, payload).
    static func server(_ bytes: [UInt8]) -> [(opcode: UInt8, payload: [UInt8])] {
        var frames: [(UInt8, [UInt8])] = []
        var i = 0
        while i + 2 <= bytes.count {
            let opcode = bytes[i] & 0x0f
            var length = Int(bytes[i + 1] & 0x7f)
            var at = i + 2
            if length == 126 {
                guard at + 2 <= bytes.count else { break }
                length = Int(bytes[at]) << 8 | Int(bytes[at + 1])
                at += 2
            } else if length == 127 {
                guard at + 8 <= bytes.count else { break }
                length = (0..<8).reduce(0) { $0 << 8 | Int(bytes[at + $1]) }
                at += 8
            }
            guard at + length <= bytes.count else { break }
            frames.append((opcode, Array(bytes[at..<at + length])))
            i = at + length
        }
        return frames
    }

    /// The code of the server's close frame, if it sent one.
    static func closeCode(_ bytes: [UInt8]) -> UInt16? {
        guard let close = server(bytes).first(where: { $0.opcode == 0x8 }), close.payload.count >= 2 else { return nil }
        return UInt16(close.payload[0]) << 8 | UInt16(close.payload[1])
    }

    static func closeReason(_ bytes: [UInt8]) -> String {
        guard let close = server(bytes).first(where: { $0.opcode == 0x8 }), close.payload.count >= 2 else { return "" }
        return String(decoding: close.payload.dropFirst(2), as: UTF8.self)
    }
}

/// Requests as clients write them.
enum Requests {
    static let basic = "Basic " + String(decoding: FakeVault.token, as: UTF8.self)

    static func get(_ path: String, _ headers: [String: String] = [:], method: String = "GET") -> String {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: worker.test\r\n"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }

    static func upgrade(path: String = "/ws", protocols: String? = "tty", origin: String? = nil,
                        extra: [String: String] = [:]) -> String {
        var headers = ["Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                       "Sec-WebSocket-Version": "13"]
        if let protocols { headers["Sec-WebSocket-Protocol"] = protocols }
        if let origin { headers["Origin"] = origin }
        headers.merge(extra) { $1 }
        return get(path, headers)
    }
}
