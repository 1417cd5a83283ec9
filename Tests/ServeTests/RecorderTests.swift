import Foundation
import Processes
import Recording
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `serve --record` against the real server: a recording holds exactly what the client was
/// sent, never a password typed with echo off; a recorder killed while sessions stream costs
/// gaps, marked and audited, never a shell; `--record-failure end` ends the sessions instead.
final class RecorderTests: XCTestCase {
    private var directory = ""
    private var recordings: String { directory + "/recordings" }
    private var auditLog: String { directory + "/audit.jsonl" }

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "cloister-recorder-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    private func events(_ name: String) -> [[String: String]] {
        let text = (try? String(contentsOfFile: auditLog, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: String] }
            .filter { $0["event"] == name }
    }

    private func files() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: recordings)) ?? []).filter { $0.hasSuffix(".cast") }.sorted()
            .map { recordings + "/" + $0 }
    }

    private func serve(_ extra: [String] = [], command: [String] = ["/bin/sh"]) throws -> ServedCloister {
        try ServedCloister.start(workers: 2, perClient: true, extra: ["--record", recordings, "--audit-log", auditLog] + extra, command: command)
    }

    private func pid(of role: String, _ server: ServedCloister) -> pid_t? {
        ((try? server.control("status")[role] as? [String: Any])?["pid"] as? Int).map(pid_t.init)
    }

    /// Every output byte the client gets, from the session's first.
    private func readAll(_ client: TerminalClient, into received: inout [UInt8], until marker: String) throws {
        received += try client.readOutput(untilMarker: marker)
    }

    func testARecordingHoldsWhatTheClientReceivedAndNoPassword() throws {
        let server = try serve(["--record-input"], command: ["/bin/bash", "--noprofile", "--norc"])
        defer { _ = try? server.stop() }
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword), columns: 90, rows: 30)
        var received = Array(try client.readOutput { $0.contains("# ") || $0.contains("$ ") }.utf8)
        try client.input("echo rec-$((6*7)) h\u{e9}llo \u{1f680}\r")
        try readAll(client, into: &received, until: "rec-42 h\u{e9}llo \u{1f680}\r\n")
        try client.resize(columns: 120, rows: 40)
        try client.input("read -s -p 'Password: ' PW; echo; echo got-${#PW}\r")
        try readAll(client, into: &received, until: "Password: ")
        // bash turns echo off before its prompt; the wait only makes the test's typing land
        // where a person's would.
        Thread.sleep(forTimeInterval: 0.3)
        try client.input("hunter2-secret\r")
        try readAll(client, into: &received, until: "got-14")
        try client.input("exit 5\r")
        while let more = try? client.readSome() { received += more }

        XCTAssertTrue(eventually(15) { self.events("recording.ended").count == 1 }, "\(events("recording.ended"))")
        let paths = files()
        XCTAssertEqual(paths.count, 1)
        let path = try XCTUnwrap(paths.first)
        // Made by the supervisor as its own user, for no one else: the recorder (nobody) only
        // writes the descriptor it was handed.
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(info.st_mode & 0o027, 0, "no group write, nothing for others")
        XCTAssertEqual(info.st_uid, geteuid(), "the server's user's, not the recorder's")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertFalse(text.contains("hunter2"), "the password typed with echo off is not recorded")
        // Typed into bash's line editor (ICANON off, drawn by bash): recorded, key by key.
        let typed = text.split(separator: "\n").compactMap { Asciicast.Event.parse(Array($0.utf8)) }.filter { $0.code == "i" }.map(\.data).joined()
        XCTAssertTrue(typed.hasPrefix("echo rec-$((6*7)) h\u{e9}llo \u{1f680}\r"), "typed input is, with --record-input: \(typed)")
        XCTAssertTrue(typed.hasSuffix("exit 5\r"), typed)
        XCTAssertTrue(text.contains(", \"r\", \"120x40\"]"), "the resize is")
        XCTAssertTrue(text.contains(", \"m\", \"exit status 5\"]"), "the exit status is a marker")
        XCTAssertTrue(String(decoding: received, as: UTF8.self).hasPrefix("\u{1b}[1mThis session is recorded.\u{1b}[0m\r\n"),
                      "the notice begins the session")

        let asciinema = packageRoot + "/.build/browser-venv/bin/asciinema"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: asciinema), "asciinema is not installed (make test installs it)")
        let (ended, cat) = try runCapturing(asciinema, ["cat", path], environment: ["LANG": "C.UTF-8", "HOME": directory])
        XCTAssertEqual(ended, .exited(0), cat)
        XCTAssertEqual(Array(cat.utf8), received, "asciinema cat gives exactly the bytes the client received")

        let (verified, report) = try runCapturing(cloisterExecutable, ["recordings", "verify", recordings])
        XCTAssertEqual(verified, .exited(0), report)
        let listed = try XCTUnwrap((try server.control("recordings")["recordings"] as? [[String: Any]])?.first)
        XCTAssertEqual(listed["user"] as? String, "tester")
        XCTAssertEqual(listed["verified"] as? String, "ok")
        XCTAssertEqual(listed["sequence"] as? Int, 1)
        // The chain's last link went to the audit trail: a copy of it off the host shows a cut.
        let head = try XCTUnwrap(events("recording.ended").first?["head"])
        XCTAssertTrue(text.hasSuffix("cloister-chain-end \(text.split(separator: "\n").count - 1) \(head)\"]\n"), String(text.suffix(120)))
        // The recorder that wrote it: every thread confined, no violation.
        let recorder = try XCTUnwrap(try server.control("status")["recorder"] as? [String: Any])
        XCTAssertEqual(recorder["violations"] as? Int, 0, server.output)
        let pid = try XCTUnwrap(recorder["pid"] as? Int)
        for tid in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
            let status = try String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8)
            for expected in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000", "Uid:\t65534\t65534\t65534\t65534"] {
                XCTAssertTrue(status.contains(expected + "\n"), "recorder thread \(tid): \(expected)")
            }
        }
        XCTAssertEqual(events("recording.started").first?["user"], "tester")
        XCTAssertEqual(events("recording.started").first?["file"], (path as NSString).lastPathComponent)
    }

    func testARecorderKilledWhileSessionsStreamCostsMarkedGapsNotShells() throws {
        let server = try serve()
        defer { _ = try? server.stop() }
        let clients = try (0..<8).map { _ in
            let client = try TerminalClient.connect(port: server.port)
            try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
            _ = try client.readOutput { $0.contains("# ") || $0.contains("$ ") }
            return client
        }
        // Each streams about 2 MB over a few seconds, then says it is done.
        for client in clients {
            try client.input("echo shell-$$; for i in $(seq 1 25); do seq 1 20000; sleep 0.1; done; echo stream-$((40+2))\r")
        }
        let shells = try clients.map { client -> String in
            let text = try client.readOutput { $0.range(of: #"shell-\d+\r\n"#, options: .regularExpression) != nil }
            return String(text[text.range(of: #"shell-\d+"#, options: .regularExpression)!])
        }
        let recorder = try XCTUnwrap(pid(of: "recorder", server))
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertEqual(kill(recorder, SIGKILL), 0)
        // Every shell goes on to its end, and stays the same shell.
        for client in clients { _ = try client.readOutput(untilMarker: "stream-42") }
        XCTAssertTrue(eventually(20) { (self.pid(of: "recorder", server) ?? recorder) != recorder }, "the recorder is restarted")
        for (client, shell) in zip(clients, shells) {
            try client.input("echo again-$$\r")
            _ = try client.readOutput { $0.contains("again-" + shell.dropFirst("shell-".count)) }
            try client.input("exit\r")
        }
        XCTAssertTrue(eventually(20) { self.files().allSatisfy { path in
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").contains("cloister-chain-end")
        } && self.events("session.ended").count == 8 }, "every recording ends")
        let texts = try files().map { try String(contentsOfFile: $0, encoding: .utf8) }
        XCTAssertEqual(texts.count, 8, "each session goes on in the file its recording began in")
        for text in texts {
            XCTAssertTrue(text.contains("\"gap: ") || text.contains("gap: the recorder restarted"), "the loss is marked where it is")
        }
        XCTAssertGreaterThanOrEqual(Set(events("recording.gap").compactMap { $0["session"] }).count, 8, "and audited for every session")
        XCTAssertEqual(events("role.restarted").filter { $0["role"] == "recorder" }.count, 1)
        let (verified, report) = try runCapturing(cloisterExecutable, ["recordings", "verify", recordings])
        XCTAssertEqual(verified, .exited(0), "recordings with gaps still check: the gaps are in the chain\n\(report)")
    }

    func testWithRecordFailureEndASessionEndsWithTheReason() throws {
        let server = try serve(["--record-failure", "end"])
        defer { _ = try? server.stop() }
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        _ = try client.readOutput { $0.contains("# ") || $0.contains("$ ") }
        XCTAssertEqual(kill(try XCTUnwrap(pid(of: "recorder", server)), SIGKILL), 0)
        // The recorder's restart ends the session (what its socket held may be lost).
        let closed = try XCTUnwrap(eventuallyValue(10) { () -> TerminalClient.Closed? in
            do {
                try client.input("echo more\r")
                _ = try client.drainOutput(forSeconds: 1)
                return nil
            } catch let closed as TerminalClient.Closed {
                return closed
            } catch {
                return nil
            }
        })
        XCTAssertEqual(closed.code, 1000)
        XCTAssertEqual(closed.reason, "the session's recording failed, and this server ends such sessions")
        XCTAssertTrue(eventually(10) { self.events("session.ended").count == 1 })
        XCTAssertEqual(events("recording.gap").first?["ends_session"], "true")
    }

    /// Retention: finished recordings older than --record-max-age go, then the oldest until
    /// the rest fit in --record-max-size; each deletion audited; what is left still checks.
    func testRetentionDeletesTheOldestAndAuditsEachDeletion() throws {
        try FileManager.default.createDirectory(atPath: recordings, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        var previous = ""
        let now = time(nil)
        for n in 1...6 {
            var bytes: [UInt8] = []
            let header = Asciicast.Header(width: 80, height: 24, timestamp: Int(now) - 86400 * (7 - n),
                                          cloister: .init(session: "s\(n)", user: "tester", sequence: n, previous: previous))
            let writer = try RecordingWriter(header: header, write: { bytes += $0 })
            try writer.output(Array(repeating: UInt8(ascii: "z"), count: 1_200_000), at: 1)
            try writer.finish(exit: "exit status 0", at: 2)
            previous = writer.headerLink
            let path = recordings + "/\(n).cast"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            // Recording n finished 7 - n days ago.
            var times = [timespec(tv_sec: now - 86400 * (7 - n), tv_nsec: 0), timespec(tv_sec: now - 86400 * (7 - n), tv_nsec: 0)]
            XCTAssertEqual(utimensat(AT_FDCWD, path, &times, 0), 0)
        }
        let server = try serve(["--record-max-age", "5.5", "--record-max-size", "3M"])
        defer { _ = try? server.stop() }
        // 1 (6 days old) by age; then 2, 3 and 4 until the last two (2.4 MB) fit in 3 MiB.
        XCTAssertTrue(eventually(10) { self.events("recording.deleted").count == 4 }, "\(events("recording.deleted"))")
        XCTAssertEqual(events("recording.deleted").map { $0["file"] ?? "" }, ["1.cast", "2.cast", "3.cast", "4.cast"])
        XCTAssertEqual(events("recording.deleted").map { $0["reason"] ?? "" },
                       ["older than --record-max-age"] + Array(repeating: "over --record-max-size", count: 3))
        XCTAssertEqual(events("recording.deleted").first?["vouched_by"], "supervisor")
        XCTAssertEqual(files().map { ($0 as NSString).lastPathComponent }, ["5.cast", "6.cast"])
        let (verified, report) = try runCapturing(cloisterExecutable, ["recordings", "verify", recordings])
        XCTAssertEqual(verified, .exited(0), "a sequence that begins after retention still checks: \(report)")
        // The server's own recordings go on from the directory's sequence (read from each
        // recording's header line alone, however large the recording).
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        _ = try client.readOutput { $0.contains("# ") || $0.contains("$ ") }
        XCTAssertTrue(eventually(10) { self.events("recording.started").first?["sequence"] == "7" }, "\(events("recording.started"))")
    }

    /// trzsz's and ZMODEM's commands started in a recorded session are audited as files moved
    /// through the terminal, with the protocol and the direction (the client here answers
    /// neither, and each command gives up).
    func testAFileTransferStartedInARecordedSessionIsAudited() throws {
        let venv = packageRoot + "/.build/browser-venv/bin"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: venv + "/tsz") && FileManager.default.isExecutableFile(atPath: "/usr/bin/sz"),
                          "trzsz or lrzsz is missing (make test installs them)")
        let server = try serve()
        defer { _ = try? server.stop() }
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        _ = try client.readOutput { $0.contains("# ") || $0.contains("$ ") }
        try client.input("for c in '\(venv)/tsz /etc/hostname' '\(venv)/trz' 'sz /etc/hostname' 'rz'; do timeout -s KILL 1 $c; done 2>/dev/null; stty sane; echo moved-$((6*7))\r")
        _ = try client.readOutput(untilMarker: "moved-42")
        XCTAssertTrue(eventually(10) { self.events("file.transfer").count == 4 }, "\(events("file.transfer"))")
        let transfers = events("file.transfer")
        XCTAssertEqual(transfers.map { [$0["protocol"] ?? "", $0["direction"] ?? ""] },
                       [["trzsz", "download"], ["trzsz", "upload"], ["zmodem", "download"], ["zmodem", "upload"]])
        XCTAssertEqual(Set(transfers.map { $0["vouched_by"] ?? "" }), ["recorder"])
        XCTAssertEqual(Set(transfers.map { $0["user"] ?? "" }), ["tester"])
    }

    func testRecordingOptionsAreCheckedBeforeAnythingStarts() throws {
        for (arguments, message) in [
            (["--record-input"], "--record-input: needs --record DIR"),
            (["--record", "relative/dir"], "--record: \"relative/dir\" is not an absolute path"),
            (["--record", recordings, "--record-max-size", "10Q"], "--record-max-size: \"10Q\" is not a size of at least 1M"),
            (["--record", recordings, "--record-notice", "a\u{1b}[2Jb"], "--record-notice: more than 256 bytes, or a control character"),
            (["--record", "/tmp"], "--record: open: Permission denied (errno 13) [/tmp may be written by every user]"),
        ] {
            let (ended, text) = try runCapturing(cloisterExecutable, ["serve", "--listen", "127.0.0.1:0", "--policy-dir", packageRoot + "/policies"] + arguments)
            XCTAssertEqual(ended, .exited(2), "\(arguments): \(text)")
            XCTAssertTrue(text.contains("cloister serve: " + message), "\(arguments): \(text)")
        }
    }
}
