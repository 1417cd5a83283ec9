import NIOCore
import NIOHTTP1
import NIOWebSocket

/// An opening handshake the worker refused, and the answer it gets. NIO's typed upgrader
/// drops a request it does not upgrade, so the verdict is kept here for `HTTPHandler`.
struct HandshakeRefusal {
    var request: HTTPRequestHead
    var status: HTTPResponseStatus
    var body: String
}

/// Plain HTTP: the page, ttyd's `/token`, and refusals, including the refused opening
/// handshake it is added after. Basic auth is decided by the vault; this handler only
/// forwards what the client sent.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: any TerminalService
    private let settings: WebWorker.Settings
    private let refusal: HandshakeRefusal?
    private var head: HTTPRequestHead?

    init(service: any TerminalService, settings: WebWorker.Settings, refusal: HandshakeRefusal?) {
        self.service = service
        self.settings = settings
        self.refusal = refusal
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let refusal else { return }
        respond(context, refusal.request, refusal.status, type: "text/plain", body: refusal.body, close: true)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break  // no route takes a body; it is read and dropped, bounded by the decoder
        case .end:
            guard let head else { return }
            self.head = nil
            route(context, head)
        }
    }

    private func route(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? "/"
        guard head.method == .GET || head.method == .HEAD else {
            return respond(context, head, .methodNotAllowed, type: "text/plain", body: "method not allowed\n", extra: ["Allow": "GET, HEAD"])
        }
        switch path {
        case "/", "/index.html", "/token":
            let token = Self.basicToken(head.headers)
            let promise = context.eventLoop.makePromise(of: Bool.self)
            let service = self.service
            promise.completeWithTask { await service.check(token: Array(token.utf8)) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { allowed in
                let (handler, context) = bound.value
                guard allowed else {
                    return handler.respond(context, head, .unauthorized, type: "text/plain", body: "authentication required\n",
                                           extra: ["WWW-Authenticate": "Basic realm=\"cloister\""])
                }
                if path == "/token" {
                    handler.respond(context, head, .ok, type: "application/json;charset=utf-8", body: "{\"token\": \"\(Self.jsonEscaped(token))\"}")
                } else {
                    handler.respond(context, head, .ok, type: "text/html;charset=utf-8", body: Page.html)
                }
            }
        case "/ws":
            let refusal = WebWorker.handshakeRefusal(head, checkOrigin: settings.checkOrigin)
                ?? HandshakeRefusal(request: head, status: .badRequest, body: WebWorker.handshakeRequired)
            respond(context, head, refusal.status, type: "text/plain", body: refusal.body, close: true)
        default:
            respond(context, head, .notFound, type: "text/plain", body: "not found\n")
        }
    }

    /// The base64 part of `Authorization: Basic ...`, which is also ttyd's AuthToken.
    static func basicToken(_ headers: HTTPHeaders) -> String {
        guard let value = headers.first(name: "authorization") else { return "" }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic" else { return "" }
        return parts[1].trimmingCharacters(in: " ")
    }

    static func jsonEscaped(_ text: String) -> String {
        // A base64 token has nothing to escape; anything else a client sends is dropped to
        // keep the response well-formed.
        String(text.unicodeScalars.filter { $0.isASCII && $0.value >= 0x20 && $0 != "\"" && $0 != "\\" }.map(Character.init))
    }

    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus,
                         type: String, body: String, extra: [String: String] = [:], close: Bool = false) {
        let keepAlive = request.isKeepAlive && !close
        var headers: HTTPHeaders = [
            "Content-Type": type, "Content-Length": "\(body.utf8.count)", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Connection": keepAlive ? "keep-alive" : "close",
        ]
        for (name, value) in extra { headers.add(name: name, value: value) }
        let response = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
    }
}

private extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
    }
}

/// Requests the decoder refuses: 431 for headers over the limit, 400 for the rest; the
/// connection is closed either way. An opening handshake NIO's upgrader refuses itself
/// (no key, another version) is recorded as a 400 for `HTTPHandler` to answer.
final class HTTPErrorHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "cloister.http-errors"

    private let refusal: NIOLoopBoundBox<HandshakeRefusal?>

    init(refusal: NIOLoopBoundBox<HandshakeRefusal?>) {
        self.refusal = refusal
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOWebSocketUpgradeError {
            // Our own checks record a more precise answer before this.
            if refusal.value == nil {
                refusal.value = HandshakeRefusal(request: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws"),
                                                 status: .badRequest, body: WebWorker.handshakeRequired)
            }
            return
        }
        guard let parserError = error as? HTTPParserError else {
            context.close(promise: nil)
            return
        }
        let status: HTTPResponseStatus = parserError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
        let head = HTTPResponseHead(version: .http1_1, status: status,
                                    headers: ["Content-Length": "0", "Connection": "close"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { [channel = context.channel] _ in
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }
}
