import Foundation
import Processes
import Synchronization
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Sessions streaming numbered lines through clients that resume on their own, while roles
/// are killed with SIGKILL: no line lost or doubled, no shell restarted, the pool back to full
/// size. `make test` runs short versions; `make chaos` the long one (CLOISTER_CHAOS_SESSIONS,
/// CLOISTER_CHAOS_SECONDS), with a role of each kind killed in turn.
final class ChaosTests: XCTestCase {
    static var sessions: Int { ProcessInfo.processInfo.environment["CLOISTER_CHAOS_SESSIONS"].flatMap(Int.init) ?? 6 }
    static var seconds: Int { ProcessInfo.processInfo.environment["CLOISTER_CHAOS_SECONDS"].flatMap(Int.init) ?? 8 }
    static var long: Bool { ProcessInfo.processInfo.environment["CLOISTER_CHAOS_SECONDS"] != nil }

    /// One client's thread and what it saw.
    final class Stream: @unchecked Sendable {
        var result: Result<(text: String, resumes: Int), Error>?
        let done = DispatchSemaphore(value: 0)
    }

    func testKilledWorkersLoseNoLineAndRestartNoShell() throws {
        try run(sessions: Self.sessions, seconds: Self.seconds, roles: Self.long ? ["worker", "vault", "nursery"] : ["worker"])
    }

    /// The vault owns every terminal and ring, so its death used to end every shell: now the
    /// supervisor keeps each session's PTY master and ring for the next vault, which adopts
    /// them. Killed several times while eight sessions stream 30,000 lines each and their
    /// clients type.
    func testAKilledVaultLosesNoLineAndRestartsNoShell() throws {
        try run(sessions: 8, seconds: 4, roles: ["vault"], lines: 30_000, killEvery: 0.7)
    }

    /// The nursery is every shell's parent: killed, the shells live on and the vault (which
    /// is restarted with a new nursery) adopts their sessions.
    func testAKilledNurseryRestartsNoShell() throws {
        try run(sessions: 4, seconds: 4, roles: ["nursery"])
    }

    /// Streams numbered lines in `sessions` sessions (about 100 a second, or `lines` spread
    /// over about `seconds` + 2) while every client types a command every 300 ms, and kills a
    /// role of `roles` in turn every `killEvery` seconds for `seconds`. Then every line must
    /// have arrived once and in order, every typed command must have run once and in order
    /// (the terminal does not echo during the stream, so a typed character cannot split a
    /// numbered line; the shell runs what was typed once the stream ends), and every shell
    /// must be the one that started.
    private func run(sessions count: Int, seconds: Int, roles: [String], lines wanted: Int? = nil, killEvery: Double = 2) throws {
        let server = try ServedCloister.start(workers: 2, extra: ["--max-clients", "\(4 * count + 16)"])
        var kills: [String: Int] = [:]
        let clients = try Self.stream(server, sessions: count, seconds: seconds, lines: wanted) {
            let end = Date().addingTimeInterval(Double(seconds))
            var turn = 0
            while Date() < end {
                usleep(UInt32(killEvery * 1_000_000))
                let role = roles[turn % roles.count]
                turn += 1
                // A role being restarted has no process for a moment: wait for it, briefly.
                var victims: [pid_t] = []
                for _ in 0..<100 {
                    victims = try Self.pids(of: role, in: server)
                    if !victims.isEmpty { break }
                    usleep(20_000)
                }
                if let victim = victims.randomElement(), kill(victim, SIGKILL) == 0 { kills[role, default: 0] += 1 }
            }
        }
        XCTAssertGreaterThan(kills.values.reduce(0, +), 0, "no role was killed")
        if kills["vault"] != nil || kills["nursery"] != nil {
            let status = try server.control("status")
            let keeping = try XCTUnwrap(status["keeping"] as? [String: Any], "\(status)")
            XCTAssertGreaterThanOrEqual(keeping["vault_generation"] as? Int ?? 0, 2, "\(keeping)")
            XCTAssertGreaterThanOrEqual(keeping["sessions_adopted"] as? Int ?? 0, count, "\(keeping)")
            XCTAssertEqual(keeping["sessions_set_aside"] as? Int, 0, "\(keeping)")
            let sessions = try XCTUnwrap(try server.control("sessions")["sessions"] as? [[String: Any]])
            XCTAssertEqual(sessions.count, count)
            XCTAssertTrue(sessions.allSatisfy { ($0["adoptions"] as? Int ?? 0) >= 1 }, "\(sessions)")
            // A shell that ends after it all is reaped (by the supervisor, if its nursery was
            // killed) and its client told how, as any shell's.
            try clients[0].input("exit 3\r")
            XCTAssertThrowsError(try clients[0].readOutput(untilMarker: "never", deadline: Date().addingTimeInterval(30))) { error in
                XCTAssertEqual((error as? TerminalClient.Closed)?.code, 1000, "\(error)")
                XCTAssertEqual((error as? TerminalClient.Closed)?.reason, "exit status 3", "\(error)")
            }
        }
        print("chaos: \(count) sessions, \(seconds) s, killed \(kills)")
    }

    /// The workload `run` describes, with `disturb` in place of the kills: it runs while the
    /// sessions stream and their clients type, and returns when the disturbance is over.
    @discardableResult
    static func stream(_ server: ServedCloister, sessions count: Int, seconds: Int, lines wanted: Int? = nil,
                       disturb: () throws -> Void) throws -> [ResumingClient] {
        let token = TerminalClient.token(ServedCloister.userAndPassword)
        let lines = wanted ?? 100 * (seconds + 2)
        // A pause every `batch` lines, 50 pauses of 0.1 s at least: the stream outlasts the kills.
        let batch = max(20, lines / (10 * (seconds + 2)))
        let command = "stty -echo; echo start-pid=$$.; i=0; while [ $i -lt \(lines) ]; do echo n-$i; i=$((i+1)); "
            + "[ $((i % \(batch))) = 0 ] && sleep 0.1; done; echo end-pid=$$.; echo fin-$((6*7))\r"
        let deadline = Date().addingTimeInterval(Double(seconds) + 120)
        let streams = (0..<count).map { _ in Stream() }
        var clients: [ResumingClient] = []
        for stream in streams {
            let client = try ResumingClient(port: server.port, token: token)
            clients.append(client)
            try client.input(command)
            let handed = Handed(client)
            Thread {
                stream.result = Result {
                    let bytes = try handed.client.readOutput(untilMarker: "fin-42", deadline: deadline)
                    return (String(decoding: bytes, as: UTF8.self), handed.client.resumes)
                }
                stream.done.signal()
            }.start()
        }
        let typing = Typing(clients)
        let typist = Thread { typing.run() }
        typist.start()
        do {
            try disturb()
        } catch {
            typing.stop()
            throw error
        }
        typing.stop()
        while !typing.isStopped { usleep(10_000) }
        for stream in streams {
            XCTAssertEqual(stream.done.wait(timeout: .now() + .seconds(Int(deadline.timeIntervalSinceNow) + 1)), .success,
                           "a client did not finish")
        }
        var resumes = 0
        for (i, stream) in streams.enumerated() {
            guard case .success(let (streamed, resumed))? = stream.result else {
                XCTFail("session \(i): \(String(describing: stream.result))\n\(server.output.suffix(3000))")
                continue
            }
            resumes += resumed
            // The typed commands run once the stream is over; the last one says all have.
            let typed = typing.typed[i]
            let client = clients[i]
            try client.input("echo typed-\(i)-last-$((40+2))\r")
            let rest = String(decoding: try client.readOutput(untilMarker: "typed-\(i)-last-42", deadline: Date().addingTimeInterval(60)),
                              as: UTF8.self)
            let text = streamed + rest
            let numbers = text.split(separator: "\r\n").compactMap { line in line.hasPrefix("n-") ? Int(line.dropFirst(2)) : nil }
            if numbers != Array(0..<lines) {
                let missing = Set(0..<lines).subtracting(numbers).sorted()
                XCTFail("session \(i): \(numbers.count) lines of \(lines), missing \(missing.prefix(10)), doubled "
                        + "\(numbers.count - Set(numbers).count)\n\(server.output.suffix(2000))")
            }
            let ran = text.matches(of: /typed-(\d+)-(\d+)-42/).map { (Int($0.output.1)!, Int($0.output.2)!) }
            XCTAssertTrue(ran.allSatisfy { $0.0 == i }, "session \(i) ran only its own client's input")
            XCTAssertEqual(ran.map(\.1), Array(0..<typed), "session \(i): every typed command ran once, in order")
            let pids = text.matches(of: /(start|end)-pid=(\d+)\./).map { String($0.output.2) }
            XCTAssertEqual(pids.count, 2, "session \(i)")
            XCTAssertEqual(Set(pids).count, 1, "session \(i): the same shell from start to end")
        }
        XCTAssertGreaterThan(resumes, 0, "some client had to resume")
        XCTAssertTrue(eventually(30) { (try? server.workers().filter { $0["state"] as? String == "running" }.count) == 2 },
                      "the pool is back to full size")
        print("stream: \(count) sessions, \(resumes) resumes, \(lines) lines and \(typing.typed.reduce(0, +)) typed commands in all")
        return clients
    }

    /// Types a numbered command into each client in turn, one every 300 ms per client.
    final class Typing: @unchecked Sendable {
        let clients: [ResumingClient]
        private(set) var typed: [Int]
        private let flag = NSLock()
        private var stopping = false
        private var stopped = false
        var isStopped: Bool { flag.withLock { stopped } }

        init(_ clients: [ResumingClient]) {
            self.clients = clients
            typed = Array(repeating: 0, count: clients.count)
        }

        func run() {
            while !flag.withLock({ stopping }) {
                for (i, client) in clients.enumerated() {
                    try? client.input("echo typed-\(i)-\(typed[i])-$((40+2))\r")
                    typed[i] += 1
                }
                usleep(300_000)
            }
            flag.withLock { stopped = true }
        }

        func stop() { flag.withLock { stopping = true } }
    }

    /// The live processes of `role`: the workers from the control socket, the vault from its
    /// status, the nursery as the supervisor's child running `role nursery`.
    static func pids(of role: String, in server: ServedCloister) throws -> [pid_t] {
        switch role {
        case "worker": return try server.workers().compactMap { ($0["pid"] as? Int).map(pid_t.init) }
        case "vault": return ((try server.control("status")["vault"] as? [String: Any])?["pid"] as? Int).map { [pid_t($0)] } ?? []
        default:
            // Every thread's children: the roles are spawned from a thread of their own.
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.child.pid)/task")) ?? []
            let children = tasks.map { (try? String(contentsOfFile: "/proc/\(server.child.pid)/task/\($0)/children", encoding: .utf8)) ?? "" }
                .joined(separator: " ")
            return children.split(separator: " ").compactMap { pid_t($0) }.filter { pid in
                let argv = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
                return argv.split(separator: 0).dropFirst().prefix(2).map { String(decoding: $0, as: UTF8.self) } == ["role", role]
            }
        }
    }

    private final class Handed: @unchecked Sendable {
        let client: ResumingClient
        init(_ client: ResumingClient) { self.client = client }
    }
}
