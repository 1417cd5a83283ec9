import Circuits
import Dispatch
import Logging
import NIOCore
import NIOEmbedded
import RoleProtocol
import Synchronization
import WebAssets
import Worker
#if !LIBFUZZER
import FuzzReplay
#endif

/// The worker's whole pipeline (HTTP/1.1, the opening handshake, WebSocket frames, ttyd's
/// messages) on bytes a client could send, through an in-memory channel, with a vault that
/// accepts one credential, answers an attachment with a session, some output and the shell's
/// exit. The first byte picks where the input is cut into two writes; bit 7 of it sends the
/// rest to ttyd's message parsers and the opening handshake's checks instead.
final class Vault: TerminalService {
    static let token = Array("dTpw".utf8)  // base64("u:p")

    func conversation(on loop: EventLoop) -> (any VaultConversation)? { Conversation(loop: loop) }
}

/// Answers the worker's first message as the vault would; later messages are taken and dropped.
final class Conversation: VaultConversation, @unchecked Sendable {
    let loop: EventLoop
    var onMessage: ((ByteBuffer, Bool) -> Void)?
    var onWritable: (() -> Void)?
    var onFailure: ((CircuitError) -> Void)?
    var isDeliveryPaused = false {
        didSet { if !isDeliveryPaused { deliver() } }
    }
    private var answered = false
    private var held: [(ByteBuffer, Bool)] = []
    /// As a real circuit, the closures are dropped once both ends are seen.
    private var sentEnd = false, receivedEnd = false

    init(loop: EventLoop) { self.loop = loop }

    func send(_ bytes: [UInt8], end: Bool) throws(CircuitError) -> Bool {
        if end { ended() }
        guard !answered, let message = try? WorkerToVault(decoding: bytes, descriptors: 0) else { return true }
        answered = true
        switch message {
        case .check(let token):
            say(token == Vault.token ? .accepted(title: "t") : .refused(.badCredential), end: true)
        case .attach(let request) where request.token == Vault.token:
            say(.attached(SessionInfo(title: "t", session: "s", secret: request.readonly ? nil : "w", readSecret: "r",
                                      offset: request.offset ?? 0, skipped: 0, inputOffset: request.inputStream.map { _ in 0 })))
            say(.output(Array("output \u{1b}[1mbold\u{1b}[0m é\r\n".utf8)))
            say(.resynced(offset: 64, skipped: 32))
            say(.exited(.status(0)), end: true)
        default:
            say(.refused(.badCredential), end: true)
        }
        return true
    }

    func end() { ended() }

    private func ended() {
        sentEnd = true
        if receivedEnd { abandon() }
    }

    func abandon() {
        onMessage = nil
        onWritable = nil
        onFailure = nil
    }

    private func say(_ message: VaultToWorker, end: Bool = false) {
        loop.execute { [self] in
            held.append((ByteBuffer(bytes: message.encoded), end))
            deliver()
        }
    }

    private func deliver() {
        while !isDeliveryPaused, let onMessage, !held.isEmpty {
            let (payload, end) = held.removeFirst()
            onMessage(payload, end)
            if end {
                receivedEnd = true
                if sentEnd { abandon() }
            }
        }
    }
}

let assets: AssetBundle = {
    var bundle = AssetBundle()
    let page = Asset(contentType: "text/html; charset=utf-8", securityPolicy: "default-src 'none'", body: Array("<html></html>".utf8),
                     gzipped: nil)
    bundle.assets["/"] = page
    bundle.assets["/index.html"] = page
    return bundle
}()

let worker: WebWorker = {
    var logger = Logger(label: "fuzz")
    logger.logLevel = .critical
    var settings = WebWorker.Settings()
    settings.maxFrameBytes = 4096
    settings.maxMessageBytes = 16 * 1024
    settings.urlArguments = true
    return WebWorker(settings: settings, service: Vault(), assets: assets, logger: logger)
}()

func pipeline(_ input: [UInt8], cut: Int) async {
    let channel = NIOAsyncTestingChannel()
    guard (try? await channel.eventLoop.submit({ try worker.configure(channel) }).get()) != nil else { return }
    for part in [input[..<cut], input[cut...]] where !part.isEmpty {
        _ = try? await channel.writeInbound(ByteBuffer(bytes: part))
        await channel.testingEventLoop.run()
    }
    await channel.testingEventLoop.run()
    while (try? await channel.readOutbound(as: ByteBuffer.self)) != nil {}
    _ = try? await channel.finish()
}

func parsers(_ input: [UInt8]) {
    if let hello = TtydProtocol.hello(input) { _ = TtydProtocol.attachRequest(hello) }
    _ = TtydProtocol.command(input)
    _ = TtydProtocol.urlArguments(String(decoding: input, as: UTF8.self))
    _ = OpeningHandshake.isNonce(String(decoding: input, as: UTF8.self))
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    let input = Array(bytes.dropFirst())
    if bytes[0] & 0x80 != 0 {
        parsers(input)
        return 0
    }
    let cut = input.isEmpty ? 0 : Int(bytes[0]) % (input.count + 1)
    let done = DispatchSemaphore(value: 0)
    Task {
        await pipeline(input, cut: cut)
        done.signal()
    }
    done.wait()
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

