import Circuits
import FoundationEssentials
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import RoleProtocol
import Synchronization
import SystemPackage

/// The untrusted-input side of Cloister: HTTP/1.1 and WebSocket (ttyd's protocol) on client
/// sockets the supervisor hands over. Runs inside the worker sandbox. It holds no credential
/// and no terminal: credentials go to the vault to be checked, terminals are reached through
/// attachments on the vault link.
public final class WebWorker: Sendable {
    public struct Settings: Sendable {
        /// Refuse WebSocket handshakes whose Origin names another host than Host (ttyd's
        /// --check-origin).
        public var checkOrigin = true
        public var maxHeaderBytes = 16 * 1024
        public var maxFrameBytes = 256 * 1024
        public var maxMessageBytes = 1024 * 1024
        /// Time from connection to a completed WebSocket handshake.
        public var handshakeTimeout: TimeAmount = .seconds(10)
        public init() {}
    }

    let settings: Settings
    let logger: Logger
    private let vaultLink = Mutex<RoleTransport?>(nil)

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// A new link to the vault replaces the old one (the vault was restarted).
    public func link(vault: RoleTransport) {
        let old = vaultLink.withLock { v in
            defer { v = vault }
            return v
        }
        old?.close()
    }

    var vault: RoleTransport? {
        vaultLink.withLock { link in
            if link?.failure != nil { link = nil }
            return link
        }
    }

    /// Serves one client socket until the connection closes. Takes ownership of `socket`.
    public func serve(client socket: SystemPackage.FileDescriptor) async {
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .withConnectedSocket(socket.rawValue) { channel in
                    channel.eventLoop.makeCompletedFuture { try self.configure(channel) }.map { channel }
                }
        } catch {
            logger.error("client socket not adopted", metadata: ["error": "\(error)"])
            try? socket.close()
            return
        }
        try? await channel.closeFuture.get()
    }

    private func configure(_ channel: Channel) throws {
        let pipeline = channel.pipeline.syncOperations
        let deadline = channel.eventLoop.scheduleTask(in: settings.handshakeTimeout) {
            channel.close(promise: nil)
        }
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: settings.maxFrameBytes, automaticErrorHandling: true,
            shouldUpgrade: { [settings] channel, head in
                channel.eventLoop.makeSucceededFuture(Self.upgradeHeaders(head, checkOrigin: settings.checkOrigin))
            },
            upgradePipelineHandler: { channel, head in
                deadline.cancel()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        WebSocketProtocolHandler(maxMessageBytes: self.settings.maxMessageBytes))
                    let session = try NIOAsyncChannel<ClientMessage, WebSocketFrame>(wrappingChannelSynchronously: channel)
                    Task { await self.terminalSession(session) }
                }
            })
        let http = HTTPHandler(worker: self)
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = settings.maxHeaderBytes
        limits.maxHeaderFieldSize = settings.maxHeaderBytes
        limits.maxHeaderFieldCount = 100
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: true,
            withServerUpgrade: ([upgrader], { context in
                context.pipeline.removeHandler(name: "cloister.http", promise: nil)
                context.pipeline.removeHandler(name: "cloister.http-errors", promise: nil)
            }),
            withErrorHandling: false,
            withOutboundHeaderValidation: true,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: limits)
        try pipeline.addHandler(HTTPErrorHandler(), name: "cloister.http-errors")
        try pipeline.addHandler(http, name: "cloister.http")
    }

    /// The WebSocket endpoint is `/ws` with ttyd's subprotocol `tty`.
    static func upgradeHeaders(_ head: HTTPRequestHead, checkOrigin: Bool) -> HTTPHeaders? {
        guard head.uri.split(separator: "?", maxSplits: 1).first == "/ws", originAllowed(head, checkOrigin: checkOrigin) else {
            return nil
        }
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.lowercased() }
        guard offered.contains("tty") else { return nil }
        return ["Sec-WebSocket-Protocol": "tty"]
    }

    /// As ttyd: without an Origin header the request is allowed (not from a browser); with one,
    /// its host[:port] must equal the Host header.
    static func originAllowed(_ head: HTTPRequestHead, checkOrigin: Bool) -> Bool {
        guard checkOrigin, let origin = head.headers.first(name: "origin") else { return true }
        guard let host = head.headers.first(name: "host") else { return false }
        guard let schemeEnd = origin.firstRange(of: "://") else { return false }
        let authority = origin[schemeEnd.upperBound...].split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return authority.lowercased() == host.lowercased()
    }

    /// Asks the vault whether a credential is valid. Without a vault, nobody is let in.
    func check(token: [UInt8]) async -> Bool {
        guard let vault else { return false }
        guard let circuit = try? vault.open() else { return false }
        guard (try? await circuit.send(WorkerToVault.check(token: token), end: true)) != nil,
              let reply = try? await circuit.receive(VaultToWorker.self) else { return false }
        if case .accepted = reply.message { return true }
        return false
    }
}

/// ttyd's first client message.
struct AuthMessage: Decodable {
    var AuthToken: String?
    var columns: Int?
    var rows: Int?
}

/// ttyd's resize message.
struct ResizeMessage: Decodable {
    var columns: Int
    var rows: Int
}

extension WebWorker {
    enum Close: UInt16 {
        case normal = 1000, protocolError = 1002, unsupported = 1003, policy = 1008, internalError = 1011
    }

    /// One ttyd session: authenticate through the vault, attach, then relay both ways until
    /// the shell exits (close 1000) or the client goes (the attachment ends, the shell gets
    /// SIGHUP).
    func terminalSession(_ session: NIOAsyncChannel<ClientMessage, WebSocketFrame>) async {
        try? await session.executeThenClose { inbound, outbound in
            var messages = inbound.makeAsyncIterator()
            func close(_ code: Close, _ reason: String) async { await Self.close(outbound, code, reason) }
            guard let first = try await messages.next() else { return }
            guard let auth = try? JSONDecoder().decode(AuthMessage.self, from: Data(first.bytes)) else {
                return await close(.policy, "the first message must be ttyd's JSON")
            }
            // The same bounds as a resize.
            let columns = UInt16(min(9999, max(1, auth.columns ?? 80))), rows = UInt16(min(9999, max(1, auth.rows ?? 24)))
            guard let vault = self.vault, let circuit = try? vault.open() else {
                return await close(.internalError, "no terminal service")
            }
            try await circuit.send(WorkerToVault.attach(columns: columns, rows: rows, token: Array((auth.AuthToken ?? "").utf8)))
            switch try await circuit.receive(VaultToWorker.self)?.message {
            case .accepted(let title):
                try await outbound.write(Self.binary(UInt8(ascii: "1"), Array(title.utf8)))
                try await outbound.write(Self.binary(UInt8(ascii: "2"), Array("{}".utf8)))
            case .refused(let refusal):
                self.logger.warning("attachment refused", metadata: ["refusal": "\(refusal)"])
                return await close(.policy, refusal == .badCredential ? "authentication failed" : "no terminal")
            case .output, .exited, nil:
                return await close(.internalError, "no terminal")
            }
            // Shell to client in a task of its own; client to shell here, until the client
            // goes or the shell's exit closes the connection.
            let channel = session.channel
            let output = Task {
                while let received = try? await circuit.receive(VaultToWorker.self) {
                    switch received.message {
                    case .output(let bytes):
                        guard (try? await outbound.write(Self.binary(UInt8(ascii: "0"), bytes))) != nil else { return }
                    case .exited(let exit):
                        await Self.close(outbound, .normal, "\(exit)")
                        channel.close(promise: nil)
                        return
                    case .accepted, .refused:
                        break  // answers to the first message only
                    }
                }
                channel.close(promise: nil)
            }
            while let message = try? await messages.next() {
                guard let command = Self.command(message.bytes) else { continue }
                guard (try? await circuit.send(command)) != nil else { break }
            }
            try? await circuit.send([], end: true)
            output.cancel()
            await output.value
        }
    }

    static func close(_ outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>, _ code: Close, _ reason: String) async {
        var data = ByteBuffer()
        data.writeInteger(code.rawValue)
        data.writeString(reason)
        try? await outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, data: data))
    }

    static func binary(_ type: UInt8, _ bytes: [UInt8]) -> WebSocketFrame {
        var data = ByteBuffer()
        data.reserveCapacity(bytes.count + 1)
        data.writeInteger(type)
        data.writeBytes(bytes)
        return WebSocketFrame(fin: true, opcode: .binary, data: data)
    }

    /// ttyd's client commands: '0' input, '1' resize JSON, '2' pause, '3' resume. Anything
    /// else is ignored, as ttyd does.
    static func command(_ bytes: [UInt8]) -> WorkerToVault? {
        guard let type = bytes.first else { return nil }
        switch type {
        case UInt8(ascii: "0"): return .input(Array(bytes.dropFirst()))
        case UInt8(ascii: "1"):
            guard let size = try? JSONDecoder().decode(ResizeMessage.self, from: Data(bytes.dropFirst())),
                  (1...9999).contains(size.columns), (1...9999).contains(size.rows) else { return nil }
            return .resize(columns: UInt16(size.columns), rows: UInt16(size.rows))
        case UInt8(ascii: "2"): return .pause
        case UInt8(ascii: "3"): return .resume
        default: return nil
        }
    }
}
