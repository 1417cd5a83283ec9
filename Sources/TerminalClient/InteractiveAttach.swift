import CShim
import FoundationEssentials
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cloister attach`: this terminal as a session's terminal. Raw mode while attached, the
/// window size sent at start and on every SIGWINCH, a dropped connection resumed at its offset
/// with a notice, and the terminal restored on every way out.
public enum InteractiveAttach {
    public struct Options: Sendable {
        public var host: String
        public var port: UInt16
        /// ttyd's AuthToken form of the credential.
        public var token: String
        public var session: String?
        public var secret: String?
        public var readonly: Bool
        /// Over TLS (https, wss), with the server's certificate checked this way.
        public var tls: ClientTLS.Verification?

        public init(host: String, port: UInt16, token: String, session: String?, secret: String?, readonly: Bool,
                    tls: ClientTLS.Verification? = nil) {
            (self.host, self.port, self.token, self.session, self.secret, self.readonly) = (host, port, token, session, secret, readonly)
            self.tls = tls
        }
    }

    /// Runs until the session ends for this client; returns the status to exit with: the
    /// shell's, 128 + its signal, or 1 when the operator disconnected the client.
    public static func run(_ options: Options) throws -> Int32 {
        // Taken by a thread of our own; blocked before any other thread starts, so none
        // of them takes them.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGWINCH] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let size = windowSize()
        let client = try ResumingClient(port: options.port, host: options.host, token: options.token, columns: size.columns,
                                        rows: size.rows, session: options.session, secret: options.secret,
                                        readonly: options.readonly, timeoutSeconds: 0, tls: options.tls)
        let terminal = RawTerminal(fd: 0)
        defer { terminal?.restore() }
        notice("attached to session \(client.info.session)\(client.info.secret == nil ? " (read-only)" : "")")
        client.onReconnect = { attempt in notice("connection lost; resuming (attempt \(attempt))") }

        let signalSet = signals
        _ = try? Threads.start("attach-signals", detached: true) {
            var set = signalSet
            while true {
                var signal: Int32 = 0
                guard sigwait(&set, &signal) == 0 else { continue }
                if signal == SIGWINCH {
                    let size = windowSize()
                    try? client.resize(columns: size.columns, rows: size.rows)
                    continue
                }
                terminal?.restore()
                _exit(128 + signal)
            }
        }
        _ = try? Threads.start("attach-input", detached: true) {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                guard let n = try? valueOrErrno("read", { read(0, &buffer, buffer.count) }), n > 0 else { return }
                try? client.input(bytes: Array(buffer[..<n]))
            }
        }

        while true {
            do {
                let bytes = try client.readSome()
                // writeAll retries EINTR and short writes (swift-system).
                guard (try? bytes.withUnsafeBytes { try FileDescriptor(rawValue: 1).writeAll($0) }) != nil else { return 1 }
            } catch let closed as TerminalClient.Closed {
                terminal?.restore()
                notice(closed.reason.isEmpty ? "closed (\(closed.code.map(String.init) ?? "no code"))" : closed.reason)
                return exitStatus(closed.reason)
            }
        }
    }

    /// "exit status N" → N, "signal N" → 128 + N, anything else → 1.
    static func exitStatus(_ reason: String) -> Int32 {
        let words = reason.split(separator: " ")
        if reason.hasPrefix("exit status "), let code = words.last.flatMap({ Int32($0) }) { return code }
        if reason.hasPrefix("signal "), let signal = words.last.flatMap({ Int32($0) }) { return 128 + signal }
        return 1
    }

    /// A line for the person at the terminal, on stderr, on a line of its own.
    static func notice(_ text: String) {
        let line = Array("\r\n[cloister: \(text)]\r\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    static func windowSize() -> (columns: Int, rows: Int) {
        var rows: UInt16 = 0, columns: UInt16 = 0
        guard cloister_get_window_size(1, &rows, &columns) == 0, rows > 0, columns > 0 else { return (80, 24) }
        return (Int(columns), Int(rows))
    }
}

/// A terminal in raw mode until `restore` (idempotent), as it was before.
public final class RawTerminal: @unchecked Sendable {
    private let fd: Int32
    private var saved = termios()
    private let lock = Mutex(())
    private var restored = false

    /// Nil when `fd` is not a terminal (input from a pipe stays as it is).
    public init?(fd: Int32) {
        self.fd = fd
        guard isatty(fd) == 1, tcgetattr(fd, &saved) == 0 else { return nil }
        var raw = saved
        cfmakeraw(&raw)
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { return nil }
    }

    public func restore() {
        lock.withLock { _ in
            guard !restored else { return }
            restored = true
            _ = tcsetattr(fd, TCSANOW, &saved)
        }
    }
}
