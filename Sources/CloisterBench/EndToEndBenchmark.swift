import Foundation
import Processes
import Synchronization
import SystemPackage
import TerminalClient

#if canImport(Glibc)
import Glibc
#endif

/// `cloister-bench e2e`: the whole path (supervisor, sandboxed worker, vault, nursery, shell)
/// against a WebSocket client on loopback, each figure next to a baseline from this run:
/// terminal output throughput against reading a raw PTY, keystroke echo latency against a raw
/// socketpair round trip, sessions per second against spawning a shell on a raw PTY, and the
/// memory an open session costs.
struct EndToEndBenchmark {
    var quick: Bool
    /// Only the memory row (with its breakdown by role).
    var memoryOnly = false
    /// A certificate and key both servers serve TLS with, and the client speaks it.
    var tls: (certificate: String, key: String)?
    let userAndPassword = "bench:bench-pass"

    func run() throws {
        let lines = quick ? 200_000 : 1_000_000
        let keystrokes = quick ? 300 : 2000
        var logs: [String] = []
        if !memoryOnly {
            // A ring larger than all of `seq`'s output: the broadcast rows check that every
            // viewer got every line, and a viewer that fell a whole ring behind (eight clients
            // reading and checking on two cores can) would be re-synchronised past the lines
            // it missed, as the slow-consumer policy says.
            let server = try startServer(ringBytes: 8 << 20)
            defer { stop(server) }
            print("cloister-bench e2e: \(server.description), loopback, best of 3 for throughput; \(keystrokes) keystrokes per session for latency")
            print("")
            print("| measure | cloister | baseline | ratio |")
            print("|---|---|---|---|")
            try timedRows(server, lines: lines, keystrokes: keystrokes)
            logs.append(log(server))
        } else {
            print("| measure | cloister | baseline | ratio |")
            print("|---|---|---|---|")
        }
        // On a server of its own: after the rows above its heap has held thousands of sessions
        // and would take 64 more in memory it already has, which is not what a session costs.
        let server = try startServer()
        defer { stop(server) }
        let memory = try memoryPerSession(server, sessions: 64)
        print("| memory per open session (RSS growth over 64 more sessions, 64 open before, on a fresh server) | \(fixed(memory.cloister / 1024, 1)) KiB in Cloister's processes | the shell itself \(fixed(memory.shell / 1024, 1)) KiB | |")
        let roles = memory.byRole.sorted { $0.key < $1.key }.map { "\($0.key) \(fixed($0.value / 1024, 1))" }
        print("")
        print("memory per open session by role (KiB): \(roles.joined(separator: ", "))")
        logs.append(log(server))
        let all = logs.joined()
        let violations = all.components(separatedBy: "sandbox violation").count - 1
        let restarts = all.components(separatedBy: "worker ended").count - 1 + all.components(separatedBy: "vault ended").count - 1
        print("")
        print("sandbox violations during the run: \(violations); roles restarted: \(restarts)")
    }

    func stop(_ server: Server) {
        kill(server.pid, SIGTERM)
        _ = try? server.child.wait()
        try? FileManager.default.removeItem(atPath: server.directory)
    }

    func log(_ server: Server) -> String {
        (try? String(contentsOfFile: server.directory + "/output", encoding: .utf8)) ?? ""
    }

    /// Throughput, echo latency and sessions per second, each against its baseline.
    func timedRows(_ server: Server, lines: Int, keystrokes: Int) throws {
        let raw = (0..<3).map { _ in (try? rawPTYThroughput(lines: lines)) ?? 0 }.max()!
        let served = try (0..<3).map { _ in try throughput(port: server.port, lines: lines) }.max()!
        print("| output throughput, `seq 1 \(lines)` (all lines verified in order) | \(fixed(served, 1)) MB/s | raw PTY read \(fixed(raw, 1)) MB/s | \(fixed(served / raw, 2)) |")

        var fanOut: [String] = []
        for readers in [1, 8] {
            let runs = try (0..<3).map { _ in try broadcastThroughput(server, lines: lines, readers: readers) }
            let rate = runs.map(\.rate).max()!
            // CPU per megabyte delivered (to all clients together), the median run's.
            let cpu = runs.sorted { $0.rate < $1.rate }[1].cpuPerMB
            fanOut.append("\(readers) client\(readers == 1 ? "" : "s"): " + ["vault", "worker"].map { "\($0) \(fixed((cpu[$0] ?? 0) * 1000, 2)) ms" }.joined(separator: ", "))
            print("| output throughput to each of \(readers) client\(readers == 1 ? "" : "s") of one session (a writer and \(readers - 1) viewer\(readers == 2 ? "" : "s"), every line checked) | \(fixed(rate, 1)) MB/s | raw PTY read \(fixed(raw, 1)) MB/s | \(fixed(rate / raw, 2)) |")
        }

        print("")
        print("server CPU per MB of output delivered (all clients together), by role: \(fanOut.joined(separator: "; "))")
        print("")
        let pair = socketpairRoundTrip(count: keystrokes * 5)
        for sessions in [1, 32] {
            let samples = try echoLatency(port: server.port, sessions: sessions, keystrokes: keystrokes)
            let (p50, p99) = percentiles(samples)
            print("| keystroke echo, \(sessions) session\(sessions == 1 ? "" : "s") at once, p50 / p99 | \(fixed(p50, 1)) / \(fixed(p99, 1)) µs | socketpair round trip \(fixed(pair.p50, 1)) / \(fixed(pair.p99, 1)) µs | \(fixed(p50 / pair.p50, 0)) / \(fixed(p99 / pair.p99, 0)) |")
        }

        let opened = try sessionsPerSecond(port: server.port, seconds: quick ? 1 : 3)
        let spawned = try rawSpawnsPerSecond(seconds: quick ? 1 : 3)
        print("| sessions opened per second (connect, authenticate, shell up, close), one client | \(fixed(opened, 0)) /s | spawn a shell on a raw PTY \(fixed(spawned, 0)) /s | \(fixed(opened / spawned, 2)) |")
    }

    // MARK: The server

    struct Server {
        var child: ChildProcess
        var pid: pid_t { child.pid }
        var port: UInt16
        var directory: String
        var workers: Int
        /// `--isolation client`: `workers` spares, a worker process per client.
        var perClient = false
        var recording = false
        var description: String { (perClient ? "a worker per client, \(workers) spares" : "\(workers) workers") + (recording ? ", --record" : "") }
        var recordings: String { directory + "/recordings" }
    }

    /// With `perClient`, `--isolation client` with four spares (as many as a client of the
    /// benchmark opens at once, plus room), else a pool of two workers.
    /// `recording`: with `--record` into the server's directory (`Server.recordings`).
    func startServer(maxClients: Int = 4096, ringBytes: Int? = nil, perClient: Bool = false, recording: Bool = false) throws -> Server {
        let tlsArguments = tls.map { ["--tls-cert", $0.certificate, "--tls-key", $0.key] } ?? []
        let executable = (ChildProcess.currentExecutable as NSString).deletingLastPathComponent + "/cloister"
        let directory = NSTemporaryDirectory() + "cloister-bench-\(getpid())" + (perClient ? "-client" : "") + (recording ? "-recorded" : "")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let log = open(directory + "/output", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(log) }
        let workers = perClient ? 4 : 2
        let child = try ChildProcess.spawn(executable, arguments: [
            "serve", "--listen", "127.0.0.1:0", "--credential", userAndPassword,
        ] + (perClient ? ["--isolation", "client", "--spare-workers", "\(workers)"] : ["--workers", "\(workers)"]) + [
            "--control-socket", directory + "/control.sock", "--max-clients", "\(maxClients)",
            // As ttyd: a session ends with its client, so the sessions-per-second loop leaves
            // no shells lingering behind it.
            "--session-linger", "0",
            // Every client of a benchmark is one source opening sessions by the dozen, as
            // ttyd, which has no such limit, is measured.
            "--max-unauthenticated", "\(maxClients):100:\(maxClients)", "--max-unauthenticated-per-source", "\(maxClients)",
        ] + tlsArguments + (ringBytes.map { ["--session-ring", "\($0)"] } ?? []) + (recording ? ["--record", directory + "/recordings"] : [])
            + ["--", "/bin/sh"], environment: ["LANG": "C.UTF-8"], output: FileDescriptor(rawValue: log))
        for _ in 0..<600 {
            let text = (try? String(contentsOfFile: directory + "/output", encoding: .utf8)) ?? ""
            if let range = text.range(of: "listening on http://127.0.0.1:") ?? text.range(of: "listening on https://127.0.0.1:"), let port = UInt16(text[range.upperBound...].prefix { $0.isNumber }) {
                // The roles start after the address is printed; a session proves they are up.
                for _ in 0..<300 {
                    if let client = try? attach(port: port) { try? client.input("exit\r"); return Server(child: child, port: port, directory: directory, workers: workers, perClient: perClient, recording: recording) }
                    usleep(50_000)
                }
                break
            }
            usleep(50_000)
        }
        kill(child.pid, SIGKILL)
        _ = try? child.wait()
        throw BenchFailure(description: "cloister serve did not come up: \((try? String(contentsOfFile: directory + "/output", encoding: .utf8)) ?? "")")
    }

    struct BenchFailure: Error, CustomStringConvertible { var description: String }

    /// A WebSocket with basic auth on the handshake, as a browser sends it after the page
    /// (ttyd checks it there; Cloister checks the AuthToken), so both servers get the same
    /// requests.
    func connect(port: UInt16) throws -> TerminalClient {
        try TerminalClient.connect(port: port, timeoutSeconds: 30,
                                   headers: [("Authorization", "Basic \(TerminalClient.token(userAndPassword))")], tls: tls != nil)
    }

    func attach(port: UInt16) throws -> TerminalClient {
        let client = try connect(port: port)
        try client.authenticate(token: TerminalClient.token(userAndPassword), columns: 200, rows: 50)
        return client
    }

    // MARK: Throughput

    /// MB/s of terminal output received by the client, from the command's start to its end
    /// marker; every line is checked.
    func throughput(port: UInt16, lines: Int) throws -> Double {
        let client = try attach(port: port)
        try client.input("stty -echo; echo go-$((1+1))\r")
        try client.readOutput { $0.contains("go-2") }
        let start = now()
        // The markers are computed by the shell, so neither a prompt nor an echo can match.
        try client.input("echo start-$((1+2)); seq 1 \(lines); echo end-$((2+2))\r")
        let bytes = try client.readOutput(untilMarker: "end-4")
        let seconds = now() - start
        let text = String(decoding: bytes, as: UTF8.self)
        guard let begin = text.range(of: "start-3") else { throw BenchFailure(description: "no start marker") }
        var expected = 1
        for line in text[begin.upperBound...].split(whereSeparator: \.isNewline) {
            guard let n = Int(line) else { continue }
            guard n == expected else { throw BenchFailure(description: "line \(expected) expected, \(n) arrived") }
            expected += 1
        }
        guard expected == lines + 1 else { throw BenchFailure(description: "\(expected - 1) of \(lines) lines arrived") }
        try client.input("exit\r")
        return Double(text.utf8.count) / seconds / 1e6
    }

    /// MB/s each client of one session receives while `seq` prints: a writer and
    /// `readers - 1` read-only viewers, each reading (and checking) on a thread of its own;
    /// the time runs from the command to the last client's end marker.
    func broadcastThroughput(_ server: Server, lines: Int, readers: Int) throws -> (rate: Double, cpuPerMB: [String: Double]) {
        let port = server.port
        let writer = try attach(port: port)
        let info = try writer.awaitSession()
        try writer.input("stty -echo; echo go-$((1+1))\r")
        try writer.readOutput { $0.contains("go-2") }
        var clients = [writer]
        for _ in 1..<readers {
            let viewer = try connect(port: port)
            try viewer.authenticate(token: TerminalClient.token(userAndPassword), columns: 200, rows: 50,
                                    session: info.session, secret: info.read_secret)
            try viewer.awaitSession()
            _ = try viewer.drainOutput(forSeconds: 0)
            clients.append(viewer)
        }
        let failures = Mutex<[String]>([])
        let finished = Mutex<[Double]>([])
        let done = DispatchGroup()
        let cpuBefore = treeCPU(root: server.pid)
        let start = now()
        try writer.input("echo start-$((1+2)); seq 1 \(lines); echo end-$((2+2))\r")
        let handed = clients.map(Handed.init)
        for (index, client) in handed.enumerated() {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                do {
                    let sessionMessages = client.client.sessionMessages
                    let bytes = try client.client.readOutput(untilMarker: "end-4")
                    finished.withLock { $0.append(now()) }
                    let text = String(decoding: bytes, as: UTF8.self)
                    guard let begin = text.range(of: "start-3") else { throw BenchFailure(description: "no start marker") }
                    let numbers = text[begin.upperBound...].split(whereSeparator: \.isNewline).compactMap { Int($0) }
                    guard numbers == Array(1...lines) else {
                        let first = zip(numbers, 1...lines).first { $0 != $1 }
                        let resynced = client.client.sessionMessages > sessionMessages
                        throw BenchFailure(description: "client \(index) (\(index == 0 ? "the writer" : "a viewer")) did not get every line in order: "
                                           + "\(numbers.count) of \(lines) lines, the first wrong one \(first.map { "\($0.0) where \($0.1) was due" } ?? "none")"
                                           + (resynced ? ", after a re-synchronisation (it fell a ring behind)" : ""))
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        done.wait()
        let cpuAfter = treeCPU(root: server.pid)
        // Until the last client had everything; checking the lines is not timed.
        let seconds = (finished.withLock { $0.max() } ?? now()) - start
        if let failure = failures.withLock({ $0.first }) { throw BenchFailure(description: failure) }
        try writer.input("exit\r")
        let bytes = Double("start-3\r\n".utf8.count + (1...lines).reduce(0) { $0 + "\($1)\r\n".utf8.count })
        let delivered = bytes * Double(readers) / 1e6
        var cpu: [String: Double] = [:]
        for (role, seconds) in cpuAfter { cpu[role] = (seconds - (cpuBefore[role] ?? 0)) / delivered }
        return (bytes / seconds / 1e6, cpu)
    }

    /// A client handed to the one thread that reads it.
    final class Handed: @unchecked Sendable {
        let client: TerminalClient
        init(_ client: TerminalClient) { self.client = client }
    }

    /// The same command on a PTY read directly by this process.
    func rawPTYThroughput(lines: Int) throws -> Double {
        try rawPTYThroughput("/usr/bin/seq", ["1", "\(lines)"])
    }

    /// MB/s of a command's output read straight from a PTY master by this process: the
    /// baseline a server's rate is set against.
    func rawPTYThroughput(_ executable: String, _ arguments: [String]) throws -> Double {
        let terminal = try PseudoTerminal.open(rows: 50, columns: 200)
        defer { try? terminal.master.close() }
        let start = now()
        let child = try ChildProcess.spawn(executable, arguments: arguments, terminal: terminal.slavePath)
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(terminal.master.rawValue, &buffer, buffer.count)
            if n <= 0 { break }  // EIO once the slave is closed
            total += n
        }
        let seconds = now() - start
        _ = try child.wait()
        return Double(total) / seconds / 1e6
    }

    // MARK: Latency

    /// Round trips of one keystroke to a `cat` on a raw-mode terminal and back, per session,
    /// all sessions typing at once. Microseconds.
    func echoLatency(port: UInt16, sessions: Int, keystrokes: Int) throws -> [Double] {
        let results = Mutex<[Double]>([])
        let failures = Mutex<[String]>([])
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        let token = TerminalClient.token(userAndPassword)
        for _ in 0..<sessions {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                var samples: [Double] = []
                do {
                    // Each thread sets up its own session; all start typing together.
                    let client = try connect(port: port)
                    try client.authenticate(token: token, columns: 200, rows: 50)
                    try client.input("stty raw -echo; echo ok-$((3+4)); exec cat\r")
                    try client.readOutput { $0.contains("ok-7") }
                    try client.input("!")  // cat is running once a byte comes back
                    try client.readOutput { $0.contains("!") }
                    ready.signal()
                    go.wait()
                    samples.reserveCapacity(keystrokes)
                    for i in 0..<keystrokes {
                        let key = String(UnicodeScalar(UInt8(97 + i % 26)))
                        let start = now()
                        try client.input(key)
                        try client.readOutput { $0.contains(key) }
                        samples.append((now() - start) * 1e6)
                    }
                    try? client.input("\u{4}")
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    ready.signal()
                }
                results.withLock { $0 += samples }
            }
        }
        for _ in 0..<sessions { ready.wait() }
        for _ in 0..<sessions { go.signal() }
        done.wait()
        if let failure = failures.withLock({ $0.first }) { throw BenchFailure(description: failure) }
        return results.withLock { $0 }
    }

    func socketpairRoundTrip(count: Int) -> (p50: Double, p99: Double) {
        var fds: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
        defer { close(fds[0]); close(fds[1]) }
        let peer = fds[1]
        let echo = Thread {
            var byte: UInt8 = 0
            while read(peer, &byte, 1) == 1 { _ = write(peer, &byte, 1) }
        }
        echo.start()
        var samples: [Double] = []
        var byte: UInt8 = 0x61
        for _ in 0..<count {
            let start = now()
            _ = write(fds[0], &byte, 1)
            _ = read(fds[0], &byte, 1)
            samples.append((now() - start) * 1e6)
        }
        shutdown(fds[0], Int32(SHUT_RDWR))
        return percentiles(samples)
    }

    // MARK: Sessions per second

    func sessionsPerSecond(port: UInt16, seconds: Double) throws -> Double {
        let (opened, elapsed) = try openSessions(port: port, seconds: seconds)
        return Double(opened) / elapsed
    }

    /// Sessions opened one after another for `seconds`, each closed once its shell answered:
    /// how many, and how long it took.
    func openSessions(port: UInt16, seconds: Double) throws -> (count: Int, seconds: Double) {
        let start = now()
        var opened = 0
        while now() - start < seconds {
            let client = try attach(port: port)
            try client.input("echo up-$((5+5))\r")
            try client.readOutput { $0.contains("up-10") }
            opened += 1
        }
        return (opened, now() - start)
    }

    func rawSpawnsPerSecond(seconds: Double) throws -> Double {
        let start = now()
        var spawned = 0
        while now() - start < seconds {
            let terminal = try PseudoTerminal.open(rows: 24, columns: 80)
            let child = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "echo up"], terminal: terminal.slavePath)
            var buffer = [UInt8](repeating: 0, count: 256)
            while read(terminal.master.rawValue, &buffer, buffer.count) > 0 {}
            _ = try child.wait()
            try terminal.master.close()
            spawned += 1
        }
        return Double(spawned) / (now() - start)
    }

    // MARK: Memory

    /// RSS of the server's process tree with `sessions` more idle sessions open, minus before;
    /// Cloister's processes and the shells counted apart. Bytes per session. The same number
    /// of sessions is opened first and kept open, so one-time costs (heap arenas, pools, the
    /// first pages of each allocator size class) are paid before `before` is read: what is
    /// left is what one more session costs.
    func memoryPerSession(_ server: Server, sessions: Int) throws -> (cloister: Double, shell: Double, byRole: [String: Double]) {
        try memoryPerSession(pid: server.pid, port: server.port, sessions: sessions)
    }

    /// The same for any server whose process tree starts at `pid`: its processes named
    /// `serverName` (Cloister's roles, or ttyd) apart from the rest (the shells).
    func memoryPerSession(pid: pid_t, port: UInt16, sessions: Int, serverName: String = "cloister") throws
        -> (cloister: Double, shell: Double, byRole: [String: Double]) {
        let server = (pid: pid, port: port)
        func open() throws -> TerminalClient {
            let client = try attach(port: server.port)
            try client.input("echo idle-$((8*8))\r")
            try client.readOutput { $0.contains("idle-64") }
            return client
        }
        let warm = try (0..<sessions).map { _ in try open() }
        usleep(200_000)
        let before = treeRSS(root: server.pid, serverName: serverName)
        var clients: [TerminalClient] = []
        for _ in 0..<sessions { clients.append(try open()) }
        usleep(200_000)
        let after = treeRSS(root: server.pid, serverName: serverName)
        withExtendedLifetime((warm, clients)) {}
        let cloister = Double(after.cloister - before.cloister) / Double(sessions)
        let shell = Double(after.shells - before.shells) / Double(sessions)
        var byRole: [String: Double] = [:]
        for (role, bytes) in after.byRole { byRole[role] = Double(bytes - (before.byRole[role] ?? 0)) / Double(sessions) }
        return (cloister, shell, byRole)
    }

    /// The PSS of a server's own processes (shells excluded): pages shared among them are
    /// divided, so a process per client is not counted as many copies of the binary.
    func servicePSS(root: pid_t, serverName: String = "cloister") -> Int {
        tree(root: root, serverName: serverName).reduce(0) { total, process in
            guard process.role != nil,
                  let rollup = try? String(contentsOfFile: "/proc/\(process.pid)/smaps_rollup", encoding: .utf8),
                  let line = rollup.split(separator: "\n").first(where: { $0.hasPrefix("Pss:") }),
                  let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else { return total }
            return total + kb * 1024
        }
    }

    /// The supervisor and its descendants, each with its role ("worker", "vault", "nursery",
    /// "supervisor"; a peer's processes: its name), or nil for a process that is not the
    /// server's (a shell).
    func tree(root: pid_t, serverName: String = "cloister") -> [(pid: pid_t, role: String?)] {
        var parent: [pid_t: pid_t] = [:]
        var name: [pid_t: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            parent[pid] = pid_t(fields[1])
            name[pid] = String(stat[stat.index(after: stat.firstIndex(of: "(")!)..<close])
        }
        func isDescendant(_ pid: pid_t) -> Bool {
            var p = pid
            while let up = parent[p], up > 1 { if up == root { return true }; p = up }
            return false
        }
        return parent.keys.filter { $0 == root || isDescendant($0) }.map { pid in
            guard name[pid] == serverName else { return (pid, nil) }
            // "cloister role worker …" (a sandboxed role), else the supervisor; a peer's own
            // processes go by its name.
            let arguments = ((try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()).split(separator: 0)
            let isRole = serverName == "cloister" && arguments.count > 2 && arguments[1].elementsEqual("role".utf8)
            let role = isRole ? String(decoding: arguments[2], as: UTF8.self) : serverName == "cloister" ? "supervisor" : serverName
            return (pid, role)
        }
    }

    /// Sums VmRSS over the supervisor and its descendants; the shells are the nursery's children.
    func treeRSS(root: pid_t, serverName: String = "cloister") -> (cloister: Int, shells: Int, byRole: [String: Int]) {
        var cloister = 0, shells = 0
        var byRole: [String: Int] = [:]
        for (pid, role) in tree(root: root, serverName: serverName) {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                  let kb = Int(line.split(separator: " ")[1]) else { continue }
            guard let role else {
                shells += kb * 1024
                continue
            }
            cloister += kb * 1024
            byRole[role, default: 0] += kb * 1024
        }
        return (cloister, shells, byRole)
    }

    /// CPU seconds (user and system) used so far by Cloister's processes, by role ("shell"
    /// for the rest). A role that exited meanwhile is not counted: the runs restart none.
    func treeCPU(root: pid_t, serverName: String = "cloister") -> [String: Double] {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var cpu: [String: Double] = [:]
        for (pid, role) in tree(root: root, serverName: serverName) {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            cpu[role ?? "shell", default: 0] += (user + system) / ticks
        }
        return cpu
    }
}

func percentiles(_ samples: [Double]) -> (p50: Double, p99: Double) {
    let sorted = samples.sorted()
    guard !sorted.isEmpty else { return (0, 0) }
    return (sorted[sorted.count / 2], sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
}
