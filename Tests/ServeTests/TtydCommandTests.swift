import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `cloister ttyd` with ttyd's own command lines, against the real server it starts.
final class TtydCommandTests: XCTestCase {
    static let token = TerminalClient.token(ServedCloister.userAndPassword)

    final class Running {
        let child: ChildProcess
        let output: String
        let directory: String
        var port: UInt16 = 0
        init(child: ChildProcess, output: String, directory: String) {
            (self.child, self.output, self.directory) = (child, output, directory)
        }
        var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        deinit {
            try? child.signal(SIGTERM)
            _ = try? child.wait()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// `cloister ttyd ARGUMENTS` on loopback, once it prints its address.
    private func ttyd(_ arguments: [String]) throws -> Running {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cloister-ttyd-\(getpid())-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let output = directory + "/output"
        let log = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(log) }
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["ttyd", "--control-socket", directory + "/control.sock"] + arguments,
                                           output: FileDescriptor(rawValue: log))
        let running = Running(child: child, output: output, directory: directory)
        let found = eventually(60) {
            guard let range = running.text.range(of: "listening on http://127.0.0.1:"),
                  let port = UInt16(running.text[range.upperBound...].prefix { $0.isNumber }) else { return false }
            running.port = port
            return true
        }
        XCTAssertTrue(found, running.text)
        // The roles start after the address is printed; a session proves they are up.
        _ = eventually(30) { (try? TerminalClient.connect(port: running.port)) != nil }
        return running
    }

    /// ttyd's defaults where they are stricter: read-only without -W; Cloister's where they
    /// are: each difference said in one line.
    func testReadOnlyUnlessWritableAndTheDifferencesAreSaid() throws {
        let server = try ttyd(["-p", "0", "-i", "lo", "-c", ServedCloister.userAndPassword, "/bin/sh"])
        XCTAssertTrue(server.text.contains("cloister ttyd: differs from ttyd: no -O"), server.text)
        XCTAssertTrue(server.text.contains("cloister ttyd: differs from ttyd: -m 0"), server.text)
        XCTAssertFalse(server.text.contains("no -c"), "a credential was given")
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: Self.token)
        let session = try client.awaitSession()
        XCTAssertNil(session.secret, "a viewer: no writing secret")
        try client.input("echo typed-$((20+22))\r")
        let seen = String(decoding: try client.drainOutput(forSeconds: 1), as: UTF8.self)
        XCTAssertFalse(seen.contains("typed-42"), "nobody's input reaches the shell without -W: \(seen)")
    }

    func testWritableWithTtydsOptions() throws {
        let directory = FileManager.default.temporaryDirectory.path
        let server = try ttyd(["--port", "0", "--interface", "lo", "--credential", ServedCloister.userAndPassword, "-W",
                               "-T", "vt220", "-w", directory, "-t", "fontSize=19", "-P", "3", "/bin/sh", "-i"])
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: Self.token)
        let session = try client.awaitSession()
        XCTAssertNotNil(session.secret, "a writer")
        try client.input("echo \"[$TERM:$(pwd)]\"\r")
        let expected = "[vt220:\(directory)]"
        XCTAssertTrue(try client.readOutput { $0.contains(expected) }.contains(expected))
    }

    /// What Cloister cannot do yet, and what ttyd would not take either, ends at start with one
    /// line and status 2.
    func testRefusalsAtStart() throws {
        let cases: [([String], String)] = [
            (["-S", "-C", "/c.pem", "-K", "/k.pem", "-A", "/ca.pem", "/bin/sh"], "-A: Cloister does not verify client certificates"),
            (["-S", "-C", "/c.pem", "/bin/sh"], "-S needs -C and -K"),
            (["-s", "BOGUS", "/bin/sh"], "-s BOGUS: not a signal name or number"),
            (["--bogus", "/bin/sh"], "--bogus: not one of ttyd's options"),
            (["-p", "0"], "a command to run is required"),
            (["-i", "nonexistent0", "/bin/sh"], "-i nonexistent0: no such network interface"),
        ]
        for (arguments, message) in cases {
            let pipe = try makePipe()
            let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["ttyd"] + arguments, output: pipe.write)
            try pipe.write.close()
            let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
            try pipe.read.close()
            XCTAssertEqual(try child.wait(), .exited(2), "\(arguments): \(text)")
            XCTAssertTrue(text.hasPrefix("cloister ttyd: ") && text.contains(message), "\(arguments): \(text)")
            XCTAssertEqual(text.split(separator: "\n").count, 1, text)
        }
    }
}
