import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Floods against the real server with a worker per client: connections that say nothing,
/// that dribble, that send garbage or reset mid-frame. A real client from another source is
/// still served within a second, no more workers serve than admission lets in, and
/// everything is released afterwards; the counters say what happened.
final class AdmissionFloodTests: XCTestCase {
    /// Limits small enough to reach in a test: 8 unauthenticated connections before early
    /// refusals, 24 at most, 4 per source, 3 s to authenticate.
    static let limits = ["--max-unauthenticated", "8:30:24", "--max-unauthenticated-per-source", "4",
                         "--authentication-deadline", "3", "--defer-accept", "5"]

    private func admission(_ server: ServedCloister) throws -> [String: Any] {
        try XCTUnwrap(try server.control("status")["admission"] as? [String: Any])
    }

    private func serving(_ server: ServedCloister) throws -> Int {
        try server.workers().filter { $0["client"] is String }.count
    }

    /// Raises this process's open-file limit for `count` more sockets.
    private func room(for count: Int) {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = min(limit.rlim_max, max(limit.rlim_cur, rlim_t(count + 512)))
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// A real client from 127.0.0.2: its shell answers, timed from connecting.
    private func realClient(_ server: ServedCloister) throws -> TimeInterval {
        let start = Date()
        let client = try TerminalClient.connect(port: server.port, from: "127.0.0.2")
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("echo real-$((40+2))\r")
        try client.readOutput { $0.contains("real-42") }
        let elapsed = Date().timeIntervalSince(start)
        try client.closeNormally()
        return elapsed
    }

    func testASilentFloodCostsNoWorker() throws {
        room(for: 1000)
        let server = try ServedCloister.start(workers: 2, perClient: true, extra: Self.limits)
        var silent: [Int32] = []
        defer { for fd in silent { close(fd) } }
        // Within the listen backlog (511), deferred accept keeps them in the kernel: nothing
        // is accepted, nothing admitted, no worker serves.
        for _ in 0..<300 { silent.append(try TerminalClient.tcp(port: server.port)) }
        usleep(500_000)
        XCTAssertEqual(try admission(server)["admitted"] as? Int, 0)
        XCTAssertEqual(try serving(server), 0)
        // Past it the kernel answers with SYN cookies, which complete without the deferral:
        // those are accepted, and admission holds them to the limit per source.
        for _ in 0..<700 { silent.append(try TerminalClient.tcp(port: server.port)) }
        usleep(500_000)
        let report = try admission(server)
        XCTAssertLessThanOrEqual(report["admitted"] as? Int ?? 99, 4, "\(report)")
        XCTAssertLessThanOrEqual(try serving(server), 4)
        print("admission: 1,000 silent connections: \(report)")
        let took = try realClient(server)
        XCTAssertLessThan(took, 5, "served while 1,000 connections wait (\(took) s)")
        print("admission: a real client next to 1,000 silent connections served in \(String(format: "%.3f", took)) s")
        for fd in silent { close(fd) }
        silent = []
        XCTAssertTrue(eventually(20) { (try? self.admission(server)["unauthenticated"] as? Int) == 0 }, server.output)
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
    }

    func testDribblingGarbageAndResetFloodsAreHeldToTheLimits() throws {
        room(for: 1400)
        let server = try ServedCloister.start(workers: 2, perClient: true, extra: Self.limits)
        var open: [Int32] = []
        defer { for fd in open { close(fd) } }
        func send(_ fd: Int32, _ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        // 1,000 that send one byte of a request head and then a byte now and then, 200 of
        // garbage, all from 127.0.0.1.
        for i in 0..<1200 {
            let fd = try TerminalClient.tcp(port: server.port)
            send(fd, i < 1000 ? Array("G".utf8) : (0..<64).map { _ in UInt8.random(in: 0...255) })
            open.append(fd)
        }
        // 200 that start a WebSocket frame and reset mid-frame (SO_LINGER 0: RST, not FIN).
        for _ in 0..<200 {
            let fd = try TerminalClient.tcp(port: server.port)
            send(fd, Array("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n\u{82}\u{fe}".utf8))
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(fd)
        }
        XCTAssertTrue(eventually(10) { ((try? self.admission(server)["refused"] as? [String: Int])?["source"] ?? 0) > 1000 },
                      "\((try? self.admission(server)) ?? [:])")
        // Never more workers serving than one source may hold (4), whatever it sends.
        let report = try admission(server)
        XCTAssertLessThanOrEqual(report["unauthenticated"] as? Int ?? 99, 4, "\(report)")
        XCTAssertLessThanOrEqual(try serving(server), 4)
        for fd in open.prefix(200) { send(fd, Array("E".utf8)) }
        // Another source is served at once.
        let took = try realClient(server)
        XCTAssertLessThan(took, 5, "served during the flood (\(took) s)")
        print("admission: a real client during the flood served in \(String(format: "%.3f", took)) s; \(try admission(server))")
        // The deadline ends the admitted ones that never authenticated, with their workers.
        XCTAssertTrue(eventually(20) {
            guard let now = try? self.admission(server) else { return false }
            return now["unauthenticated"] as? Int == 0 && ((now["refused"] as? [String: Int])?["deadline"] ?? 0) >= 1
        }, "\((try? self.admission(server)) ?? [:])")
        XCTAssertTrue(eventually(20) { (try? self.serving(server)) == 0 })
        // One line per source per interval, not one per refusal.
        let lines = server.output.components(separatedBy: "unauthenticated connection refused").count - 1
        XCTAssertGreaterThanOrEqual(lines, 1)
        XCTAssertLessThanOrEqual(lines, 6, "a flood of refusals is a few lines: \(lines)")
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
    }

    func testBadAdmissionOptionsAreRefusedByName() throws {
        for (arguments, expect) in [
            (["--max-unauthenticated", "10:30"], "--max-unauthenticated: \"10:30\" is not START:RATE:FULL"),
            (["--max-unauthenticated", "50:30:10"], "--max-unauthenticated: START must be at least 1 and at most FULL"),
            (["--max-unauthenticated-per-source", "0"], "--max-unauthenticated-per-source: the limit per source must be at least 1"),
            (["--authentication-deadline", "0"], "--authentication-deadline: 0.0 is not between 1 and 3600 seconds"),
            (["--defer-accept=-1"], "--defer-accept: -1 is not between 0 and 600 seconds"),
        ] {
            let (ended, output) = try TLSTests.run(cloisterExecutable, ["serve", "--listen", "127.0.0.1:0", "--policy-dir", packageRoot + "/policies",
                                                                         "--web-dir", packageRoot + "/web"] + arguments)
            XCTAssertEqual(ended, .exited(2), output)
            XCTAssertTrue(output.contains("cloister serve: " + expect), output)
        }
    }
}
