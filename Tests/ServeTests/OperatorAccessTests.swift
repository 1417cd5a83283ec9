import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What an operator's monitoring and tools meet: `cloister ctl metrics` against the real
/// server, and the control socket's admin group, with real accounts.
final class OperatorAccessTests: XCTestCase {
    /// Runs the cloister executable (through `setpriv` when `as` is given); status and output.
    private func run(_ arguments: [String], as identity: [String]? = nil) throws -> (ChildProcess.Termination, String) {
        let pipe = try makePipe()
        let child = if let identity {
            try ChildProcess.spawn("/usr/bin/setpriv", arguments: identity + ["--", cloisterExecutable] + arguments, output: pipe.write)
        } else {
            try ChildProcess.spawn(cloisterExecutable, arguments: arguments, output: pipe.write)
        }
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        return (try child.wait(), text)
    }

    /// The value of the one sample of `name` whose labels include every one of `labels`.
    private func sample(_ text: String, _ name: String, _ labels: [String] = []) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, labels.allSatisfy({ parts[0].contains($0) }) else { continue }
            return Double(parts[1])
        }
        return nil
    }

    private func rawRequest(_ port: UInt16, _ request: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(connected, 0)
        _ = Array(request.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return String(decoding: try readAll(FileDescriptor(rawValue: dup(fd))), as: UTF8.self)
    }

    /// Every counter moves with what happened: refusals by cause, bytes each way, sessions,
    /// heartbeats, confinement, restarts after a killed worker.
    func testMetricsFollowTheRealServer() throws {
        let server = try ServedCloister.start(workers: 1)
        XCTAssertTrue(try rawRequest(server.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 401"))
        let upgrade = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tty\r\n"
        XCTAssertTrue(try rawRequest(server.port, upgrade + "Sec-WebSocket-Version: 8\r\n\r\n").hasPrefix("HTTP/1.1 426"))
        XCTAssertTrue(try rawRequest(server.port, upgrade + "Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n")
            .hasPrefix("HTTP/1.1 403"))
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("echo metrics-$((6*7))\r")
        try client.readOutput { $0.contains("metrics-42") }

        var text = ""
        XCTAssertTrue(eventually(10) {
            text = (try? self.run(["ctl", "metrics", "--socket", server.controlSocket]).1) ?? ""
            return (self.sample(text, "cloister_client_bytes_total", ["direction=\"out\""]) ?? 0) > 0
        }, text)
        XCTAssertEqual(sample(text, "cloister_up"), 1)
        XCTAssertEqual(sample(text, "cloister_http_refusals_total", ["cause=\"unauthenticated\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_http_refusals_total", ["cause=\"version\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_http_refusals_total", ["cause=\"origin\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_http_refusals_total", ["cause=\"malformed\""]), 0, text)
        XCTAssertGreaterThanOrEqual(sample(text, "cloister_client_bytes_total", ["direction=\"in\""]) ?? 0, 20, text)
        XCTAssertEqual(sample(text, "cloister_sessions"), 1, text)
        XCTAssertEqual(sample(text, "cloister_session_clients"), 1, text)
        XCTAssertEqual(sample(text, "cloister_connections"), 1, text)
        XCTAssertEqual(sample(text, "cloister_role_confined", ["role=\"worker\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_role_confined", ["role=\"vault\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_role_state", ["role=\"worker\"", "state=\"running\""]), 1, text)
        XCTAssertEqual(sample(text, "cloister_sandbox_violations_total", ["role=\"worker\""]), 0, text)
        XCTAssertGreaterThan(sample(text, "cloister_heartbeat_round_trip_seconds", ["role=\"vault\""]) ?? 0, 0, text)
        XCTAssertTrue(text.contains("# TYPE cloister_http_refusals_total counter"), text)

        // A killed worker counts as a restart; its successor's counters start again.
        let pid = try XCTUnwrap(server.workers().first?["pid"] as? Int)
        XCTAssertEqual(kill(pid_t(pid), SIGKILL), 0)
        XCTAssertTrue(eventually(20) {
            text = (try? self.run(["ctl", "metrics", "--socket", server.controlSocket]).1) ?? ""
            return self.sample(text, "cloister_role_restarts_total", ["role=\"worker\""]) == 1
                && self.sample(text, "cloister_role_state", ["role=\"worker\"", "state=\"running\""]) == 1
        }, text)

        // --output replaces the file whole, readable by a collector running as another user.
        let file = server.directory + "/cloister.prom"
        XCTAssertEqual(try run(["ctl", "metrics", "--socket", server.controlSocket, "--output", file]).0, .exited(0))
        var info = stat()
        XCTAssertEqual(stat(file, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o644)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file + ".tmp"))
        XCTAssertEqual(sample(try String(contentsOfFile: file, encoding: .utf8), "cloister_up"), 1)
        // No supervisor: exit 1, the file left as it was.
        let (status, message) = try run(["ctl", "metrics", "--socket", server.directory + "/none.sock", "--output", file])
        XCTAssertEqual(status, .exited(1), message)
        XCTAssertTrue(message.contains("cannot reach the control socket"), message)
        XCTAssertEqual(sample(try String(contentsOfFile: file, encoding: .utf8), "cloister_up"), 1)
    }

    /// With --control-group, a member (here by a supplementary group, as an operator's login
    /// has it) uses the control socket as nobody; the same user without the group is refused.
    func testTheAdminGroupReachesTheControlSocket() throws {
        try XCTSkipUnless(geteuid() == 0, "accounts and groups need root")
        let group = "cloister-test-\(getpid() % 100000)"
        XCTAssertEqual(try ChildProcess.spawn("/usr/sbin/groupadd", arguments: [group]).wait(), .exited(0))
        defer { _ = try? ChildProcess.spawn("/usr/sbin/groupdel", arguments: [group]).wait() }
        let gid = try XCTUnwrap(getgrnam(group)?.pointee.gr_gid)
        let server = try ServedCloister.start(workers: 1, extra: ["--control-group", group])
        // The test's directory stands for /run/cloister (0711): others pass, the socket decides.
        XCTAssertEqual(chmod(server.directory, 0o711), 0)
        var info = stat()
        XCTAssertEqual(stat(server.controlSocket, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o660)
        XCTAssertEqual(info.st_gid, gid)

        let member = ["--reuid", "65534", "--regid", "65534", "--groups", "\(gid)"]
        let (status, text) = try run(["ctl", "status", "--socket", server.controlSocket], as: member)
        XCTAssertEqual(status, .exited(0), text)
        XCTAssertTrue(text.contains("of 1 workers running"), text)
        let (metricsStatus, metrics) = try run(["ctl", "metrics", "--socket", server.controlSocket], as: member)
        XCTAssertEqual(metricsStatus, .exited(0), metrics)

        let stranger = ["--reuid", "65534", "--regid", "65534", "--clear-groups"]
        let (refused, why) = try run(["ctl", "status", "--socket", server.controlSocket], as: stranger)
        XCTAssertNotEqual(refused, .exited(0), why)
        XCTAssertTrue(why.contains("Permission denied") || why.contains("permission denied"), why)
    }

    func testAControlGroupThatIsRootOrMissingIsRefused() throws {
        for (group, expected) in [("root", "is the root group"), ("no-such-group-here", "no group")] {
            let (status, text) = try run(["serve", "--control-group", group, "--policy-dir", packageRoot + "/policies",
                                          "--control-socket", NSTemporaryDirectory() + "unused-\(getpid()).sock"])
            XCTAssertEqual(status, .exited(2), text)
            XCTAssertTrue(text.hasPrefix("cloister serve: --control-group: ") && text.contains(expected), text)
        }
    }
}
