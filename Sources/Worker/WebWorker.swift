import Logging
import NIOCore
import RoleProtocol
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization
import SystemPackage
import WebAssets

/// The untrusted-input side of Cloister: HTTP/1.1 and WebSocket (ttyd's protocol) on client
/// sockets the supervisor hands over. Runs inside the worker sandbox. It holds no credential
/// and no terminal: credentials go to the vault to be checked, terminals are reached through
/// attachments (`TerminalService`).
public final class WebWorker: Sendable {
    public struct Settings: Sendable {
        /// Refuse WebSocket handshakes whose Origin names another host than Host (ttyd's
        /// --check-origin).
        public var checkOrigin = true
        /// Every route under this prefix (ttyd's --base-path).
        public var basePath = BasePath.root
        /// How often each WebSocket is pinged; one whose ping is unanswered at the next is
        /// closed. Nil: never.
        public var pingInterval: TimeAmount? = .seconds(30)
        /// The header a reverse proxy names the authenticated user in (ttyd's --auth-header);
        /// nil: clients present the credential (HTTP basic auth, ttyd's AuthToken).
        public var authHeader: String?
        /// Whether a new session's command takes the `arg` values of the handshake's query
        /// (ttyd's --url-arg); the vault checks it too.
        public var urlArguments = false
        /// The preferences message's JSON object (ttyd's --client-option): the page's options.
        public var preferences = Array("{}".utf8)
        public var maxHeaderBytes = 16 * 1024
        public var maxFrameBytes = 256 * 1024
        public var maxMessageBytes = 1024 * 1024
        /// Fragments one message may come in.
        public var maxFragments = 4096
        /// Time from connection to a completed WebSocket handshake.
        public var handshakeTimeout: TimeAmount = .seconds(10)
        /// Time from connection to a credential the vault accepts (a page request's or an
        /// attachment's); nil: none.
        public var authenticationDeadline: TimeAmount?
        public init() {}

        /// What the supervisor gave, with the limits that are not options.
        public init(_ given: WorkerSettings) throws {
            checkOrigin = given.checkOrigin
            basePath = try BasePath(given.basePath)
            preferences = Array(given.preferences.utf8)
            urlArguments = given.urlArguments
            authHeader = given.authHeader
            pingInterval = given.pingIntervalMilliseconds > 0 ? .milliseconds(given.pingIntervalMilliseconds) : nil
            authenticationDeadline = given.authenticationDeadlineMilliseconds > 0 ? .milliseconds(given.authenticationDeadlineMilliseconds) : nil
        }
    }

    let settings: Settings
    let service: any TerminalService
    let assets: AssetBundle
    let logger: Logger
    /// TLS for the clients of listeners marked so: nil when the server has none.
    let tls: WorkerTLS?
    /// What the heartbeat replies carry to the supervisor (`WorkerCounter`).
    public let counters = RoleCounters(count: WorkerCounter.allCases.count)
    /// The ping clock of each event loop clients are served on (the worker's one loop).
    private let pingClocks = Mutex<[ObjectIdentifier: PingClock]>([:])

    private func pingClock(interval: TimeAmount, on loop: EventLoop) -> PingClock {
        pingClocks.withLock { clocks in
            if let clock = clocks[ObjectIdentifier(loop)] { return clock }
            let clock = PingClock(interval: interval, eventLoop: loop)
            clocks[ObjectIdentifier(loop)] = clock
            return clock
        }
    }

    /// What the supervisor said of one connection when it handed it over.
    public struct ConnectionTerms: Sendable {
        /// False for a connection accepted while the server drains: a handshake that names no
        /// session is answered 503 (a balancer retries it on another host), and a first
        /// message asking for a new session is closed.
        public var newSessions = true
        /// True for a connection from a `--trusted-proxy`: its `X-Forwarded-For` names the
        /// client, for the audit trail.
        public var fromTrustedProxy = false

        public init(newSessions: Bool = true, fromTrustedProxy: Bool = false) {
            (self.newSessions, self.fromTrustedProxy) = (newSessions, fromTrustedProxy)
        }
    }

    public init(settings: Settings, service: any TerminalService, assets: AssetBundle, logger: Logger, tls: WorkerTLS? = nil) {
        self.tls = tls
        self.settings = settings
        self.service = service
        self.assets = assets
        self.logger = logger
    }

    /// Serves one client socket on `loop` (taking ownership of it), behind TLS if `tls`;
    /// `closed` is called once the connection has closed. Returns once the socket is adopted.
    /// `authenticated` is called once, when the vault accepts the client's credential; a
    /// client that has not presented one by `settings.authenticationDeadline` is closed.
    public func serve(client socket: SystemPackage.FileDescriptor, on loop: EventLoop, tls: Bool = false, terms: ConnectionTerms = .init(),
                      authenticated: @escaping @Sendable () -> Void = {},
                      closed: @escaping @Sendable () -> Void) async {
        let authentication = ClientAuthentication(report: authenticated)
        do {
            let channel = try await ClientBootstrap(group: loop)
                // Keystrokes and small frames are the rule; a busy client's reads grow to 64 KiB.
                .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if tls {
                            guard let context = self.tls?.current else {
                                throw TLSSetupError(description: "a TLS client, and no keyholder linked yet")
                            }
                            try channel.pipeline.syncOperations.addHandler(ALPNGate())
                            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                        }
                        _ = try self.configure(channel, terms: terms, authentication: authentication)
                        if let deadline = self.settings.authenticationDeadline {
                            authentication.closeUnlessAccepted(channel, after: deadline)
                        }
                    }
                }
                .withConnectedSocket(socket.rawValue)
                .get()
            channel.closeFuture.whenComplete { _ in closed() }
        } catch {
            logger.error("client socket not adopted", metadata: ["error": "\(error)"])
            try? socket.close()
            closed()
        }
    }

    /// The whole pipeline, on the channel's event loop: HTTP/1.1 with the typed WebSocket
    /// upgrader for `/ws` (subprotocol `tty`) behind the opening handshake's checks
    /// (`HandshakeGate`), the RFC 6455 frame checks, fragments joined within
    /// the message bounds, and a deadline for the opening handshake.
    package func configure(_ channel: Channel, terms: ConnectionTerms = .init(),
                           authentication: ClientAuthentication? = nil) throws -> EventLoopFuture<Void> {
        let (settings, counters, service, logger) = (self.settings, self.counters, self.service, self.logger)
        let clock = settings.pingInterval.map { pingClock(interval: $0, on: channel.eventLoop) }
        // Set on the event loop by the upgrader's checks, read when the request is not upgraded.
        let refusal = NIOLoopBoundBox<HandshakeRefusal?>(nil, eventLoop: channel.eventLoop)
        let upgrader = NIOTypedWebSocketServerUpgrader<Void>(
            maxFrameSize: settings.maxFrameBytes, enableAutomaticErrorHandling: true,
            shouldUpgrade: { channel, _ in
                // HandshakeGate, before this upgrader, already took the Upgrade field away from
                // every handshake that fails a check: what arrives here has passed them all.
                channel.eventLoop.makeSucceededFuture(["Sec-WebSocket-Protocol": "tty"])
            },
            upgradePipelineHandler: { channel, head in
                // HTTP errors are over: what is left is WebSocket's to report.
                channel.pipeline.removeHandler(name: HTTPErrorHandler.name, promise: nil)
                channel.pipeline.removeHandler(name: HandshakeGate.name, promise: nil)
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(WebSocketFrameChecks())
                    try sync.addHandler(NIOWebSocketFrameAggregator(
                        minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: settings.maxFragments,
                        maxAccumulatedFrameSize: settings.maxMessageBytes))
                    try sync.addHandler(WebSocketMessageHandler(clock: clock, counters: counters))
                    // With a proxy's header, the vault is given the user it names (or nothing, and refuses).
                    let token = settings.authHeader.map { Array((head.headers.first(name: $0) ?? "").utf8) }
                    let forwarded = terms.fromTrustedProxy ? OpeningHandshake.forwardedClient(head.headers) : nil
                    try sync.addHandler(TerminalSession(service: service, preferences: settings.preferences, newSessions: terms.newSessions,
                                                        forwardedFor: forwarded,
                                                        arguments: settings.urlArguments ? TtydProtocol.urlArguments(head.uri) : [],
                                                        token: token, logger: logger, counters: counters,
                                                        authentication: authentication))
                }
            })
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = settings.maxHeaderBytes
        limits.maxHeaderFieldSize = settings.maxHeaderBytes
        limits.maxHeaderFieldCount = 100
        let assets = self.assets
        var configuration = NIOUpgradableHTTPServerPipelineConfiguration(
            upgradeConfiguration: .init(upgraders: [upgrader], notUpgradingCompletionHandler: { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPHandler(service: service, settings: settings, assets: assets, refusal: refusal.value, counters: counters,
                                    authentication: authentication))
                }
            }))
        configuration.enableErrorHandling = false
        configuration.decoderConfiguration = limits
        let sync = channel.pipeline.syncOperations
        let upgrade = try sync.configureUpgradableHTTPServerPipeline(configuration: configuration)
        let upgradeHandler = try sync.handler(type: NIOTypedHTTPServerUpgradeHandler<Void>.self)
        try sync.addHandler(HandshakeGate(refusal: refusal, settings: settings, newSessions: terms.newSessions), name: HandshakeGate.name,
                            position: .before(upgradeHandler))
        try sync.addHandler(HTTPErrorHandler(refusal: refusal, counters: counters), name: HTTPErrorHandler.name)
        return upgrade
    }
}
