import CShim
import Logging
import Processes
import RoleProtocol

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
                           reloadedCredential: @escaping @Sendable () throws -> (VaultAuthentication, Server.TLS?)) async {
        // A nursery that dies leaves its shells to the supervisor instead of init, which
        // reaps them and reports their ends (`OrphanShells`).
        if cloister_set_child_subreaper() != 0 {
            log.warning("shells will not outlive their nursery", metadata: ["error": "prctl(PR_SET_CHILD_SUBREAPER): errno \(errno)"])
        }
        // Signals are taken from now on, also while the roles are coming up: a supervisor
        // whose roles crash-loop must still stop when told to.
        let signals = Signals.stream()
        let stopSignal: Int32 = await withTaskGroup(of: Void.self) { group in
            group.addTask {
                guard await server.start(), !Task.isCancelled else { return }
                announce(server, credentialLine: credentialLine)
                if let exitWhen = server.configuration.exitWhen { await watchClients(server, exitWhen, log: log) }
            }
            var stop = SIGTERM
            for await signal in signals {
                if signal == SIGHUP {
                    await reload(server, reloadedCredential, log: log)
                    continue
                }
                if signal == SIGUSR2 {
                    // Returns only if refused before anything was stopped.
                    do {
                        try await server.upgrade()
                    } catch {
                        log.error("upgrade refused; serving on", metadata: ["error": "\(error)"])
                    }
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
        // `ctl drain SECONDS` gives its own deadline.
        let asked = server.requestedDrainSeconds.withLock { $0 }
        // A second SIGTERM or SIGINT stops waiting (an operator's or systemd's stop of a host
        // that drains for a fleet). The loop above has let go of the stream: one reader at a time.
        let cutShort = Task {
            for await signal in signals where signal == SIGTERM || signal == SIGINT {
                log.notice("drain cut short", metadata: ["signal": "\(String(cString: strsignal(signal)))"])
                server.drainCut.store(true, ordering: .releasing)
                return
            }
        }
        await server.drain(timeout: asked.map { .milliseconds(Int64($0 * 1000)) } ?? drainTimeout, sessions: asked != nil)
        cutShort.cancel()
        log.info("stopped")
    }

    /// `--once` and `--exit-no-clients`: once a client has attached and none is left, the
    /// supervisor stops as on SIGTERM (drained, every role and shell stopped). The vault's
    /// counts are read a few times a second; it counts every attachment it started, so a
    /// client that comes and goes between two readings is not missed.
    static func watchClients(_ server: Server, _ exitWhen: Server.ExitWhen, log: Logger) async {
        while !Task.isCancelled {
            await Wait.sleep(for: .milliseconds(200))
            guard let (current, started) = try? await server.attachmentCounts(), started > 0, current == 0 else { continue }
            log.notice("the last client left: stopping", metadata: ["option": "\(exitWhen.rawValue)"])
            kill(getpid(), SIGTERM)
            return
        }
    }

    /// The lines an operator reads on the terminal, and readiness for systemd.
    static func announce(_ server: Server, credentialLine: String?) {
        for (listener, tls) in zip(server.listeners, server.tlsListeners) {
            guard let (host, port) = Listener.parse(listener.address), listener.path == nil else {
                print("cloister: listening on \(listener.address) (\(tls ? "HTTPS" : "HTTP") at \(server.configuration.basePath)/)")
                continue
            }
            let shown = host.contains(":") ? "[\(host)]" : host
            print("cloister: listening on \(tls ? "https" : "http")://\(shown):\(port)\(server.configuration.basePath)/")
        }
        if let credentialLine {
            print("cloister: one-time credential for this run: \(credentialLine)")
        }
        if let control = server.configuration.controlSocket {
            print("cloister: control socket \(control)")
        }
        if let health = server.health, let (host, port) = Listener.parse(health.listener.address) {
            print("cloister: health for load balancers on http://\(host.contains(":") ? "[\(host)]" : host):\(port)/")
        }
        fflush(nil)
        SystemdNotify.send("READY=1\nSTATUS=serving on \(server.listeners.map(\.address).joined(separator: ", "))")
    }

    /// Re-reads what may change while serving: the credential and the profiles. A problem is
    /// logged and changes nothing.
    static func reload(_ server: Server, _ reloadedCredential: () throws -> (VaultAuthentication, Server.TLS?), log: Logger) async {
        SystemdNotify.send("RELOADING=1")
        defer { SystemdNotify.send("READY=1") }
        do {
            let (authentication, tls) = try reloadedCredential()
            await server.reload(authentication, tls: tls)
        } catch {
            log.error("reload refused; nothing changed", metadata: ["problem": "\(error)"])
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP are blocked in every thread (see `Main`) and taken here.
enum Signals {
    static let handled = [SIGTERM, SIGINT, SIGHUP, SIGUSR2]

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
