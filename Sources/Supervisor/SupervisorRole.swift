import Logging
import Processes

#if canImport(Glibc)
import Glibc
#endif

/// The supervisor process, once `cloister serve` has parsed and checked its configuration
/// and bound its sockets: starts the roles, says where it listens, then follows signals:
/// SIGHUP reloads, SIGTERM or SIGINT drains and returns.
public enum SupervisorRole {
    /// Before any thread exists, so that every thread inherits the mask and only the
    /// supervisor's signal thread takes them.
    public static func blockSignals() { Signals.block() }

    /// `reloadedCredential` is called on SIGHUP; what it throws is logged and changes nothing.
    public static func run(_ server: Server, credentialLine: String?, drainTimeout: Duration, logger log: Logger,
                           reloadedCredential: @escaping @Sendable () throws -> [UInt8]?) async {
        // Signals are taken from now on, also while the roles are coming up: a supervisor
        // whose roles crash-loop must still stop when told to.
        let signals = Signals.stream()
        let stopSignal: Int32 = await withTaskGroup(of: Void.self) { group in
            group.addTask {
                guard await server.start(), !Task.isCancelled else { return }
                announce(server, credentialLine: credentialLine)
            }
            var stop = SIGTERM
            for await signal in signals {
                if signal == SIGHUP {
                    await reload(server, reloadedCredential, log: log)
                    continue
                }
                stop = signal
                break
            }
            group.cancelAll()
            await group.waitForAll()
            return stop
        }
        SystemdNotify.send("STOPPING=1")
        log.info("draining", metadata: ["signal": "\(String(cString: strsignal(stopSignal)))"])
        await server.drain(timeout: drainTimeout)
        log.info("stopped")
    }

    /// The lines an operator reads on the terminal, and readiness for systemd.
    static func announce(_ server: Server, credentialLine: String?) {
        for listener in server.listeners {
            let (host, port) = Listener.parse(listener.address)!
            let shown = host.contains(":") ? "[\(host)]" : host
            print("cloister: listening on http://\(shown):\(port)\(server.configuration.basePath)/")
        }
        if let credentialLine {
            print("cloister: one-time credential for this run: \(credentialLine)")
        }
        if let control = server.configuration.controlSocket {
            print("cloister: control socket \(control)")
        }
        fflush(nil)
        SystemdNotify.send("READY=1\nSTATUS=serving on \(server.listeners.map(\.address).joined(separator: ", "))")
    }

    /// Re-reads what may change while serving: the credential and the profiles. A problem is
    /// logged and changes nothing.
    static func reload(_ server: Server, _ reloadedCredential: () throws -> [UInt8]?, log: Logger) async {
        SystemdNotify.send("RELOADING=1")
        defer { SystemdNotify.send("READY=1") }
        do {
            await server.reload(credential: try reloadedCredential())
        } catch {
            log.error("reload refused; nothing changed", metadata: ["problem": "\(error)"])
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP are blocked in every thread (see `Main`) and taken here.
enum Signals {
    static let handled = [SIGTERM, SIGINT, SIGHUP]

    static func block() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Every one of them as it comes, taken by a thread of its own.
    static func stream() -> AsyncStream<Int32> {
        AsyncStream { continuation in
            Task.detached {
                while let signal = try? await onOwnThread({ wait() }) {
                    continuation.yield(signal)
                }
            }
        }
    }

    /// The next of them.
    static func wait() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        while true {
            var signal: Int32 = 0
            if sigwait(&set, &signal) == 0 { return signal }
        }
    }
}
