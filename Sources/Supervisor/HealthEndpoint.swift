import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a load balancer polls (`--health-listen`): every connection gets one fixed answer and
/// is closed, whatever it sent (nothing is read but to drain it): 200 `ready`; 404 `draining`
/// (HAProxy's `http-check disable-on-404`: no new session goes there, and the requests that
/// name one of its sessions still do); 503 `starting` or `full` (`--max-clients` reached: it
/// takes no connection at all). It needs no credential and says
/// nothing else: no version, no counts, no session. As the refusals at capacity, the supervisor
/// parses no HTTP for it.
public final class HealthEndpoint: Sendable {
    public enum State: String, Sendable { case starting, ready, draining, full }

    static func response(_ state: State) -> [UInt8] {
        let body = state.rawValue + "\n"
        let status = switch state {
        case .ready: "200 OK"
        case .draining: "404 Not Found"
        case .starting, .full: "503 Service Unavailable"
        }
        return Array(("HTTP/1.1 \(status)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Cache-Control: no-store\r\nConnection: close\r\n\r\n" + body).utf8)
    }

    let listener: Listener
    private let lingering = Atomic<Int>(0)

    init(listener: Listener) {
        self.listener = listener
    }

    /// Answers connections with what `state` says until the listener is stopped (on its own thread).
    func serve(_ state: @Sendable () -> State) {
        while let client = try? listener.accept() {
            let answer = Self.response(state())
            _ = answer.withUnsafeBytes { send(client.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            shutdown(client.rawValue, Int32(SHUT_WR))
            // The request is drained, not parsed, so that closing does not reset the answer.
            guard lingering.add(1, ordering: .relaxed).newValue <= CapacityRefusals.maxLingering,
                  (try? Threads.start("health", detached: true) { [self] in
                      CapacityRefusals.drain(client)
                      lingering.subtract(1, ordering: .relaxed)
                  }) != nil else {
                lingering.subtract(1, ordering: .relaxed)
                try? client.close()
                continue
            }
        }
    }
}
