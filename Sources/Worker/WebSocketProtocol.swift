import NIOCore
import NIOWebSocket

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

/// The RFC 6455 checks NIOWebSocket leaves to the application, as the Autobahn TestSuite
/// exercises them: client frames must be masked; no reserved bits (no extension is
/// negotiated); no reserved opcodes; continuation frames only inside a fragmented message and
/// data frames never inside one; text messages and close reasons must be valid UTF-8; close
/// codes must be ones a peer may send. Pings are answered, pongs ignored, a close is echoed.
/// Every violation closes the connection with the status code the RFC names. (NIO's decoder
/// itself enforces the frame size limit and control frames' length and FIN.)
final class WebSocketProtocolHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ClientMessage
    typealias OutboundOut = WebSocketFrame

    private let maxMessageBytes: Int
    private var fragments: (opcode: WebSocketOpcode, bytes: [UInt8])?
    private var closing = false

    init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closing else { return }
        guard frame.maskKey != nil else { return fail(context, .protocolError, "unmasked client frame") }
        guard frame.reservedBits.rawValue == 0 else { return fail(context, .protocolError, "reserved bits set") }
        switch frame.opcode {
        case .ping:
            var pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            pong.maskKey = nil
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            receivedClose(context, frame.unmaskedData)
        case .text, .binary:
            guard fragments == nil else { return fail(context, .protocolError, "new message inside a fragmented one") }
            let bytes = Array(buffer: frame.unmaskedData)
            guard bytes.count <= maxMessageBytes else { return fail(context, .messageTooLarge, "message too large") }
            if frame.fin {
                deliver(context, frame.opcode, bytes)
            } else {
                fragments = (frame.opcode, bytes)
            }
        case .continuation:
            guard var pending = fragments else { return fail(context, .protocolError, "continuation without a message") }
            guard pending.bytes.count + frame.length <= maxMessageBytes else {
                return fail(context, .messageTooLarge, "message too large")
            }
            pending.bytes += Array(buffer: frame.unmaskedData)
            if frame.fin {
                fragments = nil
                deliver(context, pending.opcode, pending.bytes)
            } else {
                fragments = pending
            }
        default:
            fail(context, .protocolError, "reserved opcode")
        }
    }

    private func deliver(_ context: ChannelHandlerContext, _ opcode: WebSocketOpcode, _ bytes: [UInt8]) {
        if opcode == .text {
            guard String(validating: bytes, as: UTF8.self) != nil else {
                return fail(context, .dataInconsistentWithMessage, "text message is not UTF-8")
            }
            context.fireChannelRead(wrapInboundOut(.text(bytes)))
        } else {
            context.fireChannelRead(wrapInboundOut(.binary(bytes)))
        }
    }

    private func receivedClose(_ context: ChannelHandlerContext, _ payload: ByteBuffer) {
        var payload = payload
        var code: UInt16 = 1000
        switch payload.readableBytes {
        case 0:
            // No status code: answer with an empty close too.
            return close(context, code: nil, reason: "")
        case 1:
            return fail(context, .protocolError, "close payload of one byte")
        default:
            code = payload.readInteger(as: UInt16.self)!
            guard Self.isValidReceivedCloseCode(code) else { return fail(context, .protocolError, "invalid close code") }
            guard String(validating: payload.readableBytesView, as: UTF8.self) != nil else {
                return fail(context, .dataInconsistentWithMessage, "close reason is not UTF-8")
            }
        }
        close(context, code: code, reason: "")
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

    private func fail(_ context: ChannelHandlerContext, _ code: WebSocketErrorCode, _ reason: String) {
        var buffer = context.channel.allocator.buffer(capacity: 2)
        buffer.write(webSocketErrorCode: code)
        close(context, code: UInt16(buffer.getInteger(at: 0, as: UInt16.self)!), reason: reason)
    }

    private func close(_ context: ChannelHandlerContext, code: UInt16?, reason: String) {
        guard !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            data.writeInteger(code)
            data.writeString(String(reason.prefix(100)))
        }
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { [channel = context.channel] _ in
            channel.close(promise: nil)
        }
    }
}
