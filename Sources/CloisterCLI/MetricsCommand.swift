import ArgumentParser
import FoundationEssentials
import Prometheus
import RoleProtocol
import Supervisor

#if canImport(Glibc)
import Glibc
#endif

extension ControlCommand {
    /// `cloister ctl metrics`: the control socket's replies in Prometheus's text exposition
    /// format, for node_exporter's textfile collector (deploy/cloister-metrics.*): the
    /// supervisor itself parses no HTTP, so nothing scrapes it directly.
    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the supervisor's metrics in Prometheus's text format.",
            discussion: """
            With --output FILE the text is written to FILE.tmp and renamed over FILE (mode \
            0644), so a collector never reads half a file; a supervisor that cannot be reached \
            leaves FILE as it was (node_exporter's node_textfile_mtime_seconds shows its age) \
            and exits 1.
            """)
        @Option(help: "The control socket.") var socket: String = ControlCommand.defaultSocket
        @Option(help: "Write to this file (atomically) instead of standard output.") var output: String?

        func run() throws {
            do {
                let options = try Options.parse(["--socket", socket])
                let status = try ControlCommand.fetch("status", options, as: ControlServer.Status.self)!
                let workers = try ControlCommand.fetch("workers", options, as: ControlServer.Workers.self)!
                // No vault (restarting) is a state to show, not a failed scrape.
                let sessions = try? ControlCommand.fetch("sessions", options, as: ControlServer.Sessions.self)
                let text = Self.exposition(status: status, workers: workers.workers, sessions: sessions?.sessions)
                guard let output else { return print(text, terminator: "") }
                try writeAtomically(text, to: output)
            } catch let error as ValidationError {
                printToStandardError("cloister ctl metrics: \(error.message)\n")
                throw ExitCode(1)
            }
        }

        static func exposition(status: ControlServer.Status, workers: [ControlServer.WorkerReport],
                               sessions: [ControlServer.SessionReport]?) -> String {
            let registry = PrometheusCollectorRegistry()
            func gauge(_ name: String, _ help: String, _ value: Double, _ labels: [(String, String)] = []) {
                // The whole name is given: no unit suffix is added to it.
                registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels).set(value)
            }
            func counter(_ name: String, _ help: String, _ value: UInt64, _ labels: [(String, String)] = []) {
                registry.makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
                    .increment(by: Int64(clamping: value))
            }
            gauge("cloister_up", "1 when the supervisor answered on its control socket.", 1)
            gauge("cloister_degraded", "1 when a pool exceeded its restart intensity and stopped restarting.", status.degraded ? 1 : 0)
            gauge("cloister_connections", "Client connections open across the workers.", Double(status.connections))
            counter("cloister_capacity_refusals_total", "Clients answered 503 for being over --max-clients.", UInt64(status.refusedAtCapacity))
            if let a = status.admission {
                gauge("cloister_unauthenticated_connections", "Connections admitted that have not presented a valid credential yet.", Double(a.unauthenticated))
                counter("cloister_admitted_connections_total", "Connections admitted before authentication.", a.admitted)
                for (reason, count) in a.refused.sorted(by: { $0.key < $1.key }) {
                    counter("cloister_admission_refusals_total", "Unauthenticated connections refused (full, early, source) or closed at the deadline.",
                            count, [("reason", reason)])
                }
            }
            if let k = status.keeping {
                gauge("cloister_vault_generation", "Vaults started since the service started (the running one's generation).", Double(k.vaultGeneration))
                gauge("cloister_sessions_kept", "Sessions whose terminal and ring the supervisor keeps for the next vault.", Double(k.sessionsKept))
                counter("cloister_sessions_adopted_total", "Sessions a new vault took over from one that ended.", k.sessionsAdopted)
                counter("cloister_sessions_set_aside_total", "Kept sessions given up because a vault died twice adopting them.", k.sessionsSetAside)
            }
            var roles: [(String, ControlServer.WorkerReport)] = workers.map { ("worker", $0) }
            if let vault = status.vault { roles.append(("vault", vault)) }
            for (role, r) in roles {
                let labels = [("role", role), ("slot", String(r.id))]
                for state in ["starting", "running", "restarting", "stopped"] {
                    gauge("cloister_role_state", "1 for the state each role slot is in.", r.state == state ? 1 : 0, labels + [("state", state)])
                }
                counter("cloister_role_restarts_total", "Restarts of the slot's role (crashes, missed heartbeats).", UInt64(r.restarts), labels)
                counter("cloister_sandbox_violations_total", "Syscalls the slot's roles made outside their profile (each killed the role).",
                        UInt64(r.violations), labels)
                if let confined = r.sandboxConfined {
                    gauge("cloister_role_confined", "1 when every thread has a seccomp filter, no_new_privs and no effective capability.",
                          confined ? 1 : 0, labels)
                }
                if let milliseconds = r.lastHeartbeatMilliseconds {
                    gauge("cloister_heartbeat_round_trip_seconds", "The last heartbeat's round trip over the control circuit.",
                          milliseconds / 1000, labels)
                }
                guard role == "worker" else { continue }
                gauge("cloister_worker_connections", "Client connections the worker has open.", Double(r.connections), labels)
                let counters = r.counters ?? [:]
                counter("cloister_client_bytes_total", "WebSocket payload bytes from and to clients, since the worker started.",
                        counters["\(WorkerCounter.bytesFromClients)"] ?? 0, labels + [("direction", "in")])
                counter("cloister_client_bytes_total", "WebSocket payload bytes from and to clients, since the worker started.",
                        counters["\(WorkerCounter.bytesToClients)"] ?? 0, labels + [("direction", "out")])
                for cause in WorkerCounter.allCases {
                    guard let label = cause.refusalCause else { continue }
                    counter("cloister_http_refusals_total", "HTTP requests a worker refused (4xx), by cause, since it started.",
                            counters["\(cause)"] ?? 0, labels + [("cause", label)])
                }
            }
            gauge("cloister_vault_up", "1 when the vault answered the sessions request.", sessions == nil ? 0 : 1)
            if let sessions {
                gauge("cloister_sessions", "Sessions the vault keeps (attached or lingering).", Double(sessions.count))
                gauge("cloister_session_clients", "Clients attached to sessions.", Double(sessions.reduce(0) { $0 + $1.clients.count }))
                gauge("cloister_session_output_bytes", "Output bytes of the sessions open now, since each started.",
                      Double(sessions.reduce(UInt64(0)) { $0 + $1.bytesOut }))
            }
            return registry.emitToString()
        }

    }
}
