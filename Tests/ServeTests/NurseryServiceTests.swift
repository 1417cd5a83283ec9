import Circuits
import Foundation
import Processes
import RoleProtocol
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `cloister nursery` as a service of its own and `cloister serve --nursery-socket`: the
/// shells come from a process outside the server's process tree, linked over a unix socket.
final class NurseryServiceTests: XCTestCase {
    /// A running `cloister nursery --listen`, its output in a file.
    final class NurseryService {
        let child: ChildProcess
        let socket: String
        let outputPath: String
        var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

        init(directory: String, arguments: [String] = [], command: [String] = ["/bin/sh"]) throws {
            socket = directory + "/nursery.sock"
            outputPath = directory + "/nursery-\(UUID().uuidString.prefix(6)).log"
            let log = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            defer { close(log) }
            child = try ChildProcess.spawn(cloisterExecutable, arguments: ["nursery", "--listen", socket] + arguments + ["--"] + command,
                                           output: FileDescriptor(rawValue: log))
            let ready = eventually(20) { self.output.contains("nursery service ready") || waitpid(self.child.pid, nil, WNOHANG) != 0 }
            guard ready, output.contains("nursery service ready") else {
                throw ServedCloister.Failure(description: "cloister nursery did not start: \(output)")
            }
        }

        func kill() {
            try? child.signal(SIGKILL)
            _ = try? child.wait()
        }

        deinit { kill() }
    }

    private func temporaryDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "cloister-nursery-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        return directory
    }

    private func parentPID(of pid: Int32) -> Int32? {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return status.split(separator: "\n").first { $0.hasPrefix("PPid:") }.flatMap { Int32($0.dropFirst(5).trimmingCharacters(in: .whitespaces)) }
    }

    private func shellPID(_ client: TerminalClient) throws -> Int32 {
        try client.input("echo \"pid=[$$]\"\r")
        let text = try client.readOutput { $0.range(of: #"pid=\[[0-9]+\]"#, options: .regularExpression) != nil }
        let range = try XCTUnwrap(text.range(of: #"pid=\[[0-9]+\]"#, options: .regularExpression))
        return try XCTUnwrap(Int32(text[range].dropFirst(5).dropLast()))
    }

    /// The shells are the service's children, not the server's; the socket file is 0600.
    func testShellsComeFromTheNurseryService() throws {
        let directory = try temporaryDirectory()
        let nursery = try NurseryService(directory: directory)
        var info = stat()
        XCTAssertEqual(lstat(nursery.socket, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK)
        let server = try ServedCloister.start(workers: 1, extra: ["--nursery-socket", nursery.socket], command: [])
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        let shell = try shellPID(client)
        XCTAssertEqual(parentPID(of: shell), nursery.child.pid, nursery.output)
        XCTAssertTrue(server.output.contains("vault linked to the nursery service"), server.output)
        XCTAssertTrue(nursery.output.contains("vault linked"), nursery.output)
        // The server spawned no nursery of its own.
        XCTAssertFalse(server.output.contains("nursery ready"), server.output)
        try client.input("exit 5\r")
        XCTAssertTrue(try client.awaitClose().reason.contains("exit status 5"))
        XCTAssertEqual(try server.stop(), .exited(0))
        // The server's link closed with it; the service goes on, for the next server.
        XCTAssertTrue(eventually(10) { nursery.output.contains("vault link closed") }, nursery.output)
        XCTAssertEqual(waitpid(nursery.child.pid, nil, WNOHANG), 0)
    }

    /// The service going away restarts the vault; once it is back, sessions start again.
    func testAServiceRestartIsFollowedByTheServer() throws {
        let directory = try temporaryDirectory()
        var nursery: NurseryService? = try NurseryService(directory: directory)
        let server = try ServedCloister.start(workers: 1, extra: ["--nursery-socket", directory + "/nursery.sock"], command: [])
        nursery?.kill()
        XCTAssertTrue(eventually(10) { server.output.contains("the nursery service closed the vault's link") }, server.output)
        nursery = try NurseryService(directory: directory)
        let client = try XCTUnwrap(eventuallyValue(30) { () -> TerminalClient? in
            guard let client = try? TerminalClient.connect(port: server.port),
                  (try? client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))) != nil,
                  let shell = try? self.shellPID(client) else { return nil }
            return self.parentPID(of: shell) == nursery?.child.pid ? client : nil
        }, server.output)
        try client.input("exit\r")
        _ = try client.awaitClose()
    }

    /// The nursery is the one process without a seccomp filter, and it runs as root: a vault
    /// (here this test, speaking the vault's side of the link to a real `cloister nursery`)
    /// may have it signal the shells it started for that vault, and no other process: not one
    /// of its own, and not another vault's shell.
    func testTheNurserySignalsOnlyTheShellsItStartedForThatVault() async throws {
        let directory = try temporaryDirectory()
        let nursery = try NurseryService(directory: directory, command: ["/bin/sleep", "300"])
        let bystander = try ChildProcess.spawn("/bin/sleep", arguments: ["300"], ownProcessGroup: true)
        defer {
            try? bystander.signal(SIGKILL)
            _ = try? bystander.wait()
        }
        func vault() async throws -> RoleTransport {
            let socket = try UnixSocket.connect(path: nursery.socket, kind: Link.vaultNursery.socketKind)
            return try await Link.vaultNursery.start(socket: socket, side: .opener, build: cloisterBuildID)
        }
        let first = try await vault(), second = try await vault()
        defer {
            first.close()
            second.close()
        }
        // A shell for the first vault, its terminal kept open so that only a signal ends it.
        let asking = try first.open()
        try await asking.send(VaultToNursery.spawn(columns: 80, rows: 24), end: true)
        let received = try await asking.receive(NurseryToVault.self)
        let reply = try XCTUnwrap(received)
        guard case .spawned(let shell, _) = reply.message else { return XCTFail("no shell: \(reply.message)") }
        let master = try XCTUnwrap(reply.descriptors?.take(0))
        defer { try? master.close() }

        for (link, pid) in [(first, bystander.pid), (second, shell)] {
            try await link.open().tell(VaultToNursery.signal(pid: pid, signal: SIGTERM))
        }
        XCTAssertEqual(nursery.output.components(separatedBy: "refused to signal a process that is no shell of this vault's").count - 1, 2,
                       nursery.output)
        usleep(200_000)
        XCTAssertEqual(waitpid(bystander.pid, nil, WNOHANG), 0, "the bystander was signalled")
        XCTAssertEqual(kill(shell, 0), 0, "another vault's request ended the shell")

        // Its own vault's request does reach it, and the shell's end is reported to that vault.
        try await first.open().tell(VaultToNursery.signal(pid: shell, signal: SIGTERM))
        let report = try await first.accept()
        let exited = try await report.receive(NurseryToVault.self)
        guard case .exited(let pid, let exit)? = exited?.message else { return XCTFail("no exit report: \(String(describing: exited?.message))") }
        XCTAssertEqual(pid, shell)
        XCTAssertEqual(exit, .signal(SIGTERM))
    }

    /// A process of another user is refused by the service, which says why.
    func testAVaultOfAnotherUserIsRefused() throws {
        try XCTSkipUnless(geteuid() == 0, "a socket for another user needs root")
        let directory = try temporaryDirectory()
        let nursery = try NurseryService(directory: directory, arguments: ["--allow-user", "nobody"])
        var info = stat()
        XCTAssertEqual(lstat(nursery.socket, &info), 0)
        XCTAssertEqual(info.st_uid, 65534, "the socket file belongs to the allowed user")
        // Not ready until its vault has shells, which this service refuses it: no ServedCloister.
        let server = try ChildProcess.spawn(cloisterExecutable, arguments: [
            "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--control-socket", directory + "/control.sock",
            "--policy-dir", packageRoot + "/policies", "--web-dir", packageRoot + "/web", "--nursery-socket", nursery.socket,
        ], output: FileDescriptor(rawValue: open("/dev/null", O_WRONLY | O_CLOEXEC)))
        defer {
            try? server.signal(SIGKILL)
            _ = try? server.wait()
        }
        XCTAssertTrue(eventually(20) { nursery.output.contains("vault link refused: the peer runs as another user") }, nursery.output)
        XCTAssertTrue(nursery.output.contains("peer_uid=0"), nursery.output)
    }

    /// The server trusts a nursery socket only from root or its own user: one made by a
    /// process of another user is refused before the vault is given it, and the log says whose.
    func testTheServerRefusesANurserySocketOfAnotherUser() throws {
        try XCTSkipUnless(geteuid() == 0, "a nursery of another user needs root")
        let directory = try temporaryDirectory()
        XCTAssertEqual(chmod(directory, 0o711), 0)
        let own = directory + "/nobody"
        XCTAssertEqual(mkdir(own, 0o700), 0)
        XCTAssertEqual(chown(own, 65534, 65534), 0)
        let socket = own + "/nursery.sock"
        let nurseryLog = directory + "/nursery.log"
        let log = open(nurseryLog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(log) }
        let nursery = try ChildProcess.spawn("/usr/bin/setpriv", arguments: [
            "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", cloisterExecutable, "nursery", "--listen", socket, "--allow-user", "nobody", "--", "/bin/sh",
        ], output: FileDescriptor(rawValue: log))
        defer {
            try? nursery.signal(SIGKILL)
            _ = try? nursery.wait()
        }
        var nurseryText: String { (try? String(contentsOfFile: nurseryLog, encoding: .utf8)) ?? "" }
        XCTAssertTrue(eventually(20) { nurseryText.contains("nursery service ready") }, nurseryText)
        let serverLog = directory + "/server.log"
        let output = open(serverLog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(output) }
        let server = try ChildProcess.spawn(cloisterExecutable, arguments: [
            "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--control-socket", directory + "/control.sock",
            "--policy-dir", packageRoot + "/policies", "--web-dir", packageRoot + "/web", "--nursery-socket", socket,
        ], output: FileDescriptor(rawValue: output))
        defer {
            try? server.signal(SIGKILL)
            _ = try? server.wait()
        }
        var serverText: String { (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? "" }
        XCTAssertTrue(eventually(20) { serverText.contains("belongs to uid 65534, neither root nor 0") }, serverText)
        XCTAssertFalse(nurseryText.contains("vault linked"), nurseryText)
    }

    /// As cloister-nursery.socket starts it: the listening SOCK_SEQPACKET socket at descriptor
    /// 3 (LISTEN_PID, LISTEN_FDS=1), no --listen. A stream socket there is refused.
    func testSocketActivation() throws {
        let directory = try temporaryDirectory()
        let path = directory + "/activated.sock"
        let listener = try UnixSocket.listen(path: path, kind: .seqpacket)
        let output = directory + "/nursery.log"
        let log = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(log) }
        let nursery = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" nursery -- /bin/sh", cloisterExecutable],
                                             descriptors: [listener.descriptor], output: FileDescriptor(rawValue: log))
        try listener.descriptor.close()
        defer {
            try? nursery.signal(SIGKILL)
            _ = try? nursery.wait()
        }
        var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        XCTAssertTrue(eventually(20) { text.contains("nursery service ready") }, text)
        XCTAssertTrue(text.contains("inherited socket"), text)
        let server = try ServedCloister.start(workers: 1, extra: ["--nursery-socket", path], command: [])
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        XCTAssertEqual(parentPID(of: try shellPID(client)), nursery.pid, text)

        let stream = try UnixSocket.listen(path: directory + "/stream.sock", kind: .stream)
        defer { stream.close() }
        let pipe = try makePipe()
        let refused = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" nursery -- /bin/sh", cloisterExecutable],
                                             descriptors: [stream.descriptor], output: pipe.write)
        try pipe.write.close()
        let why = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        XCTAssertEqual(try refused.wait(), .exited(2), why)
        XCTAssertTrue(why.contains("LISTEN_FDS") && why.contains("is not a seqpacket socket"), why)
    }

    func testBadOptionsExitWithStatusTwoAndOneLine() throws {
        let cases: [([String], String)] = [
            (["--", "/bin/sh"], "cloister nursery: --listen: give a socket path"),
            (["--listen", "relative.sock", "--", "/bin/sh"], "--listen: \"relative.sock\" is not an absolute path"),
            (["--listen", "/tmp/x.sock", "--allow-user", "no-such-user-here"], "--allow-user: no user"),
            (["--listen", "/tmp/x.sock", "--cwd", "/nonexistent"], "--cwd"),
            (["--listen", "/tmp/x.sock", "--", "/no/such/shell"], "command"),
            (["--listen", "/nonexistent-dir/x.sock"], "--listen: bind"),
        ]
        for (arguments, expected) in cases {
            let pipe = try makePipe()
            let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["nursery"] + arguments, output: pipe.write)
            try pipe.write.close()
            let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
            try pipe.read.close()
            XCTAssertEqual(try child.wait(), .exited(2), "\(arguments): \(text)")
            XCTAssertTrue(text.split(separator: "\n").first?.contains(expected) == true, "\(arguments): \(text)")
        }
    }
}
