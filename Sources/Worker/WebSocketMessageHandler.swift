import NIOCore
import NIOWebSocket
import RoleProtocol

/// A complete client message, after RFC 6455's rules were enforced.
public enum ClientMessage: Sendable, Equatable {
    case text([UInt8])
    case binary([UInt8])

    public var bytes: [UInt8] {
        switch self {
        case .text(let b), .binary(let b): return b
        }
    }
}

/// Whole messages (after `NIOWebSocketFrameAggregator` joined the fragments) and control
/// frames: text must be valid UTF-8, a close's code must be one a peer may send and its
/// reason UTF-8; pings are answered, pongs ignored, a close is echoed. Every violation,
/// whether found here, by `WebSocketFrameChecks` or by the aggregator, closes the connection
/// with the status code the RFC names — this is the one place that closes for the protocol.
/// With a ping interval, it pings the client that often and closes (1001) a connection whose
/// last ping is still unanswered when the next is due: a client gone without a word (a laptop
/// lid, a dropped network) is found within two intervals and its session detached.
final class WebSocketMessageHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ClientMessage
    typealias OutboundOut = WebSocketFrame

    private var closing = false
    /// The worker's pings, on this connection's loop; nil: never pinged.
    private let clock: PingClock?
    private var context: ChannelHandlerContext?
    private var unansweredPing: UInt64?
    private var pingsSent: UInt64 = 0

    private let counters: RoleCounters?

    init(clock: PingClock? = nil, counters: RoleCounters? = nil) {
        self.clock = clock
        self.counters = counters
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        clock?.join(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) { leaveClock() }

    func channelInactive(context: ChannelHandlerContext) {
        leaveClock()
        context.fireChannelInactive()
    }

    private func leaveClock() {
        clock?.leave(self)
        context = nil
    }

    /// The clock's tick: a ping, or the close of a connection that did not answer the last.
    func tick() {
        guard let context, !closing else { return }
        if unansweredPing != nil {
            // A client that does not answer may not be reading either: its close frame could
            // wait behind unread output forever, so the connection is closed without waiting.
            return send(context, close: UInt16(webSocketErrorCode: .goingAway), reason: "ping not answered", waitForFlush: false)
        }
        pingsSent += 1
        unansweredPing = pingsSent
        var payload = context.channel.allocator.buffer(capacity: 8)
        payload.writeInteger(pingsSent)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: payload)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            receivedClose(context, frame.unmaskedData)
        case .text:
            let bytes = Array(buffer: frame.unmaskedData)
            guard String(validating: bytes, as: UTF8.self) != nil else {
                return close(context, .dataInconsistentWithMessage, "text message is not UTF-8")
            }
            counters?.add(bytes.count, to: .bytesFromClients)
            context.fireChannelRead(wrapInboundOut(.text(bytes)))
        case .binary:
            counters?.add(frame.length, to: .bytesFromClients)
            context.fireChannelRead(wrapInboundOut(.binary(Array(buffer: frame.unmaskedData))))
        case .pong:
            // Only the answer to the last ping counts; an unsolicited pong is allowed and ignored.
            var payload = frame.unmaskedData
            if let number = payload.readInteger(as: UInt64.self), number == unansweredPing { unansweredPing = nil }
        default:
            break  // the aggregator passes no continuation on
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        switch error {
        case let violation as WebSocketViolation:
            close(context, violation.code, violation.reason)
        case let aggregation as NIOWebSocketFrameAggregator.Error:
            switch aggregation {
            case .receivedNewFrameWithoutFinishingPrevious:
                close(context, .protocolError, "new message inside a fragmented one")
            case .didReceiveFragmentBeforeReceivingTextOrBinaryFrame:
                close(context, .protocolError, "continuation without a message")
            case .accumulatedFrameSizeIsTooLarge, .tooManyFragments, .nonFinalFragmentSizeIsTooSmall:
                close(context, .messageTooLarge, "message too large")
            }
        default:
            context.close(promise: nil)
        }
    }

    private func receivedClose(_ context: ChannelHandlerContext, _ payload: ByteBuffer) {
        var payload = payload
        switch payload.readableBytes {
        case 0:
            // No status code: answer with an empty close too.
            send(context, close: nil, reason: "")
        case 1:
            close(context, .protocolError, "close payload of one byte")
        default:
            let code = payload.readInteger(as: UInt16.self)!
            guard Self.isValidReceivedCloseCode(code) else { return close(context, .protocolError, "invalid close code") }
            guard String(validating: payload.readableBytesView, as: UTF8.self) != nil else {
                return close(context, .dataInconsistentWithMessage, "close reason is not UTF-8")
            }
            send(context, close: code, reason: "")
        }
    }

    /// RFC 6455 section 7.4: codes a peer may put on the wire.
    static func isValidReceivedCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011: return true
        case 1012...1014: return true  // registered since RFC 6455 (IANA)
        case 3000...4999: return true
        default: return false
        }
    }

    private func close(_ context: ChannelHandlerContext, _ code: WebSocketErrorCode, _ reason: String) {
        send(context, close: UInt16(webSocketErrorCode: code), reason: reason)
    }

    private func send(_ context: ChannelHandlerContext, close code: UInt16?, reason: String, waitForFlush: Bool = true) {
        guard !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            data.writeInteger(code)
            data.writeString(String(reason.prefix(100)))
        }
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        let written = context.writeAndFlush(wrapOutboundOut(frame))
        guard waitForFlush else { return context.close(promise: nil) }
        written.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }
}
