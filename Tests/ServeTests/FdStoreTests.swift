import FoundationEssentials
import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `serve --fd-store` under a service manager, whose part the test plays: it owns the
/// listening socket, keeps the descriptors the server stores (FDSTORE=1) and drops the ones it
/// removes (FDSTOREREMOVE=1), and gives them back with LISTEN_FDS and LISTEN_FDNAMES when it
/// starts the service again, as systemd does with FileDescriptorStoreMax= and
/// FileDescriptorStorePreserve=yes.
final class FdStoreTests: XCTestCase {
    /// The fd store: what the server handed over, by name.
    final class Store: @unchecked Sendable {
        private let lock = NSLock()
        private var held: [String: FileDescriptor] = [:]
        private var other: [String] = []
        private let notify: NotifySocket

        init(_ notify: NotifySocket) { self.notify = notify }

        /// Takes notifications until `done` holds (at most 30 s).
        func take(until done: (Store) -> Bool) {
            let deadline = Date().addingTimeInterval(30)
            while !done(self), Date() < deadline {
                let (text, fds) = notify.receive()
                let fields = Dictionary(text.split(separator: "\n").map { line -> (String, String) in
                    let parts = line.split(separator: "=", maxSplits: 1)
                    return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
                }, uniquingKeysWith: { $1 })
                lock.withLock {
                    if fields["FDSTORE"] == "1", let name = fields["FDNAME"], let fd = fds.first {
                        try? held[name]?.close()
                        held[name] = fd
                    } else if fields["FDSTOREREMOVE"] == "1", let name = fields["FDNAME"] {
                        try? held.removeValue(forKey: name)?.close()
                    } else {
                        for fd in fds { try? fd.close() }
                        other.append(text)
                    }
                }
            }
        }

        var names: [String] { lock.withLock { held.keys.sorted() } }
        var notifications: [String] { lock.withLock { other } }
        func descriptor(_ name: String) -> FileDescriptor? { lock.withLock { held[name] } }
        func closeAll() { lock.withLock { for fd in held.values { try? fd.close() }; held = [:] } }
    }

    func testARestartedServiceAdoptsTheSessionsInItsFdStore() throws {
        let directory = NSTemporaryDirectory() + "cloister-fdstore-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (listener, port) = loopbackListener()
        defer { close(listener) }
        let notify = try NotifySocket(path: directory + "/notify")
        let store = Store(notify)
        defer { store.closeAll() }
        let log = open(directory + "/output", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(log) }
        /// The service, started as systemd starts it: the listener first, then the store.
        func start(_ stored: [String]) throws -> ChildProcess {
            let names = (["cloister.socket"] + stored).joined(separator: ":")
            let command = "LISTEN_PID=$$ LISTEN_FDS=\(1 + stored.count) LISTEN_FDNAMES=\(names) NOTIFY_SOCKET=\"$1\" "
                + "exec \"$0\" serve --fd-store --workers 1 --drain-timeout 1 --control-socket \"$2\" "
                + "--credential \(ServedCloister.userAndPassword) --policy-dir \"$3\" -- /bin/sh"
            return try ChildProcess.spawn("/bin/sh", arguments: ["-c", command, cloisterExecutable, notify.path,
                                                                 directory + "/control.sock", packageRoot + "/policies"],
                                          descriptors: [FileDescriptor(rawValue: listener)] + stored.map { store.descriptor($0)! },
                                          output: FileDescriptor(rawValue: log))
        }
        let first = try start([])
        store.take { $0.notifications.contains { $0.hasPrefix("READY=1") } }
        let client = try ResumingClient(port: port, token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("stty -echo; echo start-$$-x$((6*7))\r")
        let started = String(decoding: try client.readOutput(untilMarker: "-x42", deadline: Date().addingTimeInterval(20)), as: UTF8.self)
        let shell = try XCTUnwrap(started.firstMatch(of: /start-(\d+)-x42/)?.output.1, started).description
        let session = client.info.session
        store.take { $0.names.count == 2 }
        XCTAssertEqual(store.names, ["session.\(session).\(shell).master", "session.\(session).\(shell).ring"])

        // systemctl restart: the service stops (its own copies close) and starts again.
        try first.signal(SIGTERM)
        XCTAssertEqual(try first.wait(), .exited(0))
        XCTAssertEqual(kill(pid_t(shell)!, 0), 0, "the shell outlived the service: the store holds its terminal")
        let second = try start(store.names)
        defer {
            try? second.signal(SIGTERM)
            _ = try? second.wait()
        }
        try client.input("echo after-$$.\r")
        let after = String(decoding: try client.readOutput(untilMarker: "after-\(shell).", deadline: Date().addingTimeInterval(60)), as: UTF8.self)
        XCTAssertTrue(after.contains("after-\(shell)."), after)
        XCTAssertGreaterThan(client.resumes, 0)
        let output = (try? String(contentsOfFile: directory + "/output", encoding: .utf8)) ?? ""
        XCTAssertTrue(output.contains("sessions handed over by systemd's fd store"), output.suffix(3000).description)
        XCTAssertTrue(output.contains("session adopted"), output.suffix(3000).description)

        // The shell ends: its clients are told (the nursery that reaped it is gone with the
        // first service, so how is not known), and the session leaves the store.
        try client.input("exit 7\r")
        XCTAssertThrowsError(try client.readOutput(untilMarker: "never", deadline: Date().addingTimeInterval(30))) { error in
            XCTAssertEqual((error as? TerminalClient.Closed)?.code, 1000, "\(error)")
            XCTAssertEqual((error as? TerminalClient.Closed)?.reason, "ended, status unknown", "\(error)")
        }
        store.take { $0.names.isEmpty }
        XCTAssertEqual(store.names, [], "the ended session left the store")
    }
}
