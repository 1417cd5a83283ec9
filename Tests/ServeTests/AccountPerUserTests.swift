import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// One Unix account per web user, with real accounts made for the test: a users file of
/// crypt(3) hashes, `--account-per-user` and `--account-group`. Needs root (useradd, and
/// a nursery that starts shells as other users).
final class AccountPerUserTests: XCTestCase {
    private let suffix = String(getpid() % 100000)
    private var group: String { "cl-grp-\(suffix)" }
    private var alice: String { "cl-alice-\(suffix)" }
    private var bob: String { "cl-bob-\(suffix)" }
    private var zero: String { "cl-zero-\(suffix)" }

    @discardableResult
    private func run(_ executable: String, _ arguments: [String]) throws -> String {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(executable, arguments: arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
                                           output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        XCTAssertEqual(try child.wait(), .exited(0), "\(executable) \(arguments): \(text)")
        return text
    }

    private func hash(_ password: String) throws -> String {
        try run("/usr/bin/openssl", ["passwd", "-6", password]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "accounts of their own need root")
        try run("/usr/sbin/groupadd", [group])
        try run("/usr/sbin/useradd", ["--create-home", "--shell", "/bin/sh", "--groups", group, alice])
        try run("/usr/sbin/useradd", ["--create-home", "--shell", "/bin/sh", bob])
        // A second name for uid 0, in the group: refused for being root, not for the group.
        try run("/usr/sbin/useradd", ["--non-unique", "--uid", "0", "--gid", group, "--no-create-home", "--home-dir", "/root", zero])
        addTeardownBlock { [alice, bob, zero, group] in
            // --force: processes run as uid 0 (the second name's), and a shell of the test may
            // still be ending as alice or bob; userdel would keep the account, and the next
            // test's useradd would find it.
            for user in [alice, bob, zero] {
                _ = try? ChildProcess.spawn("/usr/sbin/userdel", arguments: user == zero ? ["--force", user] : ["--force", "--remove", user]).wait()
            }
            _ = try? ChildProcess.spawn("/usr/sbin/groupdel", arguments: [group]).wait()
        }
    }

    private func usersFile(in directory: String, _ lines: [String]) throws -> String {
        let path = directory + "/users-\(UUID().uuidString.prefix(6))"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data((lines.joined(separator: "\n") + "\n").utf8),
                                                     attributes: [.posixPermissions: 0o600]))
        return path
    }

    private func shellOutput(_ server: ServedCloister, user: String, password: String, _ command: String, until marker: String) throws -> String {
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token("\(user):\(password)"))
        try client.input(command + "\r")
        return try client.readOutput { $0.contains(marker) }
    }

    func testEachWebUserGetsTheShellOfTheirOwnAccount() throws {
        let directory = NSTemporaryDirectory() + "cloister-accounts-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let users = try usersFile(in: directory, ["# web users", "\(alice):\(try hash("alice-pw"))",
                                                  "\(bob):\(try hash("bob-pw"))", "\(zero):\(try hash("zero-pw"))"])
        let server = try ServedCloister.start(workers: 1, extra: ["--users-file", users, "--account-per-user", "--account-group", group],
                                              command: [], credential: false)

        // Alice: her account, her home, her login shell, her groups.
        let text = try shellOutput(server, user: alice, password: "alice-pw",
                                   "echo \"who=[$(id -un):$(id -gn):$HOME:$USER:$TTYD_USER:$(pwd):$0]\" $(id -Gn)", until: "who=[cl")
        XCTAssertTrue(text.contains("who=[\(alice):\(alice):/home/\(alice):\(alice):\(alice):/home/\(alice):-sh]"), text)
        XCTAssertTrue(text.contains(group), "supplementary groups: \(text)")

        // A wrong password: refused like any wrong credential.
        XCTAssertEqual(try TerminalClient.get(port: server.port, path: "/token",
                                              headers: ["Authorization": "Basic \(TerminalClient.token("\(alice):wrong"))"]).status, 401)
        XCTAssertEqual(try TerminalClient.get(port: server.port, path: "/token",
                                              headers: ["Authorization": "Basic \(TerminalClient.token("\(alice):alice-pw"))"]).status, 200)

        // Bob's password is right, but his account is not in the group; the uid-0 account is root.
        for (user, password, reason) in [(bob, "bob-pw", "is not in group \(group)"), (zero, "zero-pw", "is root")] {
            let client = try TerminalClient.connect(port: server.port)
            try client.authenticate(token: TerminalClient.token("\(user):\(password)"))
            let closed = try client.awaitClose()
            XCTAssertNotEqual(closed.code, 1000, "\(user): \(closed)")
            XCTAssertTrue(eventually(10) { server.output.contains("shell refused for this web user") && server.output.contains(reason) },
                          "\(user): \(server.output)")
        }
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
    }

    /// The same with a reverse proxy's header naming the user (no password here).
    func testTheProxysHeaderNamesTheAccount() throws {
        let server = try ServedCloister.start(workers: 1, extra: ["--auth-header", "X-Forwarded-User", "--account-per-user",
                                                                  "--account-group", group], command: [], credential: false)
        let client = try TerminalClient.connect(port: server.port, headers: [("X-Forwarded-User", alice)])
        try client.authenticate(token: "")
        try client.input("echo \"who=[$(id -un):$HOME]\"\r")
        let text = try client.readOutput { $0.contains("who=[cl") }
        XCTAssertTrue(text.contains("who=[\(alice):/home/\(alice)]"), text)
        let refused = try TerminalClient.connect(port: server.port, headers: [("X-Forwarded-User", bob)])
        try refused.authenticate(token: "")
        XCTAssertNotEqual(try refused.awaitClose().code, 1000)
        XCTAssertTrue(eventually(10) { server.output.contains("is not in group \(self.group)") }, server.output)
    }

    func testUsersFilesAndAccountOptionsAreCheckedAtStart() throws {
        let directory = NSTemporaryDirectory() + "cloister-accounts-bad-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plain = try usersFile(in: directory, ["\(alice):alice-pw"])
        let good = try usersFile(in: directory, ["\(alice):\(try hash("alice-pw"))"])
        let open = try usersFile(in: directory, ["\(alice):\(try hash("alice-pw"))"])
        XCTAssertEqual(chmod(open, 0o644), 0)
        let cases: [([String], String)] = [
            (["--users-file", plain], "--users-file: \(plain): line 1: the password of \(alice) is not a crypt(3) hash"),
            (["--users-file", open], "is readable or writable by group or others"),
            (["--users-file", good, "--credential", "a:b"], "--users-file: give one of"),
            (["--users-file", good, "--account-per-user"], "--account-per-user: give --account-group"),
            (["--users-file", good, "--account-per-user", "--account-group", "root"], "--account-group: \"root\" is the root group"),
            (["--users-file", good, "--account-group", group], "--account-group: only applies with --account-per-user"),
            (["--credential", "a:b", "--account-per-user", "--account-group", group], "--account-per-user: needs web users to map"),
            (["--users-file", good, "--account-per-user", "--account-group", group, "--user", "nobody"], "--user: does not apply"),
        ]
        for (arguments, expected) in cases {
            let pipe = try makePipe()
            let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["serve", "--policy-dir", packageRoot + "/policies",
                                                                               "--control-socket", directory + "/unused.sock"] + arguments,
                                               output: pipe.write)
            try pipe.write.close()
            let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
            try pipe.read.close()
            XCTAssertEqual(try child.wait(), .exited(2), "\(arguments): \(text)")
            XCTAssertTrue(text.contains(expected), "\(arguments): \(text)")
        }
    }
}
