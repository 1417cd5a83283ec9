import NIOCore
import NIOPosix
import SystemCalls
import SystemPackage

/// A transport on a SwiftNIO channel: the circuits protocol (handshake, frames, conversations,
/// credit) over a unix stream socket, read and written by the event loop that also serves the
/// role's other channels. A message therefore reaches its consumer on the thread that reads
/// it, with no hand-over between threads; that is what the links on a keystroke's path need.
///
/// Frames follow each other on the stream, each header giving its payload's length, and a
/// stream carries no descriptors: the handshake declares none, and a frame that names any is
/// a protocol error. Links that pass descriptors use `Transport` (SOCK_SEQPACKET).
///
/// Everything here belongs to the channel's event loop: create, call and drop it there.
/// Writes are flushed once per turn of the loop, so what one turn sends to a peer leaves in
/// one system call.
public final class ChannelTransport<Id: FixedWidthInteger & UnsignedInteger & Sendable>: @unchecked Sendable {
    public let eventLoop: EventLoop
    let channel: Channel
    let layout: TransportCore.Layout
    var table: ConversationTable<ChannelCircuit<Id>>
    private(set) var peer: Handshake?
    /// Why the transport stopped, or nil while it runs.
    public private(set) var failure: CircuitError?
    /// Completed with the transport once the peer's handshake has been checked.
    private var ready: EventLoopPromise<ChannelTransport>?
    private var handshakeTimer: Scheduled<Void>?
    private var flushScheduled = false
    private let lingerMilliseconds: Int

    /// A conversation the peer started. Set its `onMessage` here (or later): its first
    /// message is handed over once there is one. A transport without this abandons them, so a
    /// side that serves conversations gives it to `start`, which sets it before anything is
    /// read: the peer may open one as soon as the handshakes have crossed.
    public var onConversation: ((ChannelCircuit<Id>) -> Void)?
    /// The transport stopped (the peer closed it, it broke the protocol, or `close` was
    /// called); every unfinished conversation's `onFailure` has been called before.
    public var onClose: ((CircuitError) -> Void)?

    /// Takes ownership of `socket` (a connected unix stream socket; closed on every path),
    /// exchanges handshakes on `loop` and succeeds once the peer's has been checked; the
    /// conversations the peer starts go to `onConversation` from the first.
    public static func start(socket: SystemPackage.FileDescriptor, configuration: TransportConfiguration<Id>,
                             on loop: EventLoop,
                             onConversation: (@Sendable (ChannelCircuit<Id>) -> Void)? = nil) -> EventLoopFuture<ChannelTransport> {
        do {
            try configuration.validate()
            guard configuration.maxDescriptorsPerMessage == 0 else {
                throw CircuitError.invalidConfiguration("a stream transport carries no descriptors (maxDescriptorsPerMessage must be 0)")
            }
        } catch {
            try? socket.close()
            return loop.makeFailedFuture(error)
        }
        let layout = TransportCore.Layout(configuration)
        let ready = loop.makePromise(of: ChannelTransport.self)
        ClientBootstrap(group: loop)
            // Keystrokes are the rule; bulk output grows the reads to 256 KiB.
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 4096, maximum: 256 * 1024))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let transport = ChannelTransport(channel: channel, layout: layout, configuration: configuration)
                    transport.onConversation = onConversation
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(ByteToMessageHandler(StreamFrameDecoder(limits: layout.limits, transport: transport)))
                    try sync.addHandler(TransportHandler(transport: transport))
                    transport.ready = ready
                }
            }
            .withConnectedSocket(socket.rawValue)
            .whenFailure { error in
                try? socket.close()  // not taken over: still ours
                ready.fail(error)
            }
        return ready.futureResult
    }

    private init(channel: Channel, layout: TransportCore.Layout, configuration c: TransportConfiguration<Id>) {
        self.channel = channel
        eventLoop = channel.eventLoop
        self.layout = layout
        lingerMilliseconds = c.closeLingerMilliseconds
        table = ConversationTable(side: c.side, maxCircuits: c.maxCircuits, window: UInt64(c.window),
                                  reservedBand: UInt64(c.reservedBand), reserved: layout.reserved.keys)
        for id in layout.reserved.keys { table.reserved(id)?.transport = self }
        let timeout = c.handshakeTimeoutMilliseconds
        handshakeTimer = eventLoop.scheduleTask(in: .milliseconds(Int64(timeout))) { [self] in
            fail(.handshakeTimeout(milliseconds: timeout))
        }
    }

    /// The channel is up. Our handshake goes out before we read theirs: a peer that rejects
    /// us then still has its own on the wire before it closes, so both ends name the mismatch.
    func begin() {
        writeFrame(.handshake, circuit: 0, end: false, kind: nil, payload: buffer(layout.handshake.encode()))
    }

    /// The peer's declared intent and build, once the handshake is done.
    public var peerBuild: String? { peer?.build }

    /// Starts a conversation on an idle circuit this side may start on.
    public func open() throws(CircuitError) -> ChannelCircuit<Id> {
        eventLoop.assertInEventLoop()
        if let failure { throw failure }
        let circuit = try table.open()
        circuit.transport = self
        return circuit
    }

    /// The agreed reserved circuit `id`.
    public func reserved(_ id: Id) throws(CircuitError) -> ChannelCircuit<Id> {
        guard let circuit = table.reserved(UInt64(id)) else { throw .notReserved(id: UInt64(id)) }
        return circuit
    }

    /// Closes the transport: what was sent is flushed first (for at most the configured
    /// linger), every unfinished conversation learns `.closed`, and the socket is closed.
    public func close() {
        eventLoop.assertInEventLoop()
        guard failure == nil else { return }
        stop(.closed)
        let channel = self.channel
        let linger = eventLoop.scheduleTask(in: .milliseconds(Int64(lingerMilliseconds))) { channel.close(promise: nil) }
        // Writes complete in order: once this empty one has, everything before it was written.
        channel.writeAndFlush(ByteBuffer()).whenComplete { _ in
            linger.cancel()
            channel.close(promise: nil)
        }
    }

    // MARK: Sending

    func buffer(_ bytes: [UInt8]) -> ByteBuffer {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        return buffer
    }

    func send(on circuit: ChannelCircuit<Id>, kind: UInt8?, payload: ByteBuffer, end: Bool) throws(CircuitError) -> Bool {
        eventLoop.assertInEventLoop()
        if let failure { throw failure }
        guard let peer else { throw .closed }
        let length = payload.readableBytes + (kind == nil ? 0 : 1)
        guard try table.reserve(circuit, length: length, descriptors: 0, end: end, peer: peer) else {
            circuit.wantsCredit = true
            return false
        }
        writeFrame(.data, circuit: circuit.id, end: end, kind: kind, payload: payload)
        // Frames leave in the order they were written, so nothing sent later can overtake it.
        if end {
            table.endWritten(circuit)
            circuit.sentItsEnd()
        }
        return true
    }

    /// Payloads up to this size are copied behind their header, so that a small frame is one
    /// buffer; larger ones are written as they are.
    private static var copiedPayload: Int { 1024 }

    private func writeFrame(_ frameKind: FrameKind, circuit: UInt64, end: Bool, kind: UInt8?, payload: ByteBuffer) {
        let length = payload.readableBytes + (kind == nil ? 0 : 1)
        let small = payload.readableBytes <= Self.copiedPayload
        var head = channel.allocator.buffer(capacity: layout.limits.headerSize + 1 + (small ? payload.readableBytes : 0))
        head.writeWithUnsafeMutableBytes(minimumWritableBytes: layout.limits.headerSize) { bytes in
            FrameHeader(kind: frameKind, end: end, descriptorCount: 0, length: length, circuit: circuit)
                .encode(into: bytes, idBytes: layout.idBytes)
            return layout.limits.headerSize
        }
        if let kind { head.writeInteger(kind) }
        if small {
            head.writeImmutableBuffer(payload)
            channel.write(head, promise: nil)
        } else {
            channel.write(head, promise: nil)
            channel.write(payload, promise: nil)
        }
        scheduleFlush()
    }

    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        eventLoop.execute { [self] in
            flushScheduled = false
            channel.flush()
        }
    }

    private func grant(_ limit: UInt64, on id: UInt64) {
        var value = limit.littleEndian
        writeFrame(.credit, circuit: id, end: false, kind: nil,
                   payload: withUnsafeBytes(of: &value) { buffer(Array($0)) })
    }

    /// A consumer took a message: credit goes back every half window.
    func consumed(_ cost: Int, on circuit: ChannelCircuit<Id>) {
        guard failure == nil, let limit = table.consume(cost, circuit.credit) else { return }
        grant(limit, on: circuit.id)
    }

    func abandon(_ circuit: ChannelCircuit<Id>, droppedCost: Int) {
        guard failure == nil, !(circuit.sentEnd && circuit.peerEnded) else { return }
        circuit.abandoned = true
        if droppedCost > 0, let limit = table.consume(droppedCost, circuit.credit) { grant(limit, on: circuit.id) }
        if !circuit.ending {
            // A bare end needs no credit.
            table.beginEnding(circuit)
            writeFrame(.data, circuit: circuit.id, end: true, kind: nil, payload: ByteBuffer())
            table.endWritten(circuit)
        }
    }

    // MARK: Receiving

    func received(_ frame: StreamFrame) throws(CircuitError) {
        let h = frame.header
        guard let peer else {
            guard h.kind == .handshake else { throw .malformedHandshake("a \(h.kind) frame arrived before the handshake") }
            return try acceptHandshake(Array(buffer: frame.payload))
        }
        if h.circuit < layout.band && layout.reserved[h.circuit] == nil { throw .unagreedReservedCircuit(id: h.circuit) }
        switch h.kind {
        case .handshake:
            throw .malformedHandshake("second handshake from \(peer.intent)")
        case .credit:
            var payload = frame.payload
            guard payload.readableBytes == 8, let limit = payload.readInteger(endianness: .little, as: UInt64.self) else {
                throw .malformedCredit(id: h.circuit)
            }
            _ = table.raiseLimit(limit, on: h.circuit)
            table.conversations[h.circuit]?.creditArrived()
        case .data:
            let routed = try table.route(h)
            if let grant = routed.grant { self.grant(grant, on: h.circuit) }
            if routed.started {
                let circuit = table.nextIncoming()!
                circuit.transport = self
                if let onConversation { onConversation(circuit) } else { circuit.abandon() }
            }
            guard !routed.discard else { return }
            routed.conversation.received(frame.payload, isEnd: h.end, cost: routed.cost)
        }
    }

    private func acceptHandshake(_ bytes: [UInt8]) throws(CircuitError) {
        let theirs = try Handshake.decode(bytes)
        try layout.handshake.check(peer: theirs)
        peer = theirs
        table.peerHandshake(window: theirs.window)
        handshakeTimer?.cancel()
        handshakeTimer = nil
        ready?.succeed(self)
        ready = nil
    }

    /// The transport stops (first cause wins): the handshake, if still awaited, fails, every
    /// unfinished conversation and then `onClose` learn why, and the channel is closed.
    func fail(_ error: CircuitError) {
        guard failure == nil else { return }
        stop(error)
        channel.close(promise: nil)
    }

    private func stop(_ error: CircuitError) {
        failure = error
        handshakeTimer?.cancel()
        handshakeTimer = nil
        ready?.fail(error)
        ready = nil
        for circuit in table.live { circuit.failed(error) }
        let report = onClose
        onConversation = nil
        onClose = nil
        report?(error)
    }
}

/// The channel's end of a `ChannelTransport`: it starts the handshake, learns of failures,
/// and keeps the transport alive for as long as the channel (the frames themselves go from
/// `StreamFrameDecoder` to the transport).
final class TransportHandler<Id: FixedWidthInteger & UnsignedInteger & Sendable>: ChannelInboundHandler {
    typealias InboundIn = Never

    let transport: ChannelTransport<Id>

    init(transport: ChannelTransport<Id>) { self.transport = transport }

    func channelActive(context: ChannelHandlerContext) {
        transport.begin()
        context.fireChannelActive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? CircuitError { return transport.fail(error) }
        let errno = (error as? IOError).map { Errno(rawValue: $0.errnoCode) } ?? .ioError
        // A peer that closed with data unread resets the connection: it went away all the same.
        if errno == .connectionReset || errno == .brokenPipe { return transport.fail(.peerClosed) }
        transport.fail(.system(SystemCallError(call: "read", errno: errno, detail: "\(error)")))
    }

    func channelInactive(context: ChannelHandlerContext) {
        transport.fail(.peerClosed)
        context.fireChannelInactive()
    }
}
