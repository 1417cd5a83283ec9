import NIOCore
import NIOWebSocket

/// A violation of RFC 6455 by the client, with the status code the RFC names for it.
struct WebSocketViolation: Error, Equatable {
    var code: WebSocketErrorCode
    var reason: String
}

/// The checks on every frame as it arrives, before fragments are joined (joining drops what
/// they look at): client frames must be masked; no reserved bits (no extension is
/// negotiated); no reserved opcodes. A violation is raised as a `WebSocketViolation` for
/// `WebSocketMessageHandler` to close with, and nothing after it is passed on. (NIO's decoder
/// itself enforces the frame size limit and control frames' length and FIN.)
final class WebSocketFrameChecks: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame

    private var failed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let frame = unwrapInboundIn(data)
        let violation: String?
        if frame.maskKey == nil {
            violation = "unmasked client frame"
        } else if frame.reservedBits.rawValue != 0 {
            violation = "reserved bits set"
        } else {
            switch frame.opcode {
            case .text, .binary, .continuation, .ping, .pong, .connectionClose: violation = nil
            default: violation = "reserved opcode"
            }
        }
        guard let violation else { return context.fireChannelRead(data) }
        failed = true
        context.fireErrorCaught(WebSocketViolation(code: .protocolError, reason: violation))
    }
}
