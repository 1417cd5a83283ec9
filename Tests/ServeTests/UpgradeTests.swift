import FoundationEssentials
import Foundation
import Processes
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `cloister ctl upgrade` against a server started from a copy of the binary, as an operator
/// would run it after installing a new build over the old one.
final class UpgradeTests: XCTestCase {
    /// A directory with `cloister` (a copy of the build under test) and `cloister.new` (the
    /// same with a packager's label written into it, so that `ctl status` can tell them apart).
    private func binaries(label: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cloister-upgrade-\(getpid())-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        var bytes = try Data(contentsOf: URL(fileURLWithPath: cloisterExecutable))
        try bytes.write(to: URL(fileURLWithPath: directory + "/cloister"))
        let marker = Data("CLOISTER_BUILD_LABEL=\0".utf8)
        let at = try XCTUnwrap(bytes.range(of: marker), "the binary has no label field").lowerBound + marker.count - 1
        bytes.replaceSubrange(at..<(at + label.utf8.count), with: Data(label.utf8))
        try bytes.write(to: URL(fileURLWithPath: directory + "/cloister.new"))
        for name in ["cloister", "cloister.new"] { chmod(directory + "/" + name, 0o755) }
        return directory
    }

    /// `cloister ctl upgrade` run with the binary at `executable`: its status and output.
    private func ctlUpgrade(_ executable: String, socket: String) throws -> (Int32, String) {
        let pipe = try makePipe()
        let ctl = try ChildProcess.spawn(executable, arguments: ["ctl", "upgrade", "--socket", socket, "--timeout", "60"],
                                         output: pipe.write)
        try pipe.write.close()
        let output = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        guard case .exited(let status) = try ctl.wait() else { return (-1, output) }
        return (status, output)
    }

    func testAnUpgradeWhileSessionsStreamKeepsEveryShellLineAndKeystroke() throws {
        let directory = try binaries(label: "second-build")
        // Recording too: the recorder stops with the old binary and the new one's records on.
        let recordings = directory + "/recordings"
        let server = try ServedCloister.start(workers: 2, extra: ["--max-clients", "64", "--record", recordings], executable: directory + "/cloister")
        let before = try XCTUnwrap(server.control("status")["build"] as? String)
        XCTAssertFalse(before.contains("second-build"))
        try ChaosTests.stream(server, sessions: 6, seconds: 4) {
            usleep(1_500_000)
            // As an installer does: the new file replaces the old name; the running one stays.
            XCTAssertEqual(rename(directory + "/cloister.new", directory + "/cloister"), 0)
            let (status, output) = try ctlUpgrade(directory + "/cloister", socket: server.controlSocket)
            XCTAssertEqual(status, 0, output)
            XCTAssertTrue(output.contains("upgraded:"), output)
            usleep(1_500_000)
        }
        let status = try server.control("status")
        XCTAssertEqual(status["pid"] as? Int, Int(server.child.pid), "the supervisor upgraded in its own process")
        XCTAssertTrue((status["build"] as? String ?? "").contains("second-build"), "\(status)")
        XCTAssertEqual(status["upgraded_from"] as? String, before)
        let keeping = try XCTUnwrap(status["keeping"] as? [String: Any])
        XCTAssertGreaterThanOrEqual(keeping["sessions_adopted"] as? Int ?? 0, 6, "\(keeping)")
        // Every role runs the new binary.
        let roles = try ChaosTests.pids(of: "vault", in: server) + ChaosTests.pids(of: "worker", in: server)
        XCTAssertEqual(roles.count, 3)
        for pid in roles {
            let image = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
            XCTAssertEqual(image, directory + "/cloister", "role \(pid) runs \(image)")
        }
        // Each session's recording before the upgrade ended with the old recorder (a last
        // marker, its final checkpoint) and goes on in a new one: one sequence that checks.
        _ = try server.stop()
        let (verified, report) = try runCapturing(directory + "/cloister", ["recordings", "verify", recordings])
        XCTAssertEqual(verified, .exited(0), report)
        let files = try FileManager.default.contentsOfDirectory(atPath: recordings).filter { $0.hasSuffix(".cast") }
        XCTAssertGreaterThanOrEqual(files.count, 12, "\(files)")
    }

    func testAnUpgradeToABinaryThatRefusesTheStateLeavesTheServerServing() throws {
        let directory = try binaries(label: "unused")
        let server = try ServedCloister.start(workers: 1, executable: directory + "/cloister")
        let token = TerminalClient.token(ServedCloister.userAndPassword)
        let client = try ResumingClient(port: server.port, token: token)
        try client.input("echo before-$((40+2))\r")
        _ = try client.readOutput(untilMarker: "before-42", deadline: Date().addingTimeInterval(20))
        let status = try server.control("status")
        // A binary from a future release: it adopts another handover format.
        let future = directory + "/future"
        try Data("#!/bin/sh\necho '{\"handover\":99,\"kept_ring\":1,\"build\":\"future\"}'\n".utf8).write(to: URL(fileURLWithPath: future))
        chmod(future, 0o755)
        XCTAssertEqual(rename(directory + "/cloister", directory + "/cloister.old"), 0)
        XCTAssertEqual(rename(future, directory + "/cloister"), 0)
        let (code, output) = try ctlUpgrade(directory + "/cloister.old", socket: server.controlSocket)
        XCTAssertNotEqual(code, 0, output)
        XCTAssertTrue(output.contains("takes handover format 99"), output)
        // A file others may change is not even run.
        XCTAssertEqual(rename(directory + "/cloister.old", directory + "/cloister"), 0)
        chmod(directory + "/cloister", 0o775)
        let (code2, output2) = try ctlUpgrade(directory + "/cloister", socket: server.controlSocket)
        XCTAssertNotEqual(code2, 0, output2)
        XCTAssertTrue(output2.contains("may be changed by others"), output2)
        // The same server, the same roles, the same session.
        let after = try server.control("status")
        XCTAssertEqual(after["build"] as? String, status["build"] as? String)
        XCTAssertEqual((after["vault"] as? [String: Any])?["pid"] as? Int, (status["vault"] as? [String: Any])?["pid"] as? Int)
        try client.input("echo after-$((40+2))\r")
        _ = try client.readOutput(untilMarker: "after-42", deadline: Date().addingTimeInterval(20))
        XCTAssertEqual(client.resumes, 0, "the connection was never interrupted")
        XCTAssertTrue(server.output.contains("upgrade refused"), server.output.suffix(2000).description)
    }
}
