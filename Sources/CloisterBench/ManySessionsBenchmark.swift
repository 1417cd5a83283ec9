import Foundation
import Processes
import SystemPackage
import Supervisor
import TerminalClient

#if canImport(Glibc)
import Glibc
#endif

/// `cloister-bench e2e --sessions N`: N concurrent sessions, each with a real shell. Opens
/// them one after another, checks that every shell answers, measures the server's memory
/// (and the shells' apart), times one more client from connecting to its shell's answer with
/// all N open, then closes them all and waits for every shell to be gone. Bounded in time
/// (`deadline` seconds for the whole run); it needs kernel.pty.max above N, and an open-file
/// hard limit it raises itself when run as root.
struct ManySessionsBenchmark {
    var sessions: Int
    var perClient = false
    /// `--record`: every session recorded, and each streams output at once before the end.
    var record = false
    /// `--stream`: the same streaming without recording, its baseline.
    var stream = false
    var deadline: Double = 1200
    let e2e = EndToEndBenchmark(quick: false)

    struct Failure: Error, CustomStringConvertible { var description: String }

    func run() throws {
        let start = now()
        func remaining() throws {
            if now() - start > deadline { throw Failure(description: "over the \(Int(deadline)) s bound") }
        }
        try checkKernelLimits()
        let server = try e2e.startServer(maxClients: sessions + 16, perClient: perClient, recording: record)
        defer { e2e.stop(server) }
        print("cloister-bench e2e --sessions \(sessions): \(server.description), loopback, one client process")
        let idle = e2e.treeRSS(root: server.pid)
        let idlePSS = e2e.servicePSS(root: server.pid)

        var clients: [TerminalClient] = []
        clients.reserveCapacity(sessions)
        let opening = now()
        for i in 0..<sessions {
            do {
                clients.append(try e2e.attach(port: server.port))
            } catch {
                throw Failure(description: "session \(i + 1) of \(sessions) not opened: \(error); the server said: \(tail(server))")
            }
            if i % 1000 == 999 { try remaining() }
        }
        let opened = now() - opening
        // Every shell answers (a shell that died would not).
        let checking = now()
        for (i, client) in clients.enumerated() {
            let marker = "live-\(i)-\(i % 7)"
            try client.input("echo live-\(i)-$((\(i) % 7))\r")
            _ = try client.readOutput { $0.contains(marker) }
            if i % 1000 == 999 { try remaining() }
        }
        let checked = now() - checking
        usleep(500_000)
        let loaded = e2e.treeRSS(root: server.pid)
        let loadedPSS = e2e.servicePSS(root: server.pid)
        let processes = e2e.tree(root: server.pid).filter { $0.role != nil }.count
        let shells = e2e.tree(root: server.pid).filter { $0.role == nil }.count

        // With --record: every session streams at once (`cat` of a 100 kB file: one process
        // each, blocked on its terminal most of the time), all of it recorded.
        var streamed: [String] = []
        if record || stream {
            let before = e2e.treeCPU(root: server.pid)
            let streaming = now()
            let text = server.directory + "/stream.txt"
            guard FileManager.default.createFile(atPath: text, contents: Data((1...20_000).map { "\($0)\n" }.joined().prefix(100_000).utf8),
                                                 attributes: [.posixPermissions: 0o644]) else { throw Failure(description: "cannot write \(text)") }
            for (i, client) in clients.enumerated() { try client.input("cat \(text); echo streamed-\(i)-$((\(i) % 7))\r") }
            var bytes = 0
            for (i, client) in clients.enumerated() { bytes += try client.readOutput(untilMarker: "streamed-\(i)-\(i % 7)").count }
            let seconds = now() - streaming
            // The recorder writes behind the clients: its CPU is read once it is idle.
            var recorderCPU = 0.0
            for _ in 0..<60 {
                usleep(500_000)
                let cpu = (e2e.treeCPU(root: server.pid)["recorder"] ?? 0) - (before["recorder"] ?? 0)
                if cpu == recorderCPU { break }
                recorderCPU = cpu
            }
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: server.recordings)) ?? []).filter { $0.hasSuffix(".cast") }
            var recorded = 0, gaps = 0
            for name in files {
                let text = (try? String(contentsOfFile: server.recordings + "/" + name, encoding: .utf8)) ?? ""
                recorded += text.utf8.count
                gaps += text.components(separatedBy: "\"gap: ").count - 1
            }
            streamed = ["| every session streaming at once (`cat` of 100 kB), all of it received | \(fixed(Double(bytes) / 1e6, 1)) MB in \(fixed(seconds, 1)) s (\(fixed(Double(bytes) / 1e6 / seconds, 1)) MB/s) |"]
            if record {
                streamed += [
                    "| recorded: files, bytes (JSON-escaped), gaps marked | \(files.count) files, \(fixed(Double(recorded) / 1e6, 1)) MB, \(gaps) gaps |",
                    "| the recorder's CPU for it | \(fixed(recorderCPU, 2)) s (\(fixed(recorderCPU * 1000 / (Double(bytes) / 1e6), 1)) ms per MB received) |",
                ]
            }
        }

        // One more client, with all of them open: from connecting to its shell's answer.
        let asking = now()
        let extra = try e2e.attach(port: server.port)
        try extra.input("echo one-more-$((6*7))\r")
        _ = try extra.readOutput { $0.contains("one-more-42") }
        let oneMore = now() - asking

        let closing = now()
        for client in clients + [extra] { try? client.closeNormally() }
        clients.removeAll()
        withExtendedLifetime(extra) {}
        var left = shells
        while now() - closing < 300 {
            left = e2e.tree(root: server.pid).filter { $0.role == nil }.count
            if left == 0 { break }
            usleep(200_000)
        }
        let closed = now() - closing

        let perSession = Double(loaded.cloister - idle.cloister) / Double(sessions)
        let shellEach = Double(loaded.shells - idle.shells) / Double(sessions)
        print("")
        print("| measure | value |")
        print("|---|---|")
        print("| sessions open at once, each with a live shell (`echo` answered) | \(sessions) (\(shells) shells counted) |")
        print("| time to open them, one after another | \(fixed(opened, 1)) s (\(Int(Double(sessions) / opened)) /s) |")
        print("| time to check every shell | \(fixed(checked, 1)) s |")
        print("| Cloister's processes, idle / with all open | \(fixed(Double(idle.cloister) / 1_048_576, 1)) / \(fixed(Double(loaded.cloister) / 1_048_576, 1)) MiB RSS (\(fixed(perSession / 1024, 1)) KiB per session) |")
        // RSS counts the pages processes share (the binary, libraries) in each of them; PSS
        // divides them among the sharers, which is what a process per client costs.
        print("| Cloister's processes, idle / with all open, PSS | \(fixed(Double(idlePSS) / 1_048_576, 1)) / \(fixed(Double(loadedPSS) / 1_048_576, 1)) MiB in \(processes) processes (\(fixed(Double(loadedPSS - idlePSS) / Double(sessions) / 1024, 1)) KiB per session) |")
        print("| the shells | \(fixed(Double(loaded.shells) / 1_048_576, 1)) MiB RSS (\(fixed(shellEach / 1024, 1)) KiB each) |")
        print("| one more client, from connecting to its shell's answer | \(fixed(oneMore * 1000, 1)) ms |")
        print("| closing them all, until every shell is gone | \(fixed(closed, 1)) s (\(left) left) |")
        for line in streamed { print(line) }
        if record {
            // Every recording ended with its session: checked as `cloister recordings verify` does.
            let executable = (ChildProcess.currentExecutable as NSString).deletingLastPathComponent + "/cloister"
            let quiet = try FileDescriptor.open("/dev/null", .writeOnly, options: .closeOnExec)
            defer { try? quiet.close() }
            var verified = ChildProcess.Termination.exited(-1)
            for _ in 0..<20 {
                verified = try ChildProcess.spawn(executable, arguments: ["recordings", "verify", server.recordings], output: quiet).wait()
                if verified == .exited(0) { break }
                usleep(500_000)
            }
            print("| `cloister recordings verify` of the directory | \(verified == .exited(0) ? "no problem" : "problems (\(verified))") |")
        }
        let log = e2e.log(server)
        let violations = log.components(separatedBy: "sandbox violation").count - 1
        let restarts = log.components(separatedBy: "worker ended").count - 1 + log.components(separatedBy: "vault ended").count - 1
        print("")
        print("sandbox violations during the run: \(violations); roles restarted: \(restarts); whole run \(fixed(now() - start, 1)) s")
        if left > 0 { throw Failure(description: "\(left) shells still running 300 s after their clients closed") }
    }

    /// A PTY per session and a descriptor per client here and in the server: said before
    /// starting, with the setting that would fix it, rather than found half-way.
    func checkKernelLimits() throws {
        let ptyMax = Int(((try? String(contentsOfFile: "/proc/sys/kernel/pty/max", encoding: .utf8)) ?? "0")
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        guard ptyMax >= sessions + 1100 else {
            throw Failure(description: "kernel.pty.max is \(ptyMax): \(sessions) sessions need more (a container's own /dev/pts keeps 1024 of it back); "
                          + "raise it for the run: sysctl -w kernel.pty.max=\(sessions + 2048)")
        }
        // The client's sockets here, and the vault's in the server, which inherits this hard
        // limit and refuses to start under what --max-clients needs.
        let isolation: RolePool.Isolation = perClient ? .perClient : .pool
        func openFiles(_ sessions: Int) -> Int {
            max(sessions + 1024, Server.vaultOpenFiles(maxClients: sessions + 16), Server.supervisorOpenFiles(maxClients: sessions + 16, isolation: isolation))
        }
        let needed = rlim_t(openFiles(sessions))
        var files = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        if files.rlim_max < needed { files.rlim_max = needed }
        files.rlim_cur = files.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0 else {
            let hard = files.rlim_max == needed ? { () -> rlim_t in var l = rlimit(); getrlimit(Int32(RLIMIT_NOFILE.rawValue), &l); return l.rlim_max }() : files.rlim_max
            let most = stride(from: sessions, to: 0, by: -16).first { openFiles($0) <= Int(hard) } ?? 0
            throw Failure(description: "\(sessions) sessions need \(needed) open files (the vault holds two per session and room for "
                          + "lingering ones; the supervisor as many again, and with a worker per client three per worker), above the hard "
                          + "limit \(hard), which setrlimit could not raise (errno \(errno): it takes CAP_SYS_RESOURCE); at most \(most) sessions here")
        }
    }

    func tail(_ server: EndToEndBenchmark.Server) -> String {
        let log = e2e.log(server)
        return String(log.suffix(1500))
    }
}
