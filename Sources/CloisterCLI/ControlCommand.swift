import ArgumentParser
import Circuits
import FoundationEssentials
import Processes
import SystemCalls
import Supervisor
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cloister ctl`: asks a running supervisor over its control socket.
struct ControlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl", abstract: "Inspect a running Cloister through its control socket.",
        subcommands: [Status.self, Workers.self, Sessions.self, Recordings.self, Metrics.self, Kick.self, HangUp.self, Drain.self, Upgrade.self])

    /// Root's supervisor (the systemd unit) uses /run/cloister; anyone else's, a directory
    /// of their own: $XDG_RUNTIME_DIR/cloister, else /tmp/cloister-UID.
    static var defaultSocket: String {
        if geteuid() == 0 { return "/run/cloister/control.sock" }
        if let runtime = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            return runtime + "/cloister/control.sock"
        }
        return "/tmp/cloister-\(geteuid())/control.sock"
    }

    struct Options: ParsableArguments {
        @Option(help: "The control socket.") var socket: String = ControlCommand.defaultSocket
        @Flag(help: "Print the JSON reply as it came.") var json = false
    }

    /// Sends `request` and returns the reply; a reply that is an error becomes a thrown one.
    static func ask(_ request: String, socket: String) throws -> Data {
        let connection: FileDescriptor
        do {
            connection = try UnixSocket.connect(path: socket, kind: .stream)
        } catch {
            throw ValidationError("cannot reach the control socket: \(error)")
        }
        defer { try? connection.close() }
        _ = try Array((request + "\n").utf8).withUnsafeBytes { try connection.writeAll($0) }
        let reply = Data(try connection.readToEnd())
        struct Failure: Decodable { var error: String }
        if let failure = try? JSONDecoder().decode(Failure.self, from: reply) {
            throw ValidationError("the supervisor refused: \(failure.error)")
        }
        return reply
    }

    /// Asks, and either prints the raw reply (`--json`, returns nil) or decodes it.
    static func fetch<Reply: Decodable>(_ request: String, _ options: Options, as: Reply.Type) throws -> Reply? {
        let reply = try ask(request, socket: options.socket)
        if options.json {
            print(String(decoding: reply, as: UTF8.self), terminator: "")
            return nil
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(Reply.self, from: reply)
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The supervisor's state.")
        @OptionGroup var options: Options

        func run() throws {
            guard let s = try ControlCommand.fetch("status", options, as: ControlServer.Status.self) else { return }
            print("supervisor pid \(s.pid): \(s.running) of \(s.workers) workers running, \(s.connections) connections, \(s.refusedAtCapacity) refused at --max-clients\(s.degraded ? ", DEGRADED (restart intensity exceeded)" : "")\(s.draining == true ? ", draining: no new session" : "")")
            if let a = s.admission {
                let refused = a.refused.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
                print("admission \(a.limits), \(a.perSource) per source, \(Int(a.deadlineSeconds)) s to authenticate: \(a.unauthenticated) unauthenticated now, "
                      + "\(a.admitted) admitted, \(a.authenticated) authenticated, refused: \(refused)")
            }
            for (name, v) in [("vault", s.vault), ("recorder", s.recorder)] {
                guard let v else { continue }
                print("\(name) pid \(v.pid.map(String.init) ?? "-"): \(v.state), \(v.restarts) restarts, confined: \(v.sandboxConfined.map { $0 ? "yes" : "NO" } ?? "-")")
            }
            if let build = s.build {
                print("build \(build)" + (s.upgradedFrom.map { ", upgraded from \($0)" } ?? ""))
            }
            if let k = s.keeping {
                print("vault generation \(k.vaultGeneration): \(k.sessionsKept) sessions kept, \(k.sessionsAdopted) adopted from an earlier vault"
                      + (k.sessionsSetAside > 0 ? ", \(k.sessionsSetAside) SET ASIDE (a vault died adopting them)" : ""))
            }
        }
    }

    /// `value` rounded to `digits` decimals, as printf's %.Nf writes it.
    static func fixedPoint(_ value: Double, digits: Int) -> String {
        guard value.isFinite else { return "\(value)" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = Int(scaled / scale), fraction = String(Int(scaled) % Int(scale))
        let sign = value < 0 && scaled != 0 ? "-" : ""
        guard digits > 0 else { return sign + String(whole) }
        return sign + String(whole) + "." + String(repeating: "0", count: digits - fraction.count) + fraction
    }

    /// Prints `rows` under `header`, each column as wide as its widest cell.
    static func table(_ header: [String], _ rows: [[String]]) {
        let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
        for row in [header] + rows {
            let padded = row.enumerated().map { $1 + String(repeating: " ", count: widths[$0] - $1.count) }
            print(String(padded.joined(separator: "  ").reversed().drop(while: { $0 == " " }).reversed()))
        }
    }

    struct Sessions: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each session: id, command, shell, age, clients (worker, mode, lag), bytes out, ring, slow-consumer events, adoptions (vaults that took it over).")
        @OptionGroup var options: Options

        func run() throws {
            guard let s = try ControlCommand.fetch("sessions", options, as: ControlServer.Sessions.self) else { return }
            let header = ["SESSION", "COMMAND", "SHELL", "AGE", "CLIENTS", "BYTES-OUT", "RING", "SLOW", "IGNORED", "ADOPTED"]
            let rows = s.sessions.map { r -> [String] in
                let clients = r.clients.isEmpty ? "-" : r.clients.map { "\($0.client):w\($0.worker):\($0.mode):lag=\($0.lagBytes)" }.joined(separator: ",")
                return [r.id, r.command, String(r.shellPid), "\(r.ageSeconds)s", clients, String(r.bytesOut),
                        "\(r.ringBytes)/\(r.ringCapacity)", String(r.slowConsumerEvents), String(r.ignoredInputs), String(r.adoptions)]
            }
            ControlCommand.table(header, rows)
        }
    }

    struct Recordings: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each recording (--record): sequence, user, session, start (UTC), duration, size, and whether it checks against its hash chain (ok, recording while it is written, or the first problem).")
        @OptionGroup var options: Options

        func run() throws {
            guard let r = try ControlCommand.fetch("recordings", options, as: ControlServer.Recordings.self) else { return }
            let rows = r.recordings.map { e -> [String] in
                var start = time_t(e.start), parts = tm()
                gmtime_r(&start, &parts)
                func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
                let when = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
                return [String(e.sequence), e.user.isEmpty ? "-" : e.user, e.session, when, "\((e.durationSeconds * 10).rounded() / 10)s", String(e.bytes), e.verified]
            }
            print("\(r.directory): \(r.recordings.count) recording\(r.recordings.count == 1 ? "" : "s")")
            ControlCommand.table(["SEQ", "USER", "SESSION", "START (UTC)", "DURATION", "BYTES", "VERIFIED"], rows)
        }
    }

    struct Upgrade: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the running binary of every role, the supervisor's included, with the one now at the path it was started from; no shell ends.",
            discussion: """
            The server asks the new binary which state formats it adopts and refuses one that does not adopt its own \
            (the server then serves on, and this says why). Otherwise it stops its roles, keeps the sessions and the \
            shells, and execs the new binary in its own process; clients resume by themselves. This waits until the \
            server answers with the new build.
            """)
        @OptionGroup var options: Options
        @Option(help: "Seconds to wait for the server to answer with the new build.") var timeout: Double = 60

        func run() throws {
            let reply = try ControlCommand.ask("upgrade", socket: options.socket)
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let upgrading = try decoder.decode(ControlServer.Upgrading.self, from: reply)
            print("upgrading to \(upgrading.to)")
            let deadline = Date().addingTimeInterval(timeout)
            var last = "no answer"
            while Date() < deadline {
                usleep(200_000)
                guard let data = try? ControlCommand.ask("status", socket: options.socket),
                      let status = try? decoder.decode(ControlServer.Status.self, from: data) else { continue }
                last = status.build ?? "no build"
                if status.build == upgrading.to, status.vault?.state == "running" {
                    print("upgraded: \(status.upgradedFrom ?? "?") -> \(upgrading.to); \(status.keeping?.sessionsKept ?? 0) sessions kept")
                    return
                }
            }
            throw ValidationError("the server did not answer with \(upgrading.to) within \(Int(timeout)) s (last: \(last))")
        }
    }

    struct Drain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop taking clients and stop once the open ones have left, or the deadline has passed (as SIGTERM, with its own deadline).",
            discussion: "The health endpoint (--health-listen) says draining from now on, so a load balancer sends new sessions elsewhere; the sessions here go on until they end or the deadline ends them.")
        @OptionGroup var options: Options
        @Option(help: "Seconds the open connections are given (0 to 604800).") var timeout: Double = 3600

        func validate() throws {
            guard timeout.isFinite, (0...604_800).contains(timeout) else { throw ValidationError("--timeout: \(timeout) is not between 0 and 604800 seconds") }
        }

        func run() throws {
            guard let draining = try ControlCommand.fetch("drain \(timeout)", options, as: ControlServer.Draining.self) else { return }
            print("draining: open connections have \(draining.deadlineSeconds) s")
        }
    }

    struct Kick: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disconnect one client of a session, or all of them; the session lingers.")
        @OptionGroup var options: Options
        @Argument(help: "The session's id (cloister ctl sessions).") var session: String
        @Argument(help: "The client's number; without it, every client.") var client: UInt32?

        func validate() throws {
            guard session.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }), !session.isEmpty else {
                throw ValidationError("\"\(session)\" is not a session id")
            }
        }

        func run() throws {
            guard let done = try ControlCommand.fetch("kick \(session)" + (client.map { " \($0)" } ?? ""), options,
                                                      as: ControlServer.Done.self) else { return }
            guard done.found else { throw ValidationError("no session \(session)\(client.map { " with client \($0)" } ?? "")") }
        }
    }

    struct HangUp: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hangup", abstract: "End a session: its terminal is closed and the shell gets SIGHUP.")
        @OptionGroup var options: Options
        @Argument(help: "The session's id (cloister ctl sessions).") var session: String

        func validate() throws {
            guard session.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }), !session.isEmpty else {
                throw ValidationError("\"\(session)\" is not a session id")
            }
        }

        func run() throws {
            guard let done = try ControlCommand.fetch("hangup \(session)", options, as: ControlServer.Done.self) else { return }
            guard done.found else { throw ValidationError("no session \(session)") }
        }
    }

    struct Workers: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each worker: pid, state, uptime, restarts, heartbeat, sandbox; with --isolation client, the client it serves (- for a spare); with TLS, the signatures the keyholder made for it.")
        @OptionGroup var options: Options

        func run() throws {
            guard let w = try ControlCommand.fetch("workers", options, as: ControlServer.Workers.self) else { return }
            let header = ["ID", "PID", "STATE", "UPTIME", "RESTARTS", "CONNS", "CLIENT", "SIGNED", "HEARTBEAT", "VIOLATIONS", "SECCOMP", "NNP", "CAPEFF", "CONFINED"]
            let rows = w.workers.map { r -> [String] in
                [String(r.id), r.pid.map(String.init) ?? "-", r.state,
                 r.uptimeSeconds.map { fixedPoint($0, digits: 1) + "s" } ?? "-", String(r.restarts), String(r.connections), r.client ?? "-",
                 r.signatures.map { "\($0)" + (r.signaturesRefused.map { $0 > 0 ? " (\($0) refused)" : "" } ?? "") } ?? "-",
                 r.lastHeartbeatMilliseconds.map { fixedPoint($0, digits: 2) + "ms" } ?? "-", String(r.violations),
                 r.seccomp.map(String.init) ?? "-", r.noNewPrivileges.map { $0 ? "1" : "0" } ?? "-", r.capEff ?? "-",
                 r.sandboxConfined.map { $0 ? "yes" : "NO" } ?? "-"]
            }
            ControlCommand.table(header, rows)
        }
    }
}
