import Foundation
import Processes
import SystemPackage
import TerminalClient

#if canImport(Glibc)
import Glibc
#endif

/// `cloister-bench compare`: Cloister and ttyd side by side in one run, with the same client
/// and the same shell, the two servers alternating run by run, each row next to the baseline
/// it cannot beat (the producer read straight from a PTY). The client's own CPU time is
/// reported, so that it is seen not to be what limits either server.
///
/// With `isolationPeer`, the other side is Cloister itself under `--isolation client` (a worker
/// process per client), so that the cost of that isolation is measured against the pool the
/// same way.
struct PeerComparison {
    var peer: String
    var quick: Bool
    var isolationPeer = false
    /// Both servers over TLS with one ECDSA P-256 certificate (ttyd's -S -C -K), the client too.
    var tls = false
    /// "haproxy" or "nginx": the other side is the same Cloister server reached through that
    /// balancer on loopback, proxying as deploy/haproxy-fleet.cfg and deploy/nginx-fleet.conf do
    /// (HTTP mode, the WebSocket tunnelled), so that what the balancer adds is measured.
    var balancer: String?
    /// The other side is the same Cloister with `--record`: what recording every session costs.
    var recordingPeer = false
    /// How the other side is named in the table, and its processes' name.
    var peerName: String { balancer.map { "through \($0)" } ?? (recordingPeer ? "with --record" : isolationPeer ? "per client" : "ttyd") }
    var peerProcess: String { balancer ?? (isolationPeer || recordingPeer ? "cloister" : "ttyd") }
    var bench = EndToEndBenchmark(quick: false)

    struct Peer {
        var child: ChildProcess
        var port: UInt16
        var directory: String?
    }

    /// ttyd on loopback, writable, with the benchmark's credential, running /bin/sh; or
    /// Cloister with a worker per client; or a balancer in front of `server`.
    func startPeer(inFrontOf server: UInt16) throws -> Peer {
        if let balancer { return try startBalancer(balancer, server: server) }
        if recordingPeer {
            let server = try bench.startServer(recording: true)
            return Peer(child: server.child, port: server.port, directory: server.directory)
        }
        if isolationPeer {
            // Room for the most sessions a comparison holds at once (the memory measure's
            // 128), within the supervisor's open-file need under this machine's hard limit.
            let server = try bench.startServer(maxClients: 1024, perClient: true)
            return Peer(child: server.child, port: server.port, directory: server.directory)
        }
        let port = Self.freePort()
        let log = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(log) }
        let tlsArguments = bench.tls.map { ["-S", "-C", $0.certificate, "-K", $0.key] } ?? []
        let child = try ChildProcess.spawn(peer, arguments: ["-i", "lo", "-p", "\(port)", "-W", "-c", bench.userAndPassword, "-P", "30"] + tlsArguments + ["/bin/sh"],
                                           environment: ["LANG": "C.UTF-8"], output: FileDescriptor(rawValue: log))
        for _ in 0..<200 {
            if let client = try? bench.attach(port: port) {
                try? client.input("exit\r")
                return Peer(child: child, port: port)
            }
            usleep(50_000)
        }
        kill(child.pid, SIGKILL)
        _ = try? child.wait()
        throw EndToEndBenchmark.BenchFailure(description: "\(peer) did not come up on port \(port)")
    }

    /// A free loopback port: bound, read back, released; the peer takes it right after.
    static func freePort() -> UInt16 {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")),
                                  sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &length) } }
        close(probe)
        return UInt16(bigEndian: address.sin_port)
    }

    /// HAProxy or nginx on loopback in front of the server at `server`, with the fleet
    /// configurations' proxying and timeouts (one host, no health check, no TLS).
    func startBalancer(_ name: String, server: UInt16) throws -> Peer {
        let port = Self.freePort()
        let directory = NSTemporaryDirectory() + "cloister-bench-\(name)-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let arguments: [String], executable: String
        if name == "haproxy" {
            try """
                defaults
                    mode http
                    timeout connect 5s
                    timeout client 90s
                    timeout server 90s
                    timeout tunnel 1h
                frontend cloister
                    bind 127.0.0.1:\(port)
                    default_backend cloister_hosts
                backend cloister_hosts
                    balance leastconn
                    server h1 127.0.0.1:\(server)

                """.write(toFile: directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
            (executable, arguments) = ("/usr/sbin/haproxy", ["-db", "-f", directory + "/haproxy.cfg"])
        } else {
            try """
                worker_processes 1;
                pid \(directory)/nginx.pid;
                error_log \(directory)/error.log warn;
                events { worker_connections 1024; }
                http {
                    access_log off;
                    client_body_temp_path \(directory)/body;
                    proxy_temp_path \(directory)/proxy;
                    map $http_upgrade $cloister_connection { default upgrade; '' close; }
                    upstream cloister_fleet { least_conn; server 127.0.0.1:\(server); }
                    server {
                        listen 127.0.0.1:\(port);
                        location / {
                            proxy_pass http://cloister_fleet;
                            proxy_http_version 1.1;
                            proxy_set_header Upgrade $http_upgrade;
                            proxy_set_header Connection $cloister_connection;
                            proxy_set_header Host $http_host;
                            proxy_buffering off;
                            proxy_read_timeout 300s;
                            proxy_send_timeout 300s;
                        }
                    }
                }
                """.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
            (executable, arguments) = ("/usr/sbin/nginx", ["-p", directory, "-c", directory + "/nginx.conf", "-g", "daemon off;"])
        }
        guard access(executable, X_OK) == 0 else { throw EndToEndBenchmark.BenchFailure(description: "\(executable) is not installed") }
        let log = try FileDescriptor.open(directory + "/output", .writeOnly, options: [.create, .closeOnExec], permissions: .ownerReadWrite)
        defer { try? log.close() }
        let child = try ChildProcess.spawn(executable, arguments: arguments, output: log)
        for _ in 0..<200 {
            if let client = try? bench.attach(port: port) {
                try? client.input("exit\r")
                return Peer(child: child, port: port, directory: directory)
            }
            usleep(50_000)
        }
        kill(child.pid, SIGTERM)
        _ = try? child.wait()
        throw EndToEndBenchmark.BenchFailure(description: "\(name) did not come up on port \(port): see \(directory)/output")
    }

    /// A bulk producer: a shell command, and how to tell that a client got all of its output.
    struct Producer {
        var command: String
        /// What is wrong with the bytes a client read between the markers, or nil.
        var check: (ArraySlice<UInt8>) -> String?
    }

    /// 4 KiB writes of one character, the fastest a PTY carries.
    func zeros(_ bytes: Int) -> Producer {
        Producer(command: "head -c \(bytes) /dev/zero | tr '\\0' Z") { output in
            let zs = output.reduce(0) { $0 + ($1 == UInt8(ascii: "Z") ? 1 : 0) }
            return zs == bytes ? nil : "\(zs) of \(bytes) bytes arrived"
        }
    }

    /// `cat` of a file of mixed terminal output: lines of words up to about 160 characters, some
    /// indented, some coloured with SGR sequences, some with 2-, 3- and 4-byte UTF-8. The
    /// client must get it byte for byte as the terminal sends it (each "\n" as "\r\n").
    func mixedText(_ bytes: Int, in directory: String) throws -> Producer {
        let words = ["the", "vault", "worker", "session", "ring", "circuit", "nursery", "terminal", "42", "0x7f3a",
                     "error:", "warning", "/usr/lib/x86_64-linux-gnu", "café", "naïve", "→", "✓", "日本語", "🙂", "Ünïcödé"]
        let colours = ["\u{1B}[1;31m", "\u{1B}[32m", "\u{1B}[38;5;208m", "\u{1B}[4;36m"]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(bound))
        }
        var file: [UInt8] = []
        file.reserveCapacity(bytes + 200)
        while file.count < bytes {
            var line = String(repeating: " ", count: next(4) == 0 ? 4 * next(4) : 0)
            var columns = line.count
            let width = next(161)
            while columns < width {
                var word = words[next(words.count)]
                if next(10) == 0 { word = colours[next(colours.count)] + word + "\u{1B}[0m" }
                line += (columns == line.count && line.allSatisfy { $0 == " " } ? "" : " ") + word
                columns += word.count + 1
            }
            file += Array(line.utf8) + [UInt8(ascii: "\n")]
        }
        let path = directory + "/mixed.txt"
        guard FileManager.default.createFile(atPath: path, contents: Data(file), attributes: [.posixPermissions: 0o600]) else {
            throw EndToEndBenchmark.BenchFailure(description: "cannot write \(path)")
        }
        var expected: [UInt8] = []
        expected.reserveCapacity(file.count * 21 / 20)
        for byte in file {
            if byte == UInt8(ascii: "\n") { expected.append(UInt8(ascii: "\r")) }
            expected.append(byte)
        }
        return Producer(command: "cat \(path)") { output in
            if output.elementsEqual(expected) { return nil }
            let first = zip(output.indices, expected.indices).first { output[$0.0] != expected[$0.1] }.map { $0.1 }
            return "\(output.count) bytes arrived where \(expected.count) were due, the first difference at byte \(first ?? min(output.count, expected.count))"
        }
    }

    /// MB/s of a producer's output through a server, the client's CPU seconds, and the
    /// server's CPU milliseconds per MB by role (`serverName`'s processes; "shell" for the rest).
    func bulkThroughput(port: UInt16, producer: Producer, server: pid_t, serverName: String) throws
        -> (rate: Double, clientCPU: Double, serverCPU: [String: Double]) {
        let client = try bench.attach(port: port)
        try client.input("stty -echo; echo go-$((1+1))\r")
        try client.readOutput { $0.contains("go-2") }
        let cpuBefore = processCPU()
        let serverBefore = bench.treeCPU(root: server, serverName: serverName)
        let start = now()
        try client.input("echo start-$((1+2)); \(producer.command); echo; echo end-$((2+2))\r")
        let received = try client.readOutput(untilMarker: "end-4")
        let seconds = now() - start
        let clientCPU = processCPU() - cpuBefore
        let serverAfter = bench.treeCPU(root: server, serverName: serverName)
        let begin = Array("start-3\r\n".utf8), end = Array("\r\nend-4".utf8)
        guard let from = received.firstRange(of: begin)?.upperBound, let to = received.lastRange(of: end)?.lowerBound, from <= to else {
            throw EndToEndBenchmark.BenchFailure(description: "\(serverName): the output's markers did not arrive")
        }
        // `end` starts with the bare `echo`'s line end.
        if let problem = producer.check(received[from..<to]) { throw EndToEndBenchmark.BenchFailure(description: "\(serverName): \(problem)") }
        try client.input("exit\r")
        let megabytes = Double(received.count) / 1e6
        var serverCPU: [String: Double] = [:]
        for (role, seconds) in serverAfter { serverCPU[role] = (seconds - (serverBefore[role] ?? 0)) * 1000 / megabytes }
        return (megabytes / seconds, clientCPU, serverCPU)
    }

    /// PSS growth of a Cloister service's own processes per session, over `sessions` more
    /// with as many open before.
    func pssPerSession(root: pid_t, port: UInt16, sessions: Int) throws -> Double {
        func open() throws -> TerminalClient {
            let client = try bench.attach(port: port)
            try client.input("echo idle-$((8*8))\r")
            try client.readOutput { $0.contains("idle-64") }
            return client
        }
        let warm = try (0..<sessions).map { _ in try open() }
        usleep(500_000)
        let before = bench.servicePSS(root: root, serverName: "cloister")
        let more = try (0..<sessions).map { _ in try open() }
        usleep(500_000)
        let after = bench.servicePSS(root: root, serverName: "cloister")
        withExtendedLifetime((warm, more)) {}
        return Double(after - before) / Double(sessions)
    }

    func processCPU() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// The rows `--only` may name.
    enum Row: String, CaseIterable { case idle, memory, bulk, echo, sessions }

    mutating func run(runs: Int? = nil, only: Set<Row> = Set(Row.allCases)) throws {
        guard isolationPeer || recordingPeer || balancer != nil || access(peer, X_OK) == 0 else {
            print("cloister-bench compare: no peer at \(peer) (see ../shared/peers/README.md; --peer PATH); nothing compared")
            return
        }
        if tls {
            let directory = NSTemporaryDirectory() + "cloister-bench-tls-\(getpid())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let (certificate, key) = (directory + "/cert.pem", directory + "/key.pem")
            let quiet = try FileDescriptor.open("/dev/null", .writeOnly, options: .closeOnExec)
            defer { try? quiet.close() }
            let made = try ChildProcess.spawn("/usr/bin/openssl", arguments: ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                                                             "-nodes", "-keyout", key, "-out", certificate, "-days", "2",
                                                                             "-subj", "/CN=localhost"], output: quiet).wait()
            guard made == .exited(0) else { throw EndToEndBenchmark.BenchFailure(description: "openssl req ended \(made)") }
            chmod(key, 0o600)
            bench.tls = (certificate, key)
        }
        defer { if let tls = bench.tls { try? FileManager.default.removeItem(atPath: (tls.certificate as NSString).deletingLastPathComponent) } }
        let cloister = try bench.startServer()
        defer { bench.stop(cloister) }
        let ttyd = try startPeer(inFrontOf: cloister.port)
        defer {
            kill(ttyd.child.pid, SIGTERM)
            _ = try? ttyd.child.wait()
            if let directory = ttyd.directory { try? FileManager.default.removeItem(atPath: directory) }
        }
        let bytes = quick ? 8 << 20 : 64 << 20
        let runs = runs ?? (quick ? 1 : 5)
        let keystrokes = quick ? 300 : 2000
        let other = balancer.map { "the same server through \($0)" }
            ?? (recordingPeer ? "the same Cloister recording every session (--record)" : isolationPeer ? "Cloister (--isolation client, 4 spares)" : peer)
        print("cloister-bench compare\(tls ? " over TLS (ECDSA P-256, one certificate for both)" : ""): Cloister (\(cloister.description)) and \(other), loopback, the same client, runs alternating; "
              + "medians of \(runs) runs, (lowest-highest)")
        print("")
        print("| measure | Cloister | \(peerName) | ratio (Cloister / \(peerName)) | baseline |")
        print("|---|---|---|---|---|")

        // Both servers as they start, before anything else has run: every process the service
        // runs (shells excluded), then the cost of more sessions on top of as many open.
        if only.contains(.idle) {
            usleep(500_000)
            let idle = (bench.servicePSS(root: cloister.pid, serverName: "cloister"), bench.servicePSS(root: ttyd.child.pid, serverName: peerProcess))
            let processes = (bench.tree(root: cloister.pid).filter { $0.role != nil }.count,
                             bench.tree(root: ttyd.child.pid, serverName: peerProcess).filter { $0.role != nil }.count)
            print("| the idle service (PSS of its own processes, before any session) | \(fixed(Double(idle.0) / 1e6, 1)) MB in \(processes.0) processes | \(fixed(Double(idle.1) / 1e6, 1)) MB in \(processes.1) | \(fixed(Double(idle.0) / Double(idle.1), 1)) | |")
        }
        if only.contains(.memory) {
            let sessions = quick ? 16 : 64
            if isolationPeer {
                // A process per session shares the binary's pages with the others: PSS, not
                // RSS, says what each one costs.
                let memory = (try pssPerSession(root: cloister.pid, port: cloister.port, sessions: sessions),
                              try pssPerSession(root: ttyd.child.pid, port: ttyd.port, sessions: sessions))
                print("| memory per open session (PSS growth of the service's own processes over \(sessions) more, \(sessions) open before; shells excluded) | \(fixed(memory.0 / 1024, 1)) KiB | \(fixed(memory.1 / 1024, 1)) KiB | \(fixed(memory.0 / memory.1, 2)) | |")
            } else {
                let memory = (try bench.memoryPerSession(pid: cloister.pid, port: cloister.port, sessions: sessions),
                              try bench.memoryPerSession(pid: ttyd.child.pid, port: ttyd.port, sessions: sessions, serverName: peerProcess))
                print("| memory per open session (RSS growth over \(sessions) more, \(sessions) open before, on a fresh server; shells excluded) | \(fixed(memory.0.cloister / 1024, 1)) KiB | \(fixed(memory.1.cloister / 1024, 1)) KiB | \(fixed(memory.0.cloister / memory.1.cloister, 2)) | |")
            }
        }

        typealias Run = (rate: Double, clientCPU: Double, serverCPU: [String: Double])
        var bulk: [(name: String, ours: [Run], theirs: [Run])] = []
        if only.contains(.bulk) {
            let producers = [("zeros", zeros(bytes)), ("mixed text", try mixedText(bytes / 2, in: cloister.directory))]
            for (name, producer) in producers {
                var raw: [Double] = [], ours: [Run] = [], theirs: [Run] = []
                for _ in 0..<runs {
                    raw.append(try bench.rawPTYThroughput("/bin/sh", ["-c", producer.command]))
                    ours.append(try bulkThroughput(port: cloister.port, producer: producer, server: cloister.pid, serverName: "cloister"))
                    theirs.append(try bulkThroughput(port: ttyd.port, producer: producer, server: ttyd.child.pid, serverName: peerProcess))
                }
                let (mine, peers) = (ours.map(\.rate), theirs.map(\.rate))
                let ratios = zip(mine, peers).map { $0 / $1 }, ofRaw = (zip(mine, raw).map { $0 / $1 }, zip(peers, raw).map { $0 / $1 })
                let what = name == "zeros" ? "`\(producer.command.replacingOccurrences(of: "|", with: "\\|"))` (\(bytes >> 20) MiB, every byte counted)"
                    : "`cat` of \(bytes >> 21) MiB of mixed text (colours, UTF-8, lines of up to about 160 characters; byte for byte)"
                print("| bulk output, \(what) | \(spread(mine, 1)) MB/s | \(spread(peers, 1)) MB/s | \(spread(ratios, 2)) | raw PTY read \(spread(raw, 1)) MB/s (Cloister \(spread(ofRaw.0, 2)), \(peerName) \(spread(ofRaw.1, 2)) of it, run by run) |")
                bulk.append((name, ours, theirs))
            }
        }

        // Server CPU (every process but the shells), per unit of work, by role: summed over
        // the runs, so that 10 ms ticks average out.
        var perUnit: [(what: String, unit: String, ours: [String: Double], theirs: [String: Double])] = []
        func measured<T>(_ server: pid_t, _ name: String, _ work: () throws -> T) rethrows -> (T, [String: Double]) {
            let before = bench.treeCPU(root: server, serverName: name)
            let result = try work()
            var used: [String: Double] = [:]
            for (role, seconds) in bench.treeCPU(root: server, serverName: name) where role != "shell" {
                used[role] = seconds - (before[role] ?? 0)
            }
            return (result, used)
        }
        func per(_ cpu: [String: Double], _ count: Int, _ scale: Double) -> [String: Double] {
            cpu.mapValues { $0 * scale / Double(max(count, 1)) }
        }

        if only.contains(.echo) {
            for sessions in [1, 32] {
                var mine: [Double] = [], peers: [Double] = []
                var cpu: ([String: Double], [String: Double]) = ([:], [:])
                for _ in 0..<runs {
                    let (m, c) = try measured(cloister.pid, "cloister") {
                        try bench.echoLatency(port: cloister.port, sessions: sessions, keystrokes: keystrokes / runs)
                    }
                    let (p, t) = try measured(ttyd.child.pid, peerProcess) {
                        try bench.echoLatency(port: ttyd.port, sessions: sessions, keystrokes: keystrokes / runs)
                    }
                    mine += m
                    peers += p
                    cpu.0.merge(c, uniquingKeysWith: +)
                    cpu.1.merge(t, uniquingKeysWith: +)
                }
                if sessions == 1 {
                    perUnit.append(("keystroke echoed (1 session, connecting included)", "µs", per(cpu.0, mine.count, 1e6), per(cpu.1, peers.count, 1e6)))
                }
                let (m, p) = (percentiles(mine), percentiles(peers))
                print("| keystroke echo through `cat`, \(sessions) session\(sessions == 1 ? "" : "s") at once, p50 / p99 | \(fixed(m.p50, 0)) / \(fixed(m.p99, 0)) µs | \(fixed(p.p50, 0)) / \(fixed(p.p99, 0)) µs | \(fixed(m.p50 / p.p50, 2)) / \(fixed(m.p99 / p.p99, 2)) | |")
            }
        }

        if only.contains(.sessions) {
            var opened: ([Double], [Double]) = ([], [])
            var counts = (0, 0)
            var cpu: ([String: Double], [String: Double]) = ([:], [:])
            for _ in 0..<runs {
                let (m, c) = try measured(cloister.pid, "cloister") { try bench.openSessions(port: cloister.port, seconds: quick ? 1 : 2) }
                let (p, t) = try measured(ttyd.child.pid, peerProcess) { try bench.openSessions(port: ttyd.port, seconds: quick ? 1 : 2) }
                opened.0.append(Double(m.count) / m.seconds)
                opened.1.append(Double(p.count) / p.seconds)
                counts.0 += m.count
                counts.1 += p.count
                cpu.0.merge(c, uniquingKeysWith: +)
                cpu.1.merge(t, uniquingKeysWith: +)
            }
            print("| sessions opened per second, one after another | \(spread(opened.0, 0)) /s | \(spread(opened.1, 0)) /s | \(spread(zip(opened.0, opened.1).map { $0 / $1 }, 2)) | |")
            perUnit.append(("session opened", "ms", per(cpu.0, counts.0, 1e3), per(cpu.1, counts.1, 1e3)))
        }
        if !perUnit.isEmpty { print("") }
        for entry in perUnit {
            func line(_ cpu: [String: Double]) -> String {
                cpu.keys.sorted().map { "\($0) \(fixed(cpu[$0]!, 1))" }.joined(separator: ", ") + " (all \(fixed(cpu.values.reduce(0, +), 1)))"
            }
            print("server CPU per \(entry.what) (\(entry.unit), 10 ms ticks summed over the runs): Cloister \(line(entry.ours)); \(peerName) \(line(entry.theirs))")
        }

        if recordingPeer, let directory = ttyd.directory {
            let recordings = directory + "/recordings"
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: recordings)) ?? []).filter { $0.hasSuffix(".cast") }
            var bytes = 0, gaps = 0
            for name in files {
                let text = (try? String(contentsOfFile: recordings + "/" + name, encoding: .utf8)) ?? ""
                bytes += text.utf8.count
                gaps += text.components(separatedBy: "\"gap: ").count - 1
            }
            print("")
            print("recorded by the server with --record: \(files.count) recordings, \(fixed(Double(bytes) / 1e6, 1)) MB, \(gaps) gaps marked")
        }
        for (name, ours, theirs) in bulk {
            print("")
            print("client CPU per bulk run of \(name) (s): Cloister \(ours.map { fixed($0.clientCPU, 2) }.joined(separator: ", ")); \(peerName) \(theirs.map { fixed($0.clientCPU, 2) }.joined(separator: ", ")). The raw PTY baseline is read by the same process without WebSocket framing.")
            func cpu(_ runs: [Run]) -> String {
                Set(runs.flatMap(\.serverCPU.keys)).sorted().map { role in "\(role) \(spread(runs.map { $0.serverCPU[role] ?? 0 }, 1))" }
                    .joined(separator: ", ")
            }
            print("server CPU per MB of \(name) (ms, 10 ms ticks): Cloister \(cpu(ours)); \(peerName) \(cpu(theirs))")
        }
    }

    /// The median, and the lowest and highest, as "median (low-high)".
    func spread(_ values: [Double], _ digits: Int) -> String {
        let sorted = values.sorted()
        guard let low = sorted.first, let high = sorted.last else { return "-" }
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        return sorted.count == 1 ? fixed(median, digits) : "\(fixed(median, digits)) (\(fixed(low, digits))-\(fixed(high, digits)))"
    }
}
