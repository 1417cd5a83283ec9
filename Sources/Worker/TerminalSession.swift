import Logging
import NIOCore
import NIOWebSocket
import RoleProtocol

/// One ttyd session on an upgraded WebSocket, at the end of its pipeline: authenticate
/// through the vault, attach, then relay both ways until the shell exits (close 1000 with its
/// status) or the client goes (the attachment ends; the session lingers in the vault).
///
/// Both directions are paced by the slower side. Output the vault sends is written to the
/// client as it arrives, and while the client's socket is full the attachment's delivery is
/// paused, so the vault's credit runs out and it holds (or drops, for a viewer) the rest.
/// Commands the vault has no room for yet wait here, with reading from the client stopped.
final class TerminalSession: ChannelInboundHandler {
    typealias InboundIn = ClientMessage
    typealias OutboundOut = WebSocketFrame

    enum Close: UInt16 {
        case normal = 1000, policy = 1008, internalError = 1011, tryAgainLater = 1013
    }

    private enum State {
        /// Waiting for ttyd's JSON hello.
        case hello
        /// The vault was asked to attach; commands wait for its answer.
        case attaching
        case attached(SessionInfo)
        /// A close is under way; nothing more is relayed.
        case closing
    }

    let service: any TerminalService
    let preferences: [UInt8]
    /// False while the server drains: only an existing session may be resumed or joined.
    let newSessions: Bool
    /// The client's address as a trusted proxy forwarded it, for the vault's audit trail.
    let forwardedFor: [UInt8]?
    /// ttyd's --url-arg: nil when the URL's arguments break the bounds.
    let arguments: [[UInt8]]?
    /// What the vault is given instead of the hello's AuthToken: the user a reverse proxy's
    /// header named (ttyd's --auth-header). Nil: the AuthToken.
    let token: [UInt8]?
    let logger: Logger
    let counters: RoleCounters?

    private var state = State.hello
    private var vault: (any VaultConversation)?
    private var context: ChannelHandlerContext?
    /// Commands the vault has not granted room for yet, oldest first.
    private var waiting: [WorkerToVault] = []

    /// Told when the vault attaches the client (its credential accepted).
    let authentication: ClientAuthentication?

    init(service: any TerminalService, preferences: [UInt8], newSessions: Bool = true, forwardedFor: [UInt8]? = nil,
         arguments: [[UInt8]]?, token: [UInt8]?, logger: Logger, counters: RoleCounters?, authentication: ClientAuthentication? = nil) {
        (self.service, self.preferences, self.newSessions, self.arguments, self.token, self.logger, self.counters) =
            (service, preferences, newSessions, arguments, token, logger, counters)
        self.forwardedFor = forwardedFor
        self.authentication = authentication
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { leave() }

    func channelInactive(context: ChannelHandlerContext) {
        leave()
        context.fireChannelInactive()
    }

    /// The client has gone: what it sent before it went still goes to its shell (as far as
    /// the vault has room; behind the attach, if that is still unanswered, since the vault
    /// reads an attachment in order), then the vault is told, and what it still sends is
    /// dropped.
    private func leave() {
        switch state {
        case .attaching, .attached:
            for command in waiting { guard (try? vault?.send(command.encoded, end: false)) == true else { break } }
        case .hello, .closing:
            break
        }
        state = .closing
        waiting = []
        vault?.abandon()
        vault = nil
        context = nil
    }

    // MARK: The client's side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).bytes
        switch state {
        case .hello:
            hello(bytes, context)
        case .attaching:
            // Reading stopped when the attach went out; what was read already waits with the rest.
            if let command = TtydProtocol.command(bytes) { waiting.append(command) }
        case .attached:
            guard let command = TtydProtocol.command(bytes) else { return }
            waiting.append(command)
            sendWaiting()
        case .closing:
            break
        }
    }

    private func hello(_ bytes: [UInt8], _ context: ChannelHandlerContext) {
        guard let hello = TtydProtocol.hello(bytes) else {
            return close(.policy, "the first message must be ttyd's JSON")
        }
        guard var request = TtydProtocol.attachRequest(hello) else {
            return close(.policy, "a session needs its id and a secret")
        }
        guard let arguments else {
            return close(.policy, "at most \(LinkLimits.urlArguments) URL arguments of at most \(LinkLimits.urlArgument) bytes")
        }
        // The handshake's query named a session; the first message must resume or join one.
        guard newSessions || request.session != nil else {
            return close(.tryAgainLater, "this host is draining: it takes no new session")
        }
        if let token { request.token = token }
        request.forwardedFor = forwardedFor
        // Arguments start a new session's command; joining one, they have no use.
        if request.session == nil { request.arguments = arguments }
        guard let vault = service.conversation(on: context.eventLoop) else {
            return close(.internalError, "no terminal service")
        }
        self.vault = vault
        vault.onMessage = { [unowned self] payload, isEnd in fromVault(payload, isEnd: isEnd) }
        vault.onWritable = { [unowned self] in sendWaiting() }
        vault.onFailure = { [unowned self] _ in vaultLeft() }
        // A new conversation has a whole window of credit.
        guard (try? vault.send(WorkerToVault.attach(request).encoded, end: false)) == true else {
            return close(.internalError, "no terminal")
        }
        state = .attaching
        setReading(false)
    }

    /// Sends the commands that waited, as far as the vault's credit goes; reading from the
    /// client stops while any wait.
    private func sendWaiting() {
        guard case .attached = state, let vault else { return }
        while let command = waiting.first {
            guard (try? vault.send(command.encoded, end: false)) == true else { return setReading(false) }
            waiting.removeFirst()
        }
        setReading(true)
    }

    private var reading = true

    private func setReading(_ on: Bool) {
        guard on != reading, let context else { return }
        reading = on
        try? context.channel.syncOptions?.setOption(.autoRead, value: on)
    }

    // MARK: The vault's side

    private func fromVault(_ payload: ByteBuffer, isEnd: Bool) {
        guard let context else { return }
        if case .attached = state, payload.getInteger(at: payload.readerIndex, as: UInt8.self) == VaultToWorker.outputKind {
            // An output message is ttyd's output message already.
            counters?.add(payload.readableBytes - 1, to: .bytesToClients)
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: payload)), promise: nil)
            flushSoon(context)
            if !context.channel.isWritable { vault?.isDeliveryPaused = true }
            if isEnd { vaultLeft() }
            return
        }
        guard payload.readableBytes > 0 else {
            if isEnd { vaultLeft() }
            return
        }
        switch try? VaultToWorker(decoding: Array(buffer: payload), descriptors: 0) {
        case .attached(let info):
            guard case .attaching = state else { return }
            state = .attached(info)
            authentication?.accepted()
            context.write(wrapOutboundOut(Self.binary(TtydProtocol.title, Array(info.title.utf8))), promise: nil)
            context.write(wrapOutboundOut(Self.binary(TtydProtocol.preferences, preferences)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(Self.binary(TtydProtocol.sessionMessage(info))), promise: nil)
            sendWaiting()
        case .refused(let refusal):
            logger.warning("attachment refused", metadata: ["refusal": "\(refusal)"])
            switch (state, refusal) {
            case (.attaching, .badCredential): close(.policy, "authentication failed")
            case (.attaching, .busy): close(.tryAgainLater, "the server takes no more clients now")
            // Its own host may come back with it (a restart that kept its sessions): try again.
            case (.attaching, .otherHost): close(.tryAgainLater, "the host that holds this session cannot be reached")
            case (.attaching, _): close(.policy, "no terminal")
            case (_, .kicked): close(.normal, "disconnected by the operator")
            case (_, .recordingFailed): close(.normal, "the session's recording failed, and this server ends such sessions")
            // Too slow for the session, by the operator's policy: it may resume.
            case (_, _): close(.tryAgainLater, "fell behind the session")
            }
        case .resynced(let offset, let skipped):
            guard case .attached(var info) = state else { return }
            // Its offset moves with each re-synchronisation; the input offset was for the attach.
            (info.offset, info.skipped, info.inputOffset) = (offset, skipped, nil)
            state = .attached(info)
            context.writeAndFlush(wrapOutboundOut(Self.binary(TtydProtocol.sessionMessage(info, resynced: true))), promise: nil)
        case .exited(let exit):
            close(.normal, "\(exit)")
        case .accepted, .output, nil:
            // Answers to a check, output before the attach was answered, or not a message.
            guard case .attaching = state else { break }
            close(.internalError, "no terminal")
        }
        if isEnd { vaultLeft() }
    }

    private var flushScheduled = false

    /// Output is flushed once per turn of the event loop: what one read of the vault link
    /// brings (many messages, in bulk) leaves in one system call, and a lone message as soon.
    private func flushSoon(_ context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let session = bound.value
            session.flushScheduled = false
            session.context?.flush()
        }
    }

    /// The vault ended the attachment, or its link went, without a word for the client.
    private func vaultLeft() {
        vault = nil
        if case .closing = state { return }
        state = .closing
        context?.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { vault?.isDeliveryPaused = false }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Closing

    /// Closes the connection once the close frame has reached the socket: closing at once
    /// would drop it with whatever output a client that reads slowly has not taken yet. A
    /// client that takes nothing more within the grace is cut off all the same.
    private func close(_ code: Close, _ reason: String) {
        guard let context else { return }
        if case .closing = state { return }
        state = .closing
        waiting = []
        vault?.end()
        let channel = context.channel
        let cutOff = channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
        context.writeAndFlush(wrapOutboundOut(Self.closeFrame(code, reason))).whenComplete { _ in
            cutOff.cancel()
            channel.close(promise: nil)
        }
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
