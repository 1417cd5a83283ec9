import Logging
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Clients over `--max-clients` get an HTTP answer, 503 with Retry-After, instead of a silent
/// close. The supervisor parses no HTTP: the answer is fixed bytes, written without reading
/// the request. Closing a socket with an unread request in it would send a reset that can
/// destroy the answer in flight, so each refused socket is shut for writing and drained on a
/// short-lived thread of its own (at most `maxLingering` at once; beyond that, closed at once).
public final class CapacityRefusals: Sendable {
    public static let retryAfterSeconds = 5
    static let maxLingering = 64
    static let lingerMilliseconds: Int32 = 2000

    static let response: [UInt8] = {
        let body = "server at capacity (--max-clients); try again later\n"
        return Array(("HTTP/1.1 503 Service Unavailable\r\nRetry-After: \(retryAfterSeconds)\r\n"
            + "Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n"
            + "Cache-Control: no-store\r\n\r\n" + body).utf8)
    }()

    private let refused = Atomic<Int>(0)
    private let lingering = Atomic<Int>(0)

    public init() {}

    /// Clients refused so far.
    public var count: Int { refused.load(ordering: .relaxed) }

    /// Answers `client` with 503 and closes it; takes ownership.
    func refuse(_ client: FileDescriptor, logger: Logger) {
        refused.add(1, ordering: .relaxed)
        // A new connection's send buffer takes the answer whole: never blocks.
        _ = Self.response.withUnsafeBytes { send(client.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        shutdown(client.rawValue, Int32(SHUT_WR))
        guard lingering.add(1, ordering: .relaxed).newValue <= Self.maxLingering else {
            lingering.subtract(1, ordering: .relaxed)
            try? client.close()
            return
        }
        do {
            try Threads.start("refusal", detached: true) { [self] in
                Self.drain(client)
                lingering.subtract(1, ordering: .relaxed)
            }
        } catch {
            lingering.subtract(1, ordering: .relaxed)
            logger.warning("refused client closed without draining", metadata: ["error": "\(error)"])
            try? client.close()
        }
    }

    /// Reads and drops what the client sends until it closes, 64 KiB or the linger passed.
    static func drain(_ client: FileDescriptor) {
        defer { try? client.close() }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var total = 0
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let end = Int64(deadline.tv_sec) * 1000 + Int64(deadline.tv_nsec) / 1_000_000 + Int64(lingerMilliseconds)
        while total < 64 * 1024 {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = end - (Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000)
            guard left > 0 else { return }
            var poll = pollfd(fd: client.rawValue, events: Int16(POLLIN), revents: 0)
            // An interrupted poll is tried again with what is left of the linger.
            guard let ready = try? valueOrErrno("poll", retryOnInterrupt: false, { Glibc.poll(&poll, 1, Int32(left)) }) else { continue }
            guard ready > 0 else { return }
            do {
                let n = try valueOrErrno("recv") { recv(client.rawValue, &buffer, buffer.count, Int32(MSG_DONTWAIT)) }
                guard n > 0 else { return }
                total += n
            } catch {
                guard error.errno == .resourceTemporarilyUnavailable else { return }
            }
        }
    }
}
