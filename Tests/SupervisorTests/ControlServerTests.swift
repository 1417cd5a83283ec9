import RoleProtocol
import Foundation
import Logging
import Processes
import Supervisor
import SystemPackage
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The control socket with a real pool, queried by the real `cloister ctl`.
final class ControlServerTests: XCTestCase {
    /// Runs `cloister ARGS` (through `setpriv` as `nobody` when asked) and returns its stdout.
    private func ctl(_ arguments: [String], asNobody: Bool = false) throws -> (ChildProcess.Termination, String) {
        let out = try makePipe()
        let command = (asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []) + [cloisterExecutable] + arguments
        let child = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "exec \"$@\" >&3 2>&3", "sh"] + command,
                                           descriptors: [out.write], environment: ["PATH": "/usr/bin:/bin"])
        try out.write.close()
        let text = String(decoding: try readAll(out.read), as: UTF8.self)
        try out.read.close()
        return (try child.wait(), text)
    }

    private func startPool() -> RolePool {
        var c = RolePool.Configuration(settings: WorkerSettings(), count: 2, executable: cloisterExecutable, policy: packageRoot + "/policies/worker.json")
        c.build = cloisterBuildID
        c.heartbeatInterval = .milliseconds(50)
        var logger = Logger(label: "test.supervisor")
        logger.logLevel = .critical
        let pool = RolePool(configuration: c, logger: logger)
        pool.start()
        XCTAssertTrue(eventually(20) { pool.slots.allSatisfy { $0.state == .running && $0.lastHeartbeat != nil } })
        return pool
    }

    private func socketPath() -> String { NSTemporaryDirectory() + "cloister-ctl-\(getpid())-\(UInt16.random(in: 0...9999)).sock" }

    func testWorkersAndStatusAsJSONAndTable() async throws {
        let pool = startPool()
        let path = socketPath()
        var logger = Logger(label: "test.control")
        logger.logLevel = .critical
        let server = try ControlServer(path: path, pool: pool, logger: logger)
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)

        let (termination, json) = try ctl(["ctl", "workers", "--json", "--socket", path])
        XCTAssertEqual(termination, .exited(0), json)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let reply = try decoder.decode(ControlServer.Workers.self, from: Data(json.utf8))
        XCTAssertEqual(reply.version, 1)
        XCTAssertEqual(reply.workers.map(\.pid), pool.slots.map(\.pid))
        for worker in reply.workers {
            XCTAssertEqual(worker.state, "running")
            XCTAssertEqual(worker.sandboxConfined, true)
            XCTAssertEqual(worker.seccomp, 2)
            XCTAssertEqual(worker.noNewPrivileges, true)
            XCTAssertEqual(worker.capEff, "0000000000000000")
            XCTAssertNotNil(worker.lastHeartbeatMilliseconds)
        }
        XCTAssertTrue(json.contains("\"last_heartbeat_milliseconds\""), json)

        let (_, table) = try ctl(["ctl", "workers", "--socket", path])
        let lines = table.split(separator: "\n")
        XCTAssertEqual(lines.count, 3, table)
        XCTAssertTrue(lines[0].hasPrefix("ID  PID"), table)
        XCTAssertTrue(lines[1].hasSuffix("yes"), table)

        let (_, status) = try ctl(["ctl", "status", "--socket", path])
        XCTAssertEqual(status, "supervisor pid \(getpid()): 2 of 2 workers running, 0 connections, 0 refused at --max-clients\n")

        server.close()
        XCTAssertNotEqual(access(path, F_OK), 0, "socket file removed")
        await pool.shutdown()
    }

    func testOtherUsersAreRefused() async throws {
        try XCTSkipUnless(geteuid() == 0, "running the client as another user needs root")
        let pool = startPool()
        let path = socketPath()
        let server = try ControlServer(path: path, pool: pool, logger: Logger(label: "test.control"))
        // With the default mode, nobody cannot even connect.
        var (termination, output) = try ctl(["ctl", "status", "--socket", path], asNobody: true)
        XCTAssertNotEqual(termination, .exited(0))
        XCTAssertTrue(output.contains("cannot reach the control socket"), output)
        // Even past the file mode, the peer's uid is checked.
        XCTAssertEqual(chmod(path, 0o666), 0)
        (termination, output) = try ctl(["ctl", "status", "--socket", path], asNobody: true)
        XCTAssertNotEqual(termination, .exited(0))
        XCTAssertTrue(output.contains("permission denied: uid 65534"), output)
        server.close()
        await pool.shutdown()
    }

    func testUnknownRequestAndMissingSocket() throws {
        let (termination, output) = try ctl(["ctl", "status", "--socket", "/nonexistent/control.sock"])
        XCTAssertNotEqual(termination, .exited(0))
        XCTAssertTrue(output.contains("cannot reach the control socket: connect: No such file or directory"), output)
        XCTAssertTrue(output.contains("/nonexistent/control.sock"), output)
    }

    func testRequestsAreParsedStrictly() {
        XCTAssertEqual(try ControlRequest.parse(Array("status".utf8)).get(), .status)
        XCTAssertEqual(try ControlRequest.parse(Array(" kick abc 3 ".utf8)).get(), .kick(session: "abc", client: 3))
        XCTAssertEqual(try ControlRequest.parse(Array("hangup abc".utf8)).get(), .hangUp(session: "abc"))
        for bad in ["status now", "kick", "kick abc x", "kick abc 1 2", "hangup", "", "\u{0}", "hangup " + String(repeating: "a", count: 65)] {
            guard case .failure = ControlRequest.parse(Array(bad.utf8)) else { return XCTFail("accepted \(bad)") }
        }
    }
}
