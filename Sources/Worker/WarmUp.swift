import Logging
import NIOCore
import NIOEmbedded
import WebAssets

/// The first request a Swift process serves is its slowest: the runtime looks up each
/// protocol conformance and generic type it meets for the first time by scanning the
/// binary's tables, then caches the answer in memory it writes. A forked worker inherits
/// whatever its template already looked up, shared until written, and starts with the rest
/// to do. So the template, before it forks anything, sends a page request and a WebSocket
/// opening handshake through the worker's whole pipeline on an in-memory channel: every
/// worker then starts with those lookups done, in pages all of them share, instead of
/// repeating them in pages of its own.
///
/// Single-threaded throughout (the embedded event loop runs on the calling thread and
/// nothing here starts a task), so the template stays safe to fork. The bytes are fixed
/// here; nothing of a client's is read.
public enum WorkerWarmUp {
    /// Runs the requests; returns what the pipeline answered: the page request's 503 (there
    /// is no vault to check a credential with) and the handshake's 101.
    @discardableResult
    public static func run(settings: WebWorker.Settings, assets: AssetBundle) -> [UInt8] {
        var settings = settings
        // No timer outlives the channel, and no credential is asked of a vault.
        settings.pingInterval = nil
        settings.authenticationDeadline = nil
        let logger = Logger(label: "cloister.warm-up", factory: { _ in SwiftLogNoOpLogHandler() })
        let worker = WebWorker(settings: settings, service: NoVault(), assets: assets, logger: logger)
        let host = "Host: localhost\r\n"
        let requests = [
            "GET \(settings.basePath.prefix)/ HTTP/1.1\r\n\(host)Accept-Encoding: gzip\r\n\r\n",
            "GET \(settings.basePath.prefix)/ws HTTP/1.1\r\n\(host)Origin: http://localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tty\r\n\r\n",
        ]
        var answered: [UInt8] = []
        for request in requests {
            let channel = EmbeddedChannel()
            defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
            guard (try? worker.configure(channel)) != nil else { continue }
            try? channel.writeInbound(ByteBuffer(string: request))
            channel.embeddedEventLoop.run()
            while let out = try? channel.readOutbound(as: ByteBuffer.self) { answered += out.readableBytesView }
        }
        return answered
    }

    /// No vault: the warm-up's requests never reach one.
    private struct NoVault: TerminalService {
        func conversation(on loop: EventLoop) -> (any VaultConversation)? { nil }
    }
}
