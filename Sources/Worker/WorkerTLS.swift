import Circuits
import Logging
import NIOCore
import NIOSSL
import RoleProtocol
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The worker's TLS: the certificate chain the supervisor gave it and a private key that is
/// not here. The handshake and the record layer run in the worker (swift-nio-ssl); each
/// signature the handshake needs is asked of the keyholder over the worker's link to it
/// (`KeyholderKey`). A new link (the keyholder restarted, or reloaded with a new pair) comes
/// with the chain that belongs to its key, and replaces both at once for the handshakes that
/// start afterwards.
public final class WorkerTLS: @unchecked Sendable {
    public let loop: EventLoop
    /// On `loop`.
    private var context: NIOSSLContext?
    private var transport: RoleChannelTransport?
    /// Most bytes of a certificate chain the worker takes.
    static let maxChainBytes = 256 * 1024

    public init(loop: EventLoop) { self.loop = loop }

    /// The context for a new TLS connection, once the keyholder is linked; on `loop`.
    var current: NIOSSLContext? {
        loop.preconditionInEventLoop()
        return context
    }

    /// Takes ownership of `socket` (the link) and `chain` (a sealed memory file with the PEM
    /// chain), whose key is of type `kind`.
    public func replace(link socket: SystemPackage.FileDescriptor, chain: SystemPackage.FileDescriptor, kind: TLSKeyKind) async throws {
        let pem: [UInt8]
        do {
            defer { try? chain.close() }
            pem = try Self.read(chain)
        } catch {
            try? socket.close()
            throw error
        }
        let fresh = try await Link.workerKeyholder.start(socket: socket, side: .opener, on: loop).get()
        do {
            let context = try Self.context(chain: pem, key: KeyholderKey(transport: fresh, loop: loop, kind: kind))
            loop.execute { [self] in
                let previous = transport
                transport = fresh
                self.context = context
                // Handshakes that began with the previous chain still sign with its key.
                if let previous { loop.scheduleTask(in: .seconds(15)) { previous.close() } }
            }
        } catch {
            fresh.close()
            throw error
        }
    }

    /// TLS 1.2 and 1.3 only; HTTP/1.1 by ALPN (`ALPNGate` refuses a client that offers only
    /// other protocols); in TLS 1.2 only ECDHE key exchanges, so no RSA decryption is ever
    /// asked of the keyholder.
    static func context(chain pem: [UInt8], key: KeyholderKey) throws -> NIOSSLContext {
        let certificates = try NIOSSLCertificate.fromPEMBytes(pem)
        guard !certificates.isEmpty else { throw TLSSetupError(description: "the certificate file holds no certificate") }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: certificates.map { .certificate($0) }, privateKey: .privateKey(NIOSSLPrivateKey(customPrivateKey: key)))
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv13
        configuration.applicationProtocols = [ALPNGate.protocolName]
        configuration.cipherSuites = [
            "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        ].joined(separator: ":")
        return try NIOSSLContext(configuration: configuration)
    }

    /// With read(2) alone: the worker's profile has no fstat of a descriptor.
    static func read(_ fd: SystemPackage.FileDescriptor) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
            if n == 0 { return bytes }
            bytes += chunk.prefix(n)
            guard bytes.count <= maxChainBytes else {
                throw TLSSetupError(description: "the certificate chain is over \(maxChainBytes) bytes")
            }
        }
    }
}

struct TLSSetupError: Error, CustomStringConvertible {
    var description: String
}

/// The server's private key as swift-nio-ssl sees it: its signature schemes, and signing
/// that goes to the keyholder (one conversation per signature) and comes back as a future.
struct KeyholderKey: NIOSSLCustomPrivateKey, Hashable {
    let transport: RoleChannelTransport
    /// The loop `transport` is served on (the worker's one loop).
    let loop: EventLoop
    let kind: TLSKeyKind

    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    var signatureAlgorithms: [SignatureAlgorithm] { kind.schemes.map(SignatureAlgorithm.init(rawValue:)) }

    func sign(channel: Channel, algorithm: SignatureAlgorithm, data: ByteBuffer) -> EventLoopFuture<ByteBuffer> {
        let promise = channel.eventLoop.makePromise(of: ByteBuffer.self)
        let request = WorkerToKeyholder.sign(scheme: algorithm.rawValue, data: Array(buffer: data))
        loop.execute { [transport] in
            guard transport.failure == nil, let circuit = try? transport.open() else {
                return promise.fail(Refused(description: "the keyholder is not linked"))
            }
            circuit.onMessage = { payload, _ in
                circuit.onMessage = { _, _ in }
                switch try? KeyholderToWorker(decoding: Array(buffer: payload), descriptors: 0) {
                case .signature(let bytes): promise.succeed(ByteBuffer(bytes: bytes))
                case .refused(let reason): promise.fail(Refused(description: "the keyholder refused: \(reason)"))
                case nil: promise.fail(Refused(description: "the keyholder answered what is not a signature"))
                }
            }
            circuit.onFailure = { error in promise.fail(error) }
            do {
                _ = try circuit.send(request.encoded, end: true)
            } catch {
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    func decrypt(channel: Channel, data: ByteBuffer) -> EventLoopFuture<ByteBuffer> {
        channel.eventLoop.makeFailedFuture(Refused(description: "no RSA key exchange is offered"))
    }

    static func == (a: KeyholderKey, b: KeyholderKey) -> Bool { a.transport === b.transport && a.kind == b.kind }
    func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(transport)) }
}

/// Before TLS: reads the ClientHello's ALPN list and closes the connection, with TLS's
/// no_application_protocol alert, when the client offers protocols but not HTTP/1.1 (a
/// client that offers none is served: most command-line clients do not). swift-nio-ssl would
/// otherwise go on without a protocol. The parse is bounded and read-only; anything it cannot
/// read it leaves to the TLS library.
package final class ALPNGate: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    static let protocolName = "http/1.1"
    /// A ClientHello is read whole from its first record only; TLS allows 16 KiB.
    static let maxRecord = 16 * 1024 + 5
    private var buffered: ByteBuffer?

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var held = buffered {
            held.writeBuffer(&incoming)
            buffered = held
        } else {
            buffered = incoming
        }
        guard let held = buffered else { return }
        switch Self.verdict(Array(held.readableBytesView.prefix(Self.maxRecord))) {
        case .needMore where held.readableBytes < Self.maxRecord:
            return
        case .refuse:
            // A TLS alert record: fatal (2), no_application_protocol (120).
            let alert: [UInt8] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120]
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: alert)), promise: nil)
            context.close(promise: nil)
            buffered = nil
        default:
            buffered = nil
            context.fireChannelRead(wrapInboundOut(held))
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
    }

    package typealias OutboundOut = ByteBuffer

    package enum Verdict: Equatable { case needMore, pass, refuse }

    /// What the first TLS record says: whether it offers ALPN without HTTP/1.1.
    package static func verdict(_ bytes: [UInt8]) -> Verdict {
        var r = Reader(bytes: bytes)
        guard let type = r.u8() else { return .needMore }
        guard type == 22 else { return .pass }  // not a handshake record: TLS will refuse it
        guard r.skip(2), let length = r.u16() else { return .needMore }
        guard bytes.count >= 5 + Int(length) else { return .needMore }
        var hello = Reader(bytes: Array(bytes[5..<(5 + Int(length))]))
        guard hello.u8() == 1, hello.skip(3),  // ClientHello, its length
              hello.skip(2 + 32),  // version, random
              let session = hello.u8(), hello.skip(Int(session)),
              let suites = hello.u16(), hello.skip(Int(suites)),
              let compressions = hello.u8(), hello.skip(Int(compressions)),
              let extensionsLength = hello.u16(), var extensions = hello.sub(Int(extensionsLength)) else { return .pass }
        while let type = extensions.u16(), let size = extensions.u16(), var body = extensions.sub(Int(size)) {
            guard type == 16 else { continue }  // application_layer_protocol_negotiation
            guard let listLength = body.u16(), var list = body.sub(Int(listLength)) else { return .pass }
            while let nameLength = list.u8(), let name = list.take(Int(nameLength)) {
                if name == Array(protocolName.utf8) { return .pass }
            }
            return .refuse
        }
        return .pass
    }

    struct Reader {
        var bytes: [UInt8]
        var at = 0
        mutating func u8() -> UInt8? { take(1)?.first }
        mutating func u16() -> UInt16? { take(2).map { UInt16($0[0]) << 8 | UInt16($0[1]) } }
        mutating func skip(_ n: Int) -> Bool { take(n) != nil }
        mutating func take(_ n: Int) -> [UInt8]? {
            guard n >= 0, at + n <= bytes.count else { return nil }
            defer { at += n }
            return Array(bytes[at..<(at + n)])
        }
        mutating func sub(_ n: Int) -> Reader? { take(n).map { Reader(bytes: $0) } }
    }
}
