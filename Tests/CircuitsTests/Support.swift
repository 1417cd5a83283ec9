import XCTest
import SystemCalls
import SystemPackage
@testable import Circuits
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

func configuration(_ side: TransportSide, intent: String = "test/1", reserved: [UInt16: String] = [0: "health"],
                   window: Int = 512 * 1024, maxPayload: Int = 128 * 1024,
                   maxDescriptors: Int = 4, maxCircuits: UInt64 = 1024) -> TransportConfiguration<UInt16> {
    TransportConfiguration(intent: intent, side: side, maxCircuits: maxCircuits, reservedBand: 2, reserved: reserved,
                           window: window, maxPayload: maxPayload, maxDescriptorsPerMessage: maxDescriptors,
                           handshakeTimeoutMilliseconds: 2000)
}

/// Two connected transports in this process.
func transportPair(opener: TransportConfiguration<UInt16> = configuration(.opener),
                   acceptor: TransportConfiguration<UInt16> = configuration(.acceptor))
    async throws -> (Transport<UInt16>, Transport<UInt16>) {
    let (a, b) = try SocketCalls.socketPair(.seqpacket)
    async let left = Transport<UInt16>.start(socket: a, configuration: opener)
    async let right = Transport<UInt16>.start(socket: b, configuration: acceptor)
    return try await (left, right)
}

/// The far end of a transport under test, speaking raw frames: a well-behaved handshake, then
/// whatever bytes a test wants to inject.
final class RawPeer {
    let fd: FileDescriptor
    private var closed = false

    init(fd: FileDescriptor) {
        self.fd = fd
    }

    deinit { close() }

    func close() {
        guard !closed else { return }
        closed = true
        try? fd.close()
    }

    /// Ends this side's sending (shutdown SHUT_WR) without resetting the connection.
    func finish() { _ = shutdown(fd.rawValue, CInt(SHUT_WR)) }

    func sendHandshake(_ config: TransportConfiguration<UInt16> = configuration(.acceptor)) throws {
        let h = Handshake(intent: config.intent, build: config.build, side: config.side, idBytes: 2,
                          maxCircuits: config.maxCircuits, reservedBand: UInt64(config.reservedBand),
                          reserved: Dictionary(uniqueKeysWithValues: config.reserved.map { (UInt64($0.key), $0.value) }),
                          window: UInt64(config.window), maxPayload: config.maxPayload,
                          maxDescriptors: config.maxDescriptorsPerMessage)
        try frame(.handshake, circuit: 0, payload: h.encode())
    }

    func frame(_ kind: FrameKind, circuit: UInt64, end: Bool = false, payload: [UInt8] = [],
               descriptors: [FileDescriptor] = []) throws {
        // One frame per sendmsg, as its own packet on a seqpacket socket.
        try raw(encoded(kind, circuit: circuit, end: end, payload: payload, descriptorCount: descriptors.count),
                descriptors: descriptors)
    }

    /// One encoded frame, declaring `descriptorCount` descriptors.
    func encoded(_ kind: FrameKind, circuit: UInt64, end: Bool = false, payload: [UInt8] = [],
                 descriptorCount: Int = 0) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: FrameHeader.size(idBytes: 2))
        header.withUnsafeMutableBytes {
            FrameHeader(kind: kind, end: end, descriptorCount: descriptorCount, length: payload.count, circuit: circuit)
                .encode(into: $0, idBytes: 2)
        }
        return header + payload
    }

    /// Raw bytes with optional descriptors, bypassing the frame encoder.
    func raw(_ bytes: [UInt8], descriptors: [FileDescriptor] = []) throws {
        let fds = descriptors.map(\.rawValue)
        _ = try bytes.withUnsafeBytes { raw in
            let iov = [iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)]
            return try iov.withUnsafeBufferPointer { iovs in
                try fds.withUnsafeBufferPointer { try DescriptorPassing.send(fd.rawValue, iovs, descriptors: $0) }
            }
        }
    }

    func header(kind: UInt8, flags: UInt8 = 0, descriptors: UInt8 = 0, length: UInt32, circuit: UInt16) -> [UInt8] {
        [kind, flags, descriptors, UInt8(length & 0xff), UInt8(length >> 8 & 0xff), UInt8(length >> 16 & 0xff),
         UInt8(length >> 24), UInt8(circuit & 0xff), UInt8(circuit >> 8)]
    }
}

/// A transport whose far end is a `RawPeer` that has completed the handshake.
func transportWithRawPeer(config: TransportConfiguration<UInt16> = configuration(.opener),
                          peerConfig: TransportConfiguration<UInt16> = configuration(.acceptor))
    async throws -> (Transport<UInt16>, RawPeer) {
    let (a, b) = try SocketCalls.socketPair(.seqpacket)
    let peer = RawPeer(fd: b)
    try peer.sendHandshake(peerConfig)
    let transport = try await Transport<UInt16>.start(socket: a, configuration: config)
    return (transport, peer)
}

