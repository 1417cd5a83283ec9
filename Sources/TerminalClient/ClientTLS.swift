import NIOCore
import Synchronization
import NIOPosix
import NIOSSL
import NIOTLS

#if canImport(Glibc)
import Glibc
#endif

/// TLS for the client with swift-nio-ssl, the TLS library the workers use (BoringSSL): the
/// connection's TLS runs on an event loop, and the client reads and writes plain bytes on the
/// other end of a socket pair, as it would on a TCP socket. It offers HTTP/1.1 by ALPN.
public enum ClientTLS {
    /// How the server's certificate is checked.
    public enum Verification: Sendable, Hashable {
        /// Against the system's trust store (and `extraRoots`, a PEM file, when given), and
        /// for the server: the certificate must name `serverName` (sent by SNI too), or, when
        /// it is nil, the address connected to.
        case full(extraRoots: String?, serverName: String?)
        /// Not at all: only for tests and benchmarks against a certificate they made.
        case none
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Runs TLS over the connected TCP socket `socket` (taken over, closed with the
    /// connection) to `address` (for messages), once the handshake has completed; returns the
    /// plain end, the caller's to close (which closes the connection).
    public static func tunnel(socket: Int32, address: String, verification: Verification, timeoutSeconds: Int) throws -> Int32 {
        var serverName: String?
        if case .full(_, let name) = verification { serverName = name }
        let context: NIOSSLContext
        do {
            context = try self.context(for: verification)
        } catch {
            close(socket)
            throw Failure(description: "TLS: \(error)")
        }
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            let failure = Failure(description: "socketpair: errno \(errno)")
            close(socket)
            throw failure
        }
        let (plainEnd, name) = (pair[1], serverName)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let handshake = loop.makePromise(of: Void.self)
        let plainGlue = Glue(), tlsGlue = Glue()
        Glue.join(plainGlue, tlsGlue)
        let connected = ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Without a name, the certificate is checked against the peer's address.
                    let handler = try NIOSSLClientHandler(context: context, serverHostname: name)
                    try channel.pipeline.syncOperations.addHandlers(handler, HandshakeWatch(done: handshake), tlsGlue)
                }
            }
            .withConnectedSocket(socket)
            .flatMap { tls in
                ClientBootstrap(group: loop)
                    .channelOption(.allowRemoteHalfClosure, value: false)
                    .channelInitializer { $0.pipeline.addHandler(plainGlue) }
                    .withConnectedSocket(plainEnd)
                    .map { _ in tls }
            }
        // A client without a read timeout (0, `attach`) still gives a handshake this long.
        let handshakeSeconds = timeoutSeconds > 0 ? timeoutSeconds : 30
        do {
            let tls = try connected.wait()
            let deadline = loop.scheduleTask(in: .seconds(Int64(handshakeSeconds))) {
                handshake.fail(Failure(description: "TLS handshake: no answer in \(handshakeSeconds) s"))
            }
            defer { deadline.cancel() }
            do {
                try handshake.futureResult.wait()
            } catch {
                tls.close(promise: nil)
                throw error
            }
        } catch let error as NIOSSLExtraError where error == .failedToValidateHostname {
            close(pair[0])
            throw Failure(description: "TLS handshake: the server's certificate does not name \(serverName ?? address)")
        } catch let error as NIOSSLError where "\(error)".contains("CERTIFICATE_VERIFY_FAILED") {
            // BoringSSL's reason is only in its error queue's text.
            close(pair[0])
            throw Failure(description: "TLS handshake: the server's certificate is not signed by a trusted certificate authority (\(error))")
        } catch {
            close(pair[0])
            throw (error as? Failure) ?? Failure(description: "TLS handshake: \(error)")
        }
        return pair[0]
    }

    /// One context per way of verifying, made once: a context reads the trust store, which
    /// costs more than a handshake (a benchmark opening sessions measured the client, not
    /// the servers, until contexts were kept).
    private static let contexts = Mutex<[Verification: NIOSSLContext]>([:])

    private static func context(for verification: Verification) throws -> NIOSSLContext {
        if let known = contexts.withLock({ $0[verification] }) { return known }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        switch verification {
        case .none:
            configuration.certificateVerification = .none
        case .full(let extraRoots, _):
            configuration.certificateVerification = .fullVerification
            if let extraRoots { configuration.additionalTrustRoots = [.file(extraRoots)] }
        }
        let made = try NIOSSLContext(configuration: configuration)
        contexts.withLock { $0[verification] = made }
        return made
    }

    /// Fulfils `done` when the handshake has completed, fails it on the first error.
    private final class HandshakeWatch: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        let done: EventLoopPromise<Void>
        init(done: EventLoopPromise<Void>) { self.done = done }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .handshakeCompleted = event as? TLSUserEvent {
                done.succeed()
                context.pipeline.syncOperations.removeHandler(self, promise: nil)
            }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            done.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            done.fail(Failure(description: "the connection closed during the TLS handshake"))
            context.fireChannelInactive()
        }
    }

    /// Moves bytes from its channel to its partner's, reading only while the partner can
    /// take more (so a slow side holds the other back instead of queueing without limit),
    /// and closes the partner when its own channel ends. Both channels are on one loop, and
    /// a glue is touched only there (hence unchecked).
    private final class Glue: ChannelDuplexHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        private var partner: Glue?
        private var context: ChannelHandlerContext?
        private var readPending = false

        static func join(_ a: Glue, _ b: Glue) {
            a.partner = b
            b.partner = a
        }

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.context = nil
            partner = nil
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            partner?.context?.write(data, promise: nil)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            partner?.context?.flush()
        }

        func channelInactive(context: ChannelHandlerContext) {
            partner?.context?.close(promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable, let partner, partner.readPending, let other = partner.context {
                partner.readPending = false
                other.read()
            }
        }

        func read(context: ChannelHandlerContext) {
            if partner?.context?.channel.isWritable ?? true {
                context.read()
            } else {
                readPending = true
            }
        }
    }
}
