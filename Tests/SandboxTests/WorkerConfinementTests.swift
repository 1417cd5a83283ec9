import Circuits
import Foundation
import Processes
import RoleProtocol
import Sandbox
import SystemPackage
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The real worker role, confined by the shipped profile, serving client connections.
final class WorkerConfinementTests: XCTestCase {
    struct RunningWorker {
        var child: ChildProcess
        var transport: Transport<UInt16>
        var monitor: ViolationMonitor?
    }

    private func startWorker(mode: String = "enforce", events: EventLog? = nil) async throws -> RunningWorker {
        let (mine, theirs) = try SocketCalls.socketPair(.seqpacket)
        var descriptors = [theirs]
        var arguments = ["role", "worker", "--policy", SandboxProcessTests.workerPolicy, "--mode", mode, "--settings", WorkerSettings().encoded()]
        var handoff: (FileDescriptor, FileDescriptor)?
        if mode != "enforce" {
            let pair = try FileDescriptor.socketPairForHandoff()
            handoff = pair
            descriptors.append(pair.1)
            arguments += ["--listener-fd", "4"]
        }
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: arguments, descriptors: descriptors)
        try theirs.close()
        // As the supervisor does: the handshake first (the worker makes its link's threads
        // before its filter), then the listener, handed over as the filter is loaded.
        let transport = try await Link.supervisorWorker.start(socket: mine, side: .opener, build: cloisterBuildID)
        var monitor: ViolationMonitor?
        if let handoff {
            try handoff.1.close()
            let listener = try ListenerHandoff.receive(from: handoff.0)
            try handoff.0.close()
            monitor = try ViolationMonitor(listener: listener, role: "worker", mode: .report) { events?.append($0) }
        }
        try await ControlCircuit.awaitReady(transport, role: .worker)
        return RunningWorker(child: child, transport: transport, monitor: monitor)
    }

    /// Hands the worker one client that makes `requests` HTTP requests on one connection
    /// (keep-alive, the last one closing) and checks every answer; the worker then ends the
    /// client's conversation.
    private func serveClient(_ worker: RunningWorker, requests: Int, padding: Int = 0) async throws {
        let (client, server) = try SocketCalls.socketPair(.stream)
        defer { try? client.close() }
        let circuit = try worker.transport.open()
        try await circuit.send(SupervisorToWorker.client(tls: false, newSessions: true), descriptors: [server])
        try server.close()
        var text = ""
        for i in 0..<requests {
            text += "GET /missing-\(i) HTTP/1.1\r\nHost: test\r\nX-Padding: \(String(repeating: "p", count: padding))\r\n"
            text += i == requests - 1 ? "Connection: close\r\n\r\n" : "\r\n"
        }
        let request = text
        let reply = try await onOwnThread {
            _ = try Array(request.utf8).withUnsafeBytes { try client.writeAll($0) }
            return String(decoding: try readAll(client), as: UTF8.self)
        }
        XCTAssertEqual(reply.components(separatedBy: "HTTP/1.1 404 Not Found").count - 1, requests, reply)
        let end = try await circuit.receive()
        XCTAssertTrue(end.isEnd)
        try await circuit.send([], end: true)
    }

    func testEveryThreadOfAServingWorkerIsConfined() async throws {
        let worker = try await startWorker()
        let atStart = try XCTUnwrap(SandboxStatus.read(pid: worker.child.pid)).threads.map(\.tid)
        try await serveClient(worker, requests: 1)
        try await serveClient(worker, requests: 20, padding: 8000)
        let status = try XCTUnwrap(SandboxStatus.read(pid: worker.child.pid))
        // Main, the event loop, the supervisor link's reader and writer: all made before the
        // filter, and the same ones after serving.
        XCTAssertEqual(status.threads.map(\.tid), atStart, "threads came or went after the filter")
        XCTAssertGreaterThanOrEqual(status.threads.count, 4, "\(status.threads)")
        for thread in status.threads {
            XCTAssertEqual(thread.seccomp, 2, "\(thread)")
            XCTAssertTrue(thread.noNewPrivileges, "\(thread)")
            XCTAssertEqual(thread.effective, 0, "\(thread)")
            XCTAssertEqual(thread.permitted, 0, "\(thread)")
            XCTAssertEqual(thread.inheritable, 0, "\(thread)")
            XCTAssertEqual(thread.ambient, 0, "\(thread)")
            if geteuid() == 0 { XCTAssertEqual(thread.bounding, 0, "\(thread)") }
        }
        XCTAssertTrue(status.isConfined)
        // The role's rlimits, as the kernel reports them for the live process.
        let limits = try String(contentsOfFile: "/proc/\(worker.child.pid)/limits", encoding: .utf8)
        func limit(_ name: String) -> [Substring] {
            let line = limits.split(separator: "\n").first { $0.hasPrefix(name) } ?? ""
            return line.dropFirst(name.count).split(separator: " ").prefix(2).map { $0 }
        }
        XCTAssertEqual(limit("Max core file size"), ["0", "0"])
        XCTAssertEqual(limit("Max file size"), ["0", "0"])
        XCTAssertEqual(limit("Max open files"), ["256", "256"])
        if geteuid() == 0 {
            let owner = try FileManager.default.attributesOfItem(atPath: "/proc/\(worker.child.pid)")[.ownerAccountID] as? NSNumber
            XCTAssertEqual(owner?.uint32Value, getpwnam("nobody").pointee.pw_uid, "runs as nobody")
            // Not dumpable: the kernel hands its /proc entries to root, not to its own uid.
            let fdOwner = try FileManager.default.attributesOfItem(atPath: "/proc/\(worker.child.pid)/fd")[.ownerAccountID] as? NSNumber
            XCTAssertEqual(fdOwner?.uint32Value, 0, "not dumpable")
        }
        worker.transport.close()
        XCTAssertEqual(try worker.child.wait(), .exited(0))
    }

    func testReportModeWorkerKeepsNoListenerAndReportsNothingForRealWork() async throws {
        let events = EventLog()
        let worker = try await startWorker(mode: "report", events: events)
        do {
            for i in 0..<4 { try await serveClient(worker, requests: 1 + i * 10, padding: i * 3000) }
        } catch {
            worker.monitor?.waitUntilDone()
            return XCTFail("traffic failed (\(error)); violations: \(events.all.map(\.description))")
        }
        // Root reads the descriptor table of a non-dumpable process.
        if geteuid() == 0 {
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(worker.child.pid)/fd")
            for fd in fds {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(worker.child.pid)/fd/\(fd)")) ?? ""
                XCTAssertFalse(target.contains("seccomp"), "the worker kept its listener: fd \(fd) -> \(target)")
            }
        }
        worker.transport.close()
        XCTAssertEqual(try worker.child.wait(), .exited(0))
        worker.monitor?.waitUntilDone()
        XCTAssertEqual(events.all.map(\.description), [], "real work needs nothing outside the profile")
    }

    /// learn from the hand-written bases, under the integration workload, needs nothing the
    /// shipped profiles lack, so the committed profiles are current (re-run the README's
    /// tuning loop if this fails).
    func testLearnFromBaseMatchesShippedProfiles() throws {
        let out = NSTemporaryDirectory() + "cloister-learn-\(getpid())"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        // A pair for the learning server's TLS listener, so that the keyholder is learned too.
        let (cert, key) = (out + "/cert.pem", out + "/key.pem")
        let made = try ChildProcess.spawn("/usr/bin/openssl", arguments: ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                                                         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                                          output: try FileDescriptor.open("/dev/null", .writeOnly, options: .closeOnExec))
        XCTAssertEqual(try made.wait(), .exited(0))
        chmod(key, 0o600)
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["policy", "learn", "--rounds", "1", "--base-dir",
                                                                          packageRootPolicies + "/base", "--out-dir", out,
                                                                          "--tls-cert", cert, "--tls-key", key],
                                           descriptors: [], environment: [:])
        XCTAssertEqual(try child.wait(), .exited(0))
        for role in ["worker", "vault", "keyholder"] {
            let learned = try Policy.load(file: "\(out)/\(role).json")
            let shipped = try Policy.load(file: "\(packageRootPolicies)/\(role).json")
            XCTAssertEqual(learned.warnings, [], role)
            let missing = learned.allowedSyscalls.subtracting(shipped.allowedSyscalls)
            XCTAssertEqual(missing, [], "the shipped \(role) profile lacks what the \(role) uses")
            let mode = try FileManager.default.attributesOfItem(atPath: "\(out)/\(role).json")[.posixPermissions] as? NSNumber
            XCTAssertEqual(mode?.intValue, 0o644)
        }
    }
}
