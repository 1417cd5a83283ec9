import NIOCore
import NIOHTTP1
import NIOWebSocket
import RoleProtocol
import WebAssets

/// Plain HTTP: the page and its assets (from memory), ttyd's `/token`, and refusals, including the refused opening
/// handshake it is added after. Basic auth is decided by the vault; this handler only
/// forwards what the client sent.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: any TerminalService
    private let settings: WebWorker.Settings
    private let assets: AssetBundle
    private let refusal: HandshakeRefusal?
    private var head: HTTPRequestHead?
    private let counters: RoleCounters

    /// Told when the vault accepts a request's credential.
    private let authentication: ClientAuthentication?

    init(service: any TerminalService, settings: WebWorker.Settings, assets: AssetBundle, refusal: HandshakeRefusal?,
         counters: RoleCounters, authentication: ClientAuthentication? = nil) {
        self.service = service
        self.settings = settings
        self.assets = assets
        self.refusal = refusal
        self.counters = counters
        self.authentication = authentication
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let refusal else { return }
        respond(context, refusal.request, refusal.status, type: "text/plain", body: refusal.body, extra: refusal.headers, close: true)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A refused handshake was answered when this handler was added; the connection closes.
        guard refusal == nil else { return }
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
        let path: String
        switch settings.basePath.route(head.uri) {
        case .path(let routed): path = routed
        case .redirect(let location):
            return respond(context, head, .movedPermanently, type: "text/plain", body: "see \(location)\n", extra: ["Location": location])
        case .outside:
            return respond(context, head, .notFound, type: "text/plain", body: "not found\n")
        }
        guard head.method == .GET || head.method == .HEAD else {
            return respond(context, head, .methodNotAllowed, type: "text/plain", body: "method not allowed\n", extra: ["Allow": "GET, HEAD"])
        }
        switch path {
        case OpeningHandshake.path:
            // Not an upgrade (HandshakeGate records those it refuses, and NIO upgrades the rest).
            respond(context, head, .badRequest, type: "text/plain", body: OpeningHandshake.required, close: true)
        case "/token":
            authorized(context, head) { handler, context in
                // With a proxy's header there is no credential to hand the page.
                let token = handler.settings.authHeader == nil ? Self.basicToken(head.headers) : ""
                handler.respond(context, head, .ok, type: "application/json;charset=utf-8", body: "{\"token\": \"\(Self.jsonEscaped(token))\"}")
            }
        default:
            guard let asset = assets[path] else {
                return respond(context, head, .notFound, type: "text/plain", body: "not found\n")
            }
            authorized(context, head) { handler, context in handler.serve(context, head, asset) }
        }
    }

    /// Runs `then` once the vault has accepted the request's credential; answers 401 otherwise,
    /// and 503 when there is no vault to ask.
    private func authorized(_ context: ChannelHandlerContext, _ head: HTTPRequestHead,
                            then: @escaping (HTTPHandler, ChannelHandlerContext) -> Void) {
        // The vault decides either way: on the credential, or on the name the proxy's header gives.
        let token = settings.authHeader.map { head.headers.first(name: $0) ?? "" } ?? Self.basicToken(head.headers)
        let bound = NIOLoopBound((self, context, then), eventLoop: context.eventLoop)
        service.check(token: Array(token.utf8), on: context.eventLoop).whenSuccess { verdict in
            let (handler, context, then) = bound.value
            if verdict == .unavailable {
                // The vault is restarting: nothing was said about the credential.
                return handler.respond(context, head, .serviceUnavailable, type: "text/plain",
                                       body: "the terminal service is restarting; try again\n", extra: ["Retry-After": "1"])
            }
            guard verdict == .accepted else {
                if handler.settings.authHeader != nil {
                    // ttyd's answer: the proxy in front was expected to authenticate the user.
                    return handler.respond(context, head, .proxyAuthenticationRequired, type: "text/plain",
                                           body: "authentication by the reverse proxy required\n",
                                           extra: ["Proxy-Authenticate": "Basic realm=\"cloister\""])
                }
                return handler.respond(context, head, .unauthorized, type: "text/plain", body: "authentication required\n",
                                       extra: ["WWW-Authenticate": "Basic realm=\"cloister\""])
            }
            handler.authentication?.accepted()
            then(handler, context)
        }
    }

    /// An asset from memory: 304 when the client's copy is current, gzipped when the client
    /// takes gzip. Revalidated on every use, so a changed credential applies at once.
    private func serve(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ asset: Asset) {
        var headers = ["Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"]
        if let policy = asset.securityPolicy { headers["Content-Security-Policy"] = policy }
        var (body, etag) = (asset.body, asset.etag)
        if let gzipped = asset.gzipped, Self.acceptsGzip(head.headers) {
            (body, etag) = (gzipped, asset.gzippedETag)
            headers["Content-Encoding"] = "gzip"
        }
        headers["ETag"] = etag
        if Self.matches(head.headers, etag: etag) {
            headers["Content-Encoding"] = nil
            return respond(context, head, .notModified, type: asset.contentType, body: [], extra: headers, withoutBody: true)
        }
        respond(context, head, .ok, type: asset.contentType, body: body, extra: headers)
    }

    /// If-None-Match names this entity (or any: `*`). Weak comparison, as RFC 9110 asks for it.
    static func matches(_ headers: HTTPHeaders, etag: String) -> Bool {
        for value in headers["if-none-match"] {
            for candidate in value.split(separator: ",") {
                var tag = candidate.trimmingOptionalWhitespace()
                if tag == "*" { return true }
                if tag.hasPrefix("W/") { tag.removeFirst(2) }
                if tag == etag { return true }
            }
        }
        return false
    }

    /// Accept-Encoding lists gzip (or `*`) with a non-zero weight.
    static func acceptsGzip(_ headers: HTTPHeaders) -> Bool {
        var gzip: Bool?, any: Bool?
        for value in headers["accept-encoding"] {
            for item in value.split(separator: ",") {
                let parts = item.split(separator: ";").map { $0.trimmingOptionalWhitespace().lowercased() }
                guard let coding = parts.first else { continue }
                let weight = parts.dropFirst().first { $0.hasPrefix("q=") }.flatMap { Double($0.dropFirst(2)) } ?? 1
                if coding == "gzip" || coding == "x-gzip" { gzip = weight > 0 }
                if coding == "*" { any = weight > 0 }
            }
        }
        return gzip ?? any ?? false
    }

    /// The base64 part of `Authorization: Basic ...`, which is also ttyd's AuthToken.
    static func basicToken(_ headers: HTTPHeaders) -> String {
        guard let value = headers.first(name: "authorization") else { return "" }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic" else { return "" }
        return parts[1].trimmingOptionalWhitespace()
    }

    static func jsonEscaped(_ text: String) -> String {
        // A base64 token has nothing to escape; anything else a client sends is dropped to
        // keep the response well-formed.
        String(text.unicodeScalars.filter { $0.isASCII && $0.value >= 0x20 && $0 != "\"" && $0 != "\\" }.map(Character.init))
    }

    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus,
                         type: String, body: String, extra: [String: String] = [:], close: Bool = false) {
        respond(context, request, status, type: type, body: Array(body.utf8), extra: extra, close: close)
    }

    /// `extra` replaces the defaults it names. A 304 carries no body and no length.
    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus,
                         type: String, body: [UInt8], extra: [String: String] = [:], close: Bool = false, withoutBody: Bool = false) {
        if status.code >= 400 { counters.add(1, to: WorkerCounter.refusal(status: Int(status.code))) }
        let keepAlive = request.isKeepAlive && !close
        var headers: HTTPHeaders = [
            "Content-Type": type, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Connection": keepAlive ? "keep-alive" : "close",
        ]
        if !withoutBody { headers.add(name: "Content-Length", value: "\(body.count)") }
        for (name, value) in extra { headers.replaceOrAdd(name: name, value: value) }
        let response = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if request.method != .HEAD && !withoutBody {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        }
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
    private let counters: RoleCounters

    init(refusal: NIOLoopBoundBox<HandshakeRefusal?>, counters: RoleCounters) {
        self.refusal = refusal
        self.counters = counters
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOWebSocketUpgradeError {
            // Our own checks record a more precise answer before this.
            if refusal.value == nil {
                refusal.value = HandshakeRefusal(request: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws"),
                                                 status: .badRequest, body: OpeningHandshake.required)
            }
            return
        }
        guard let parserError = error as? HTTPParserError else {
            context.close(promise: nil)
            return
        }
        let status: HTTPResponseStatus = parserError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
        counters.add(1, to: WorkerCounter.refusal(status: Int(status.code)))
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
