import XCTest
import SystemPackage
@testable import Circuits

#if canImport(Glibc)
import Glibc
#endif

/// Number of sockets and pipes open in this process: what the circuits layer or a test could
/// leak. Descriptors the Swift runtime opens lazily for itself (Dispatch's epoll, eventfd and
/// timerfd) are not counted, so a first use of a runtime feature is not mistaken for a leak.
func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    var target = [CChar](repeating: 0, count: 256)
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let n = readlink("/proc/self/fd/" + name, &target, target.count - 1)
        guard n > 0 else { continue }
        let link = String(decoding: target[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if link.hasPrefix("socket:") || link.hasPrefix("pipe:") { count += 1 }
    }
    return count
}

/// Polls `condition` for up to `seconds` (for effects of other threads, not for timing).
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Double(DispatchTime.now().uptimeNanoseconds) / 1e9 + seconds
    while Double(DispatchTime.now().uptimeNanoseconds) / 1e9 < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

func configuration(_ side: TransportSide, intent: String = "test/1", reserved: [UInt16: String] = [0: "health"],
                   window: Int = 512 * 1024, maxPayload: Int = 128 * 1024,
                   maxDescriptors: Int = 4, maxCircuits: UInt64 = 1024) -> TransportConfiguration<UInt16> {
    TransportConfiguration(intent: intent, side: side, maxCircuits: maxCircuits, reservedBand: 2, reserved: reserved,
                           window: window, maxPayload: maxPayload, maxDescriptorsPerMessage: maxDescriptors,
                           handshakeTimeoutMilliseconds: 2000)
}

/// Two connected transports in this process.
func transportPair(_ kind: TransportKind, opener: TransportConfiguration<UInt16> = configuration(.opener),
                   acceptor: TransportConfiguration<UInt16> = configuration(.acceptor))
    async throws -> (Transport<UInt16>, Transport<UInt16>) {
    let (a, b) = try SocketCalls.socketPair(kind)
    async let left = Transport<UInt16>.start(socket: a, kind: kind, configuration: opener)
    async let right = Transport<UInt16>.start(socket: b, kind: kind, configuration: acceptor)
    return try await (left, right)
}

/// The far end of a transport under test, speaking raw frames: a well-behaved handshake, then
/// whatever bytes a test wants to inject.
final class RawPeer {
    let fd: FileDescriptor
    let kind: TransportKind
    let writer: FrameWriter

    init(fd: FileDescriptor, kind: TransportKind) {
        self.fd = fd
        self.kind = kind
        writer = FrameWriter(fd: fd, kind: kind, idBytes: 2)
    }

    deinit { writer.close() }

    /// Ends this side's sending (shutdown SHUT_WR) without resetting the connection.
    func finish() { _ = shutdown(fd.rawValue, CInt(SHUT_WR)) }

    func sendHandshake(_ config: TransportConfiguration<UInt16> = configuration(.acceptor)) throws {
        let h = Handshake(intent: config.intent, build: config.build, side: config.side, idBytes: 2,
                          maxCircuits: config.maxCircuits, reservedBand: UInt64(config.reservedBand),
                          reserved: Dictionary(uniqueKeysWithValues: config.reserved.map { (UInt64($0.key), $0.value) }),
                          window: UInt64(config.window), maxPayload: config.maxPayload,
                          maxDescriptors: config.maxDescriptorsPerMessage)
        try h.encode().withUnsafeBytes { _ = try writer.write(.handshake, circuit: 0, payload: $0) }
    }

    func frame(_ kind: FrameKind, circuit: UInt64, end: Bool = false, payload: [UInt8] = [],
               descriptors: [FileDescriptor] = []) throws {
        try payload.withUnsafeBytes {
            _ = try writer.write(kind, circuit: circuit, end: end, payload: $0, descriptors: descriptors)
        }
    }

    /// Raw bytes with optional descriptors, bypassing the frame encoder.
    func raw(_ bytes: [UInt8], descriptors: [FileDescriptor] = []) throws {
        let fds = descriptors.map(\.rawValue)
        _ = try bytes.withUnsafeBytes { raw in
            let iov = [iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)]
            return try iov.withUnsafeBufferPointer { iovs in
                try fds.withUnsafeBufferPointer { try SocketCalls.send(fd, iovs, descriptors: $0) }
            }
        }
    }

    func header(kind: UInt8, flags: UInt8 = 0, descriptors: UInt8 = 0, length: UInt32, circuit: UInt16) -> [UInt8] {
        [kind, flags, descriptors, UInt8(length & 0xff), UInt8(length >> 8 & 0xff), UInt8(length >> 16 & 0xff),
         UInt8(length >> 24), UInt8(circuit & 0xff), UInt8(circuit >> 8)]
    }
}

/// A transport whose far end is a `RawPeer` that has completed the handshake.
func transportWithRawPeer(_ kind: TransportKind, config: TransportConfiguration<UInt16> = configuration(.opener),
                          peerConfig: TransportConfiguration<UInt16> = configuration(.acceptor))
    async throws -> (Transport<UInt16>, RawPeer) {
    let (a, b) = try SocketCalls.socketPair(kind)
    let peer = RawPeer(fd: b, kind: kind)
    try peer.sendHandshake(peerConfig)
    let transport = try await Transport<UInt16>.start(socket: a, kind: kind, configuration: config)
    return (transport, peer)
}

/// Runs `body`, failing instead of hanging when it takes longer than `seconds` (a lost
/// wakeup shows up as a failure, not as a stuck test run).
func withDeadline<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeadlineExceeded(seconds: seconds)
        }
        return value
    }
}

struct DeadlineExceeded: Error { var seconds: Double }

func makePipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
    let p = try FileDescriptor.pipe()
    return (p.readEnd, p.writeEnd)
}

func readAll(_ fd: FileDescriptor) throws -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
        if n == 0 { return out }
        out += buffer[..<n]
    }
}
