import Foundation
import Processes
import Synchronization
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

/// The audit trail against the real server: every fact once, with the user, the source and
/// the role that vouches for it; a burst of refused logins written as counts.
final class AuditTests: XCTestCase {
    private func trail(_ path: String) -> [[String: String]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: String]
        }
    }

    private func events(_ path: String, _ name: String) -> [[String: String]] {
        trail(path).filter { $0["event"] == name }
    }

    private func directory() throws -> String {
        let directory = NSTemporaryDirectory() + "cloister-audit-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return directory
    }

    func testEveryFactIsAuditedOnceWithItsUserSourceAndVoucher() throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        let server = try ServedCloister.start(workers: 2, perClient: true, extra: ["--audit-log", path])
        defer { _ = try? server.stop() }

        // A wrong password for a real user name.
        let refused = try TerminalClient.connect(port: server.port)
        try refused.authenticate(token: TerminalClient.token("tester:wrong"))
        XCTAssertEqual(try refused.awaitClose().code, 1008)

        // A session: started, attached, its shell exits.
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("echo audited-$((6*7))\r")
        _ = try client.readOutput { $0.contains("audited-42") }
        let session = try XCTUnwrap((try server.control("sessions")["sessions"] as? [[String: Any]])?.first?["id"] as? String)
        try client.input("exit 3\r")
        XCTAssertEqual(try client.awaitClose().code, 1000)
        // A control action, and a read (not audited).
        _ = try server.control("hangup \(session)")
        _ = try server.control("status")

        XCTAssertTrue(eventually(15) { self.events(path, "session.ended").count == 1 && self.events(path, "control.action").count == 1 },
                      "\(trail(path))")
        let refusal = try XCTUnwrap(events(path, "credential.refused").first)
        XCTAssertEqual(refusal["user"], "tester", "the user the refused login tried")
        XCTAssertEqual(refusal["method"], "basic")
        XCTAssertEqual(refusal["vouched_by"], "vault")
        XCTAssertTrue(refusal["source"]?.hasPrefix("127.0.0.1:") == true, "\(refusal)")
        XCTAssertEqual(refusal["source_vouched_by"], "supervisor")
        XCTAssertEqual(events(path, "credential.refused").count, 1)

        let accepted = events(path, "credential.accepted")
        XCTAssertEqual(accepted.count, 1, "once for the one connection that presented it: \(accepted)")
        XCTAssertEqual(accepted.first?["user"], "tester")
        let started = try XCTUnwrap(events(path, "session.started").first)
        XCTAssertEqual(started["session"], session)
        XCTAssertEqual(started["user"], "tester")
        XCTAssertNotNil(started["shell_pid"].flatMap(Int.init))
        XCTAssertEqual(started["source"], accepted.first?["source"], "the same connection")
        let attached = try XCTUnwrap(events(path, "session.attached").first)
        XCTAssertEqual([attached["session"], attached["mode"], attached["joined_by"]], [session, "writer", "new session"])
        XCTAssertEqual(events(path, "session.detached").count, 1)
        let ended = try XCTUnwrap(events(path, "session.ended").first)
        XCTAssertEqual(ended["session"], session)
        XCTAssertEqual(ended["exit"], "exit status 3", "\(ended)")
        XCTAssertNotNil(ended["bytes_out"].flatMap(Int.init))
        let control = try XCTUnwrap(events(path, "control.action").first)
        XCTAssertEqual([control["action"], control["session"], control["caller_uid"], control["vouched_by"]],
                       ["hangup", session, "\(getuid())", "supervisor"])
        for event in trail(path) {
            XCTAssertNotNil(event["time"], "\(event)")
            XCTAssertNotNil(event["vouched_by"], "\(event)")
        }
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "the trail is its owner's alone")
        XCTAssertTrue(server.output.contains("audit=session.started"), "the facts go to the log too")
    }

    func testABurstOfRefusedLoginsIsWrittenAsCounts() throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        let server = try ServedCloister.start(workers: 2, perClient: true, extra: ["--audit-log", path])
        let bad = "Basic " + Data("tester:guess".utf8).base64EncodedString()
        // Answered ten a second at most (the vault's throttle): 30 guesses take three seconds.
        let group = DispatchGroup()
        let statuses = Mutex<[Int]>([])
        let port = server.port
        for _ in 0..<30 {
            group.enter()
            DispatchQueue.global().async {
                let status = (try? TerminalClient.get(port: port, path: "/", headers: ["Authorization": bad]).status) ?? -1
                statuses.withLock { $0.append(status) }
                group.leave()
            }
        }
        group.wait()
        XCTAssertEqual(statuses.withLock { $0.filter { $0 == 401 }.count }, 30)
        // The counts not written yet are written at the stop.
        XCTAssertEqual(try server.stop(), .exited(0))
        let written = events(path, "credential.refused")
        let counted = events(path, "credential.refused.repeated").compactMap { $0["count"].flatMap(Int.init) }.reduce(0, +)
        XCTAssertLessThanOrEqual(written.count, 2, "one line per source per 10 s: \(written)")
        XCTAssertEqual(written.count + counted, 30, "every refusal is in the trail, most as a count")
        XCTAssertTrue(events(path, "credential.refused.repeated").allSatisfy { $0["source"] == "127.0.0.1" }, "\(trail(path))")
    }

    /// `X-Forwarded-For` counts only from a `--trusted-proxy`: there its last entry (the one
    /// the proxy appended) is in every fact of the attachment, vouched for by the worker, and
    /// refusals are counted by it; from any other address a forged one is ignored.
    func testAForwardedAddressIsTakenOnlyFromATrustedProxy() throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let forged = [("X-Forwarded-For", "198.51.100.1, 203.0.113.7")]
        for trusted in [true, false] {
            let path = directory + "/audit-\(trusted).jsonl"
            let server = try ServedCloister.start(workers: 2, perClient: true,
                                                  extra: ["--audit-log", path, "--trusted-proxy", trusted ? "127.0.0.1" : "192.0.2.1"])
            defer { _ = try? server.stop() }
            let refused = try TerminalClient.connect(port: server.port, headers: forged)
            try refused.authenticate(token: TerminalClient.token("tester:wrong"))
            XCTAssertEqual(try refused.awaitClose().code, 1008)
            let client = try TerminalClient.connect(port: server.port, headers: forged)
            try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
            try client.input("exit\r")
            XCTAssertEqual(try client.awaitClose().code, 1000)
            XCTAssertTrue(eventually(15) { self.events(path, "session.detached").count == 1 }, "\(trail(path))")
            for name in ["credential.refused", "credential.accepted", "session.started", "session.attached", "session.detached"] {
                let event = try XCTUnwrap(events(path, name).first, "\(name): \(trail(path))")
                XCTAssertTrue(event["source"]?.hasPrefix("127.0.0.1:") == true, "\(event)")
                if trusted {
                    XCTAssertEqual(event["forwarded_for"], "203.0.113.7", "\(event)")
                    XCTAssertEqual(event["forwarded_for_vouched_by"], "worker", "\(event)")
                } else {
                    XCTAssertNil(event["forwarded_for"], "a forged header from an untrusted address: \(event)")
                }
            }
        }
        // Only numeric addresses.
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["serve", "--policy-dir", packageRoot + "/policies", "--trusted-proxy", "proxy.example"],
                                           output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        XCTAssertEqual(try child.wait(), .exited(2), text)
        XCTAssertTrue(text.contains("--trusted-proxy: \"proxy.example\" is not a numeric IPv4 or IPv6 address"), text)
    }

    func testAnAuditLogThatOthersMayWriteIsRefused() throws {
        let directory = try self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o666])
        chmod(path, 0o666)
        for (arguments, expected) in [(["--audit-log", path], "may be written by others than its owner"),
                                      (["--audit-log", "relative.jsonl"], "--audit-log: \"relative.jsonl\" is not an absolute path"),
                                      (["--audit-log", directory], "--audit-log: open")] {
            let pipe = try makePipe()
            let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["serve", "--policy-dir", packageRoot + "/policies"] + arguments,
                                               output: pipe.write)
            try pipe.write.close()
            let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
            try pipe.read.close()
            XCTAssertEqual(try child.wait(), .exited(2), text)
            XCTAssertTrue(text.contains(expected), "\(arguments): \(text)")
        }
    }
}
