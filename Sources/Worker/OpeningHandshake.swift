import NIOCore
import NIOHTTP1
import RoleProtocol

#if canImport(Glibc)
import Glibc
#endif

/// An opening handshake the worker refused, and the answer it gets. NIO's typed upgrader
/// drops a request it does not upgrade, so the verdict is kept for `HTTPHandler` to send.
struct HandshakeRefusal {
    var request: HTTPRequestHead
    var status: HTTPResponseStatus
    var body: String
    var headers: [String: String] = [:]
}

/// RFC 6455 §4.2.1–4.2.2: what a server must check in a client's opening handshake, each
/// with the status the RFC names, before anything reaches the vault. The endpoint is `/ws`
/// (under the base path) with ttyd's subprotocol `tty`, from an allowed Origin.
package enum OpeningHandshake {
    static let path = "/ws", version = "13"
    static let required = "a WebSocket handshake with subprotocol tty is required\n"

    /// Whether `head` asks for a WebSocket at all: it names the endpoint or offers an upgrade.
    static func isAttempt(_ head: HTTPRequestHead, settings: WebWorker.Settings) -> Bool {
        settings.basePath.route(head.uri) == .path(path) || head.headers.contains(name: "upgrade")
    }

    /// Why the handshake is refused, or nil to upgrade it.
    /// `newSessions` false: the server drains (`WebWorker.ConnectionTerms`).
    static func refusal(_ head: HTTPRequestHead, settings: WebWorker.Settings, newSessions: Bool = true) -> HandshakeRefusal? {
        func refuse(_ status: HTTPResponseStatus, _ why: String, _ headers: [String: String] = [:]) -> HandshakeRefusal {
            HandshakeRefusal(request: head, status: status, body: why + "\n", headers: headers)
        }
        let checkOrigin = settings.checkOrigin
        guard settings.basePath.route(head.uri) == .path(path) else { return refuse(.notFound, "not found") }
        // §4.2.1 1: an HTTP/1.1 or later GET.
        guard head.method == .GET else { return refuse(.methodNotAllowed, "the opening handshake is a GET", ["Allow": "GET"]) }
        guard head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1) else {
            return refuse(.badRequest, "the opening handshake needs HTTP/1.1 or later")
        }
        // 2: a Host header field.
        guard head.headers[canonicalForm: "host"].count == 1 else { return refuse(.badRequest, "exactly one Host header is required") }
        // 3 and 4: Upgrade with the token websocket, Connection with the token Upgrade.
        guard tokens(head.headers, "upgrade").contains("websocket") else {
            return refuse(.badRequest, "Upgrade: websocket is required")
        }
        guard tokens(head.headers, "connection").contains("upgrade") else {
            return refuse(.badRequest, "Connection: Upgrade is required")
        }
        // 5: a nonce of 16 bytes, base64-encoded, given once.
        let keys = head.headers["sec-websocket-key"]
        guard keys.count == 1, isNonce(keys[0]) else {
            return refuse(.badRequest, "Sec-WebSocket-Key must be 16 bytes in base64, given once")
        }
        // 6 and §4.2.2 4: version 13; another gets 426 naming the version this server speaks.
        let versions = head.headers["sec-websocket-version"]
        guard versions.count == 1 else {
            return refuse(.badRequest, "Sec-WebSocket-Version is required, once", ["Sec-WebSocket-Version": version])
        }
        guard versions[0].trimmingOptionalWhitespace() == version else {
            return refuse(.upgradeRequired, "unsupported WebSocket version", ["Sec-WebSocket-Version": version])
        }
        // 7: Origin, when the client is a browser (ttyd's --check-origin).
        guard originAllowed(head, checkOrigin: checkOrigin) else { return refuse(.forbidden, "origin not allowed") }
        // 8: the subprotocol; ttyd's clients offer tty.
        guard tokens(head.headers, "sec-websocket-protocol").contains("tty") else { return refuse(.badRequest, String(required.dropLast())) }
        // A draining host serves the sessions it holds (their clients name them in the query,
        // as the page and `cloister attach` do) and sends a new one elsewhere.
        guard newSessions || namesSession(head.uri) else {
            return refuse(.serviceUnavailable, "this host is draining: it takes no new session", ["Retry-After": "1"])
        }
        return nil
    }

    /// Whether the query has a non-empty `session` value: the route a balancer follows too.
    static func namesSession(_ uri: String) -> Bool {
        guard let question = uri.firstIndex(of: "?") else { return false }
        return uri[uri.index(after: question)...].split(separator: "&").contains { $0.hasPrefix("session=") && $0.count > 8 }
    }

    /// The client a trusted proxy names: the last entry of the last `X-Forwarded-For` (the one
    /// that proxy appended; earlier ones are the client's own say), if it is a numeric IPv4 or
    /// IPv6 address.
    static func forwardedClient(_ headers: HTTPHeaders) -> [UInt8]? {
        guard let field = headers["x-forwarded-for"].last,
              let last = field.split(separator: ",").last?.trimmingOptionalWhitespace(),
              (1...LinkLimits.forwardedAddress).contains(last.utf8.count) else { return nil }
        var v4 = in_addr(), v6 = in6_addr()
        guard inet_pton(AF_INET, last, &v4) == 1 || inet_pton(AF_INET6, last, &v6) == 1 else { return nil }
        return Array(last.utf8)
    }

    /// The comma-separated tokens of every field named `name`, lowercased.
    static func tokens(_ headers: HTTPHeaders, _ name: String) -> [String] {
        headers[name].flatMap { $0.lowercasedListItems() }
    }

    /// Base64 (with padding) of exactly 16 bytes: 22 characters of the alphabet, the last
    /// carrying no stray bits, then "==".
    package static func isNonce(_ value: String) -> Bool {
        let text = Array(value.trimmingOptionalWhitespace().utf8)
        guard text.count == 24, text[22] == UInt8(ascii: "="), text[23] == UInt8(ascii: "=") else { return false }
        func sextet(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"): return 62
            case UInt8(ascii: "/"): return 63
            default: return nil
            }
        }
        let values = text[..<22].map(sextet)
        guard let last = values.last, values.allSatisfy({ $0 != nil }) else { return false }
        return last! & 0x0f == 0
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
}

/// Sits before NIO's upgrader: a handshake that fails `OpeningHandshake.refusal` has its
/// Upgrade field taken away, so the upgrader passes it on as a plain request, and its verdict
/// is recorded for `HTTPHandler` to answer with the precise status. NIO's upgrader would
/// otherwise check only that a key and version 13 are there, and answer nothing else.
final class HandshakeGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    static let name = "cloister.handshake-gate"

    private let refusal: NIOLoopBoundBox<HandshakeRefusal?>
    private let settings: WebWorker.Settings
    private let newSessions: Bool
    /// Set once a handshake passed: the upgrade takes the HTTP decoder away, and whatever
    /// the client sent after its request (frames in the same packet) comes through here as
    /// raw bytes before this handler is removed. It is passed on untouched.
    private var upgrading = false

    /// The opening handshake's deadline: the connection is closed unless it upgrades first.
    /// The gate leaves the pipeline at the upgrade, and takes the timer with it.
    private var deadline: Scheduled<Void>?

    init(refusal: NIOLoopBoundBox<HandshakeRefusal?>, settings: WebWorker.Settings, newSessions: Bool = true) {
        self.refusal = refusal
        self.settings = settings
        self.newSessions = newSessions
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: settings.handshakeTimeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !upgrading else { return context.fireChannelRead(data) }
        guard case .head(var head) = unwrapInboundIn(data), OpeningHandshake.isAttempt(head, settings: settings) else {
            return context.fireChannelRead(data)
        }
        guard let refused = OpeningHandshake.refusal(head, settings: settings, newSessions: newSessions) else {
            upgrading = true
            return context.fireChannelRead(data)
        }
        refusal.value = refused
        head.headers.remove(name: "upgrade")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }
}
