import Logging
import NIOCore
import NIOWebSocket
import RoleProtocol

/// One ttyd session on an upgraded WebSocket: authenticate through the vault, attach, then
/// relay both ways until the shell exits (close 1000 with its status) or the client goes (the
/// attachment ends, the shell gets SIGHUP).
struct TerminalSession {
    enum Close: UInt16 {
        case normal = 1000, policy = 1008, internalError = 1011, tryAgainLater = 1013
    }

    let service: any TerminalService
    let preferences: [UInt8]
    /// ttyd's --url-arg: nil when the URL's arguments break the bounds.
    let arguments: [[UInt8]]?
    /// What the vault is given instead of the hello's AuthToken: the user a reverse proxy's
    /// header named (ttyd's --auth-header). Nil: the AuthToken.
    let token: [UInt8]?
    let logger: Logger
    var counters: RoleCounters?

    func run(_ session: NIOAsyncChannel<ClientMessage, WebSocketFrame>) async {
        try? await session.executeThenClose { inbound, outbound in
            var messages = inbound.makeAsyncIterator()
            guard let first = try await messages.next() else { return }
            guard let hello = TtydProtocol.hello(first.bytes) else {
                return await Self.close(outbound, .policy, "the first message must be ttyd's JSON")
            }
            guard var request = TtydProtocol.attachRequest(hello) else {
                return await Self.close(outbound, .policy, "a session needs its id and a secret")
            }
            guard let arguments else {
                return await Self.close(outbound, .policy,
                                        "at most \(LinkLimits.urlArguments) URL arguments of at most \(LinkLimits.urlArgument) bytes")
            }
            if let token { request.token = token }
            // Arguments start a new session's command; joining one, they have no use.
            if request.session == nil { request.arguments = arguments }
            guard let attachment = service.attachment() else {
                return await Self.close(outbound, .internalError, "no terminal service")
            }
            try await attachment.send(.attach(request))
            let info: SessionInfo
            switch try await attachment.receive() {
            case .attached(let attached):
                info = attached
                try await outbound.write(Self.binary(TtydProtocol.title, Array(info.title.utf8)))
                try await outbound.write(Self.binary(TtydProtocol.preferences, preferences))
                try await outbound.write(Self.binary(TtydProtocol.sessionMessage(info)))
            case .refused(let refusal):
                logger.warning("attachment refused", metadata: ["refusal": "\(refusal)"])
                switch refusal {
                case .badCredential: return await Self.close(outbound, .policy, "authentication failed")
                case .busy: return await Self.close(outbound, .tryAgainLater, "the server takes no more clients now")
                default: return await Self.close(outbound, .policy, "no terminal")
                }
            case .accepted, .output, .resynced, .exited, nil:
                return await Self.close(outbound, .internalError, "no terminal")
            }
            // Shell to client in a task of its own; client to shell here, until the client
            // goes or the shell's exit closes the connection.
            let channel = session.channel
            let output = Task {
                var info = info  // its offset moves with each re-synchronisation
                while let message = try? await attachment.receive() {
                    switch message {
                    case .output(let bytes):
                        counters?.add(bytes.count, to: .bytesToClients)
                        guard (try? await outbound.write(Self.binary(TtydProtocol.output, bytes))) != nil else { return }
                    case .resynced(let offset, let skipped):
                        info.offset = offset
                        info.skipped = skipped
                        guard (try? await outbound.write(Self.binary(TtydProtocol.sessionMessage(info, resynced: true)))) != nil
                        else { return }
                    case .exited(let exit):
                        return await Self.closeAfterFlush(channel, .normal, "\(exit)")
                    case .refused(let refusal):
                        if refusal == .kicked {
                            return await Self.closeAfterFlush(channel, .normal, "disconnected by the operator")
                        }
                        // Too slow for the session, by the operator's policy: it may resume.
                        return await Self.closeAfterFlush(channel, .tryAgainLater, "fell behind the session")
                    case .accepted, .attached:
                        break  // answers to the first message only
                    }
                }
                channel.close(promise: nil)
            }
            while let message = try? await messages.next() {
                guard let command = TtydProtocol.command(message.bytes) else { continue }
                guard (try? await attachment.send(command)) != nil else { break }
            }
            await attachment.end()
            output.cancel()
            await output.value
        }
    }

    static func close(_ outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>, _ code: Close, _ reason: String) async {
        try? await outbound.write(closeFrame(code, reason))
    }

    /// Closes the connection once the close frame has reached the socket: closing at once
    /// would drop it with whatever output a client that reads slowly has not taken yet. A
    /// client that takes nothing more within the grace is cut off all the same.
    static func closeAfterFlush(_ channel: any Channel, _ code: Close, _ reason: String) async {
        let cutOff = channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
        // The frame follows this task's earlier writes: each was handed to the channel
        // before the next one began.
        try? await channel.writeAndFlush(closeFrame(code, reason))
        cutOff.cancel()
        channel.close(promise: nil)
    }

    static func closeFrame(_ code: Close, _ reason: String) -> WebSocketFrame {
        var data = ByteBuffer()
        data.writeInteger(code.rawValue)
        data.writeString(reason)
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
    }

    static func binary(_ type: UInt8, _ bytes: [UInt8]) -> WebSocketFrame {
        var data = ByteBuffer()
        data.reserveCapacity(bytes.count + 1)
        data.writeInteger(type)
        data.writeBytes(bytes)
        return WebSocketFrame(fin: true, opcode: .binary, data: data)
    }

    /// A message whose type byte is already its first.
    static func binary(_ message: [UInt8]) -> WebSocketFrame {
        WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: message))
    }
}
