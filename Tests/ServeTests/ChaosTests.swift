import Foundation
import Processes
import Synchronization
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Sessions streaming numbered lines through clients that resume on their own, while a
/// random worker is killed every two seconds: no line lost or doubled, no shell restarted,
/// the pool back to full size. `make test` runs a short version; `make chaos` the long one
/// (CLOISTER_CHAOS_SESSIONS, CLOISTER_CHAOS_SECONDS).
final class ChaosTests: XCTestCase {
    static var sessions: Int { ProcessInfo.processInfo.environment["CLOISTER_CHAOS_SESSIONS"].flatMap(Int.init) ?? 6 }
    static var seconds: Int { ProcessInfo.processInfo.environment["CLOISTER_CHAOS_SECONDS"].flatMap(Int.init) ?? 8 }

    /// One client's thread and what it saw.
    final class Stream: @unchecked Sendable {
        var result: Result<(text: String, resumes: Int), Error>?
        let done = DispatchSemaphore(value: 0)
    }

    func testKilledWorkersLoseNoLineAndRestartNoShell() throws {
        let (count, seconds) = (Self.sessions, Self.seconds)
        let server = try ServedCloister.start(workers: 2, extra: ["--max-clients", "\(4 * count + 16)"])
        let token = TerminalClient.token(ServedCloister.userAndPassword)
        // About 100 lines a second per session, for the whole run and a little more.
        let lines = 100 * (seconds + 2)
        let command = "echo start-pid=$$.; i=0; while [ $i -lt \(lines) ]; do echo n-$i; i=$((i+1)); "
            + "[ $((i % 20)) = 0 ] && sleep 0.2; done; echo end-pid=$$.; echo fin-$((6*7))\r"
        let deadline = Date().addingTimeInterval(Double(seconds) + 120)
        let streams = (0..<count).map { _ in Stream() }
        for stream in streams {
            let client = try ResumingClient(port: server.port, token: token)
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
        var kills = 0
        let end = Date().addingTimeInterval(Double(seconds))
        while Date() < end {
            usleep(2_000_000)
            let pids = try server.workers().compactMap { ($0["pid"] as? Int).map(pid_t.init) }
            if let victim = pids.randomElement(), kill(victim, SIGKILL) == 0 { kills += 1 }
        }
        for stream in streams {
            XCTAssertEqual(stream.done.wait(timeout: .now() + .seconds(Int(deadline.timeIntervalSinceNow) + 1)), .success,
                           "a client did not finish")
        }
        var resumes = 0
        for (i, stream) in streams.enumerated() {
            guard case .success(let (text, resumed))? = stream.result else {
                XCTFail("session \(i): \(String(describing: stream.result))\n\(server.output.suffix(3000))")
                continue
            }
            resumes += resumed
            let numbers = text.split(separator: "\r\n").compactMap { line in line.hasPrefix("n-") ? Int(line.dropFirst(2)) : nil }
            XCTAssertEqual(numbers, Array(0..<lines), "session \(i): every line once, in order")
            let pids = text.matches(of: /(start|end)-pid=(\d+)\./).map { String($0.output.2) }
            XCTAssertEqual(pids.count, 2, "session \(i)")
            XCTAssertEqual(Set(pids).count, 1, "session \(i): the same shell from start to end")
        }
        XCTAssertGreaterThan(kills, 0)
        XCTAssertGreaterThan(resumes, 0, "some client had to resume")
        XCTAssertTrue(eventually(30) { (try? server.workers().filter { $0["state"] as? String == "running" }.count) == 2 },
                      "the pool is back to full size")
        print("chaos: \(count) sessions, \(seconds) s, \(kills) workers killed, \(resumes) resumes, \(lines) lines each")
    }

    private final class Handed: @unchecked Sendable {
        let client: ResumingClient
        init(_ client: ResumingClient) { self.client = client }
    }
}
