import FoundationEssentials
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A client that keeps its session: when the connection drops (a worker or the vault died,
/// the network broke), it reconnects with backoff and resumes at the offset of the next byte
/// it had not received, so the output it reads has nothing lost and nothing doubled. Its
/// input is a stream of its own (`input` in the hello): it keeps what it typed until the
/// server's `input_offset` on a resume says the terminal has it, and sends the rest again,
/// so typed input is neither lost nor doubled either.
public final class ResumingClient: @unchecked Sendable {
    public let port: UInt16
    public let host: String
    public let token: String
    /// Seconds a read may wait for the server (0: for ever, as an idle terminal may).
    let timeoutSeconds: Int
    /// The connection in use; replaced on a resume. Reads happen on one thread; sends (input,
    /// resizes) may come from others and go through `sending`.
    private var client: TerminalClient {
        get { lock.withLock { _ in connection } }
        set { lock.withLock { _ in connection = newValue } }
    }
    private var connection: TerminalClient
    private let lock = Mutex(())
    /// Input not yet confirmed by a resume, from stream offset `base` on; guarded by it.
    private let sending = Mutex(InputLog())
    /// This client's input stream.
    public let inputStream = TerminalClient.randomName()

    struct InputLog {
        var base: UInt64 = 0
        var bytes: [UInt8] = []
        /// Input kept for a resume, at most; older input is let go (and if the terminal had
        /// not taken it, it is lost, as the resume then says).
        static let limit = 1 << 20
    }
    public private(set) var info: TerminalClient.SessionMessage
    /// Connections lost and resumed so far.
    public private(set) var resumes = 0
    /// Over TLS, checked this way; nil: plain TCP.
    let tls: ClientTLS.Verification?
    /// Called before each reconnection attempt, with the attempt's number (a notice to show).
    public var onReconnect: ((Int) -> Void)?

    /// Starts a new session (or joins `session` with `secret`).
    public init(port: UInt16, host: String = "127.0.0.1", token: String, columns: Int = 80, rows: Int = 24,
                session: String? = nil, secret: String? = nil, readonly: Bool = false, timeoutSeconds: Int = 10,
                tls: ClientTLS.Verification? = nil) throws {
        self.port = port
        self.host = host
        self.token = token
        self.timeoutSeconds = timeoutSeconds
        self.tls = tls
        let first = try TerminalClient.connect(port: port, path: Self.route(session), host: host, timeoutSeconds: timeoutSeconds, verification: tls)
        try first.authenticate(token: token, columns: columns, rows: rows, session: session, secret: secret, readonly: readonly,
                               input: inputStream)
        info = try first.awaitSession()
        connection = first
    }

    /// The WebSocket's path: with the session's id (never a secret) in the query when there is
    /// one, where a load balancer can route on it (deploy/haproxy-fleet.cfg).
    static func route(_ session: String?) -> String {
        guard let session, !session.isEmpty else { return "/ws" }
        // Ids are letters, digits, "-", "_" and "."; anything else is not put in a URL.
        let safe = session.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || [0x2d, 0x2e, 0x5f].contains($0) }
        return safe ? "/ws?session=" + session : "/ws"
    }

    public func input(_ text: String) throws { try input(bytes: Array(text.utf8)) }

    /// Sends input, keeping it until a resume confirms it: input that cannot be sent now (the
    /// connection is being replaced) goes with the resume. Never fails for a lost connection.
    public func input(bytes: [UInt8]) throws {
        sending.withLock { log in
            log.bytes += bytes
            if log.bytes.count > InputLog.limit {
                let dropped = log.bytes.count - InputLog.limit
                log.bytes.removeFirst(dropped)
                log.base += UInt64(dropped)
            }
            // A failed send is the reader's to notice: it resumes, and this goes again then.
            try? client.input(bytes: bytes)
        }
    }

    public func resize(columns: Int, rows: Int) throws {
        sending.withLock { _ in _ = try? client.resize(columns: columns, rows: rows) }
    }

    /// The next output as it comes, resuming as needed; `Closed` with code 1000 when the
    /// session is over for this client (the shell exited, or the operator disconnected it).
    public func readSome(deadline: Date = .distantFuture) throws -> [UInt8] {
        while true {
            do {
                return try client.readSome()
            } catch let closed as TerminalClient.Closed where closed.code == 1000 {
                throw closed
            } catch {
                let missed = client.takeOutput()
                if !missed.isEmpty { return missed }
                try reconnect(deadline: deadline)
            }
        }
    }

    /// Reads until `marker` has arrived, across as many reconnections as it takes within
    /// `deadline`; returns everything read.
    public func readOutput(untilMarker marker: String, deadline: Date = .distantFuture) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while true {
            do {
                bytes += try client.readOutput(untilMarker: marker)
                return bytes
            } catch let closed as TerminalClient.Closed where closed.code == 1000 {
                throw closed  // the shell exited or the operator disconnected us: nothing to resume
            } catch {
                bytes += client.takeOutput()
                if String(decoding: bytes.suffix(4 * marker.utf8.count + 64), as: UTF8.self).contains(marker) { return bytes }
                try reconnect(deadline: deadline)
            }
        }
    }

    /// Reconnects and resumes at the next byte not received: backoff from 50 ms doubling to
    /// 1 s, until `deadline`.
    private func reconnect(deadline: Date) throws {
        let offset = client.resumeOffset ?? info.offset
        let secret = info.secret ?? info.read_secret
        var delay: UInt32 = 50_000
        var attempt = 0
        while true {
            attempt += 1
            onReconnect?(attempt)
            do {
                let next = try TerminalClient.connect(port: port, path: Self.route(info.session), host: host, timeoutSeconds: timeoutSeconds,
                                                      verification: tls)
                try next.authenticate(token: token, session: info.session, secret: secret, offset: offset,
                                      readonly: info.secret == nil, input: inputStream)
                let resumed = try next.awaitSession()
                try sending.withLock { log in
                    // What the terminal has is let go; the rest is sent again, before any new input.
                    if let taken = resumed.input_offset {
                        let confirmed = Int(min(max(taken, log.base), log.base + UInt64(log.bytes.count)) - log.base)
                        log.bytes.removeFirst(confirmed)
                        log.base += UInt64(confirmed)
                        if !log.bytes.isEmpty { try next.input(bytes: log.bytes) }
                    }
                    client = next
                }
                info.offset = resumed.offset
                info.skipped = resumed.skipped
                resumes += 1
                return
            } catch {
                guard Date() < deadline else { throw error }
                usleep(delay)
                delay = min(1_000_000, delay * 2)
            }
        }
    }
}
