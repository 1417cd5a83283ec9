import Dispatch
import Logging
import NIOCore
import NIOEmbedded
import RoleProtocol
import Synchronization
import WebAssets
@testable import Worker

/// The worker's whole pipeline (HTTP/1.1, the opening handshake, WebSocket frames, ttyd's
/// messages) on bytes a client could send, through an in-memory channel, with a vault that
/// accepts one credential and relays nothing. The first byte picks where the input is cut
/// into two writes; bit 7 of it sends the rest to ttyd's message parsers instead.
struct Vault: TerminalService {
    func check(token: [UInt8]) async -> Bool { token == Array("dTpw".utf8) }
    func attachment() -> (any Attachment)? { SilentAttachment() }
}

/// Attaches every client to a session, then ends the conversation as a vault whose shell
/// exited would.
final class SilentAttachment: Attachment {
    let answered = Mutex(false)
    func send(_ message: WorkerToVault) async throws {}
    func receive() async throws -> VaultToWorker? {
        let first = answered.withLock { answered in
            defer { answered = true }
            return !answered
        }
        return first ? .attached(SessionInfo(title: "t", session: "s", secret: "w", readSecret: "r", offset: 0, skipped: 0)) : nil
    }
    func end() async {}
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
    guard let upgrade = try? await channel.eventLoop.submit({ try worker.configure(channel) }).get() else { return }
    let session = Task { await worker.handle(upgrade) }
    for part in [input[..<cut], input[cut...]] where !part.isEmpty {
        try? await channel.writeInbound(ByteBuffer(bytes: part))
        await channel.testingEventLoop.run()
    }
    while (try? await channel.readOutbound(as: ByteBuffer.self)) != nil {}
    _ = try? await channel.finish()
    session.cancel()
    await session.value
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
