import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `--isolation client` against the real server: which process holds which client's socket,
/// as the kernel reports it, and what a worker that misbehaves can reach of another client.
final class IsolationTests: XCTestCase {
    static let token = TerminalClient.token(ServedCloister.userAndPassword)

    func attached(_ server: ServedCloister) throws -> TerminalClient {
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: Self.token)
        return client
    }

    /// The local port of a client's socket: how `ss` and `ctl workers` name the client.
    static func localPort(_ client: TerminalClient) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client.socket, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// What `ss` prints with `arguments` (the sockets the kernel knows, and who holds them).
    static func ss(_ arguments: [String]) throws -> String {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn("/usr/bin/ss", arguments: arguments, output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        XCTAssertEqual(try child.wait(), .exited(0), text)
        return text
    }

    /// The server's end of each connection to `port`, from `ss -tnp`: the client's port, the
    /// process holding the socket and its descriptor there.
    static func holders(of port: UInt16) throws -> [UInt16: (pid: pid_t, fd: Int32)] {
        let text = try ss(["-tnpH", "state", "established", "( sport = :\(port) )"])
        var result: [UInt16: (pid: pid_t, fd: Int32)] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 5, let peerPort = fields[3].split(separator: ":").last.flatMap({ UInt16($0) }),
                  let users = fields.last, let pidRange = users.range(of: "pid="), let fdRange = users.range(of: "fd=") else { continue }
            let pid = pid_t(users[pidRange.upperBound...].prefix { $0.isNumber })!
            let fd = Int32(users[fdRange.upperBound...].prefix { $0.isNumber })!
            result[peerPort] = (pid, fd)
        }
        return result
    }

    /// The descriptors of `pid` that are TCP sockets, in any state (`ss -tanp` lists every
    /// holder of each).
    static func tcpSockets(of pid: pid_t) throws -> [String] {
        let text = try ss(["-tanpH"])
        var fds: [String] = []
        var rest = Substring(text)
        while let range = rest.range(of: "pid=\(pid),fd=") {
            let fd = rest[range.upperBound...].prefix { $0.isNumber }
            // The search includes "pid=" and the comma around the number: 12 matches no 123.
            fds.append(String(fd))
            rest = rest[range.upperBound...]
        }
        return fds.sorted()
    }

    /// The sandbox probe under the worker's profile, as root switching to the workers' user,
    /// aimed at another process's descriptor: how it ended and what it printed.
    static func probe(_ attempt: String, target: pid_t, fd: Int32) throws -> (ChildProcess.Termination, String) {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: [
            "role", "sandbox-probe", "--policy", packageRoot + "/policies/worker.json", "--mode", "enforce",
            "--attempt", attempt, "--target-pid", "\(target)", "--target-fd", "\(fd)",
        ], output: pipe.write)
        try pipe.write.close()
        let output = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        return (try child.wait(), output)
    }

    /// Two clients, even with one spare, are served by two worker processes: each holds its
    /// own client's socket and no other TCP socket, `ctl workers` names the client of each,
    /// and a process in the worker's sandbox, as the workers' user, cannot take the other
    /// worker's client socket (pidfd_getfd), open it through /proc, read its memory or trace
    /// it. When a client leaves, its worker exits and is reaped; the other is untouched.
    func testEveryClientHasAWorkerOfItsOwn() throws {
        try XCTSkipUnless(geteuid() == 0, "reading another user's descriptor table needs root")
        let server = try ServedCloister.start(workers: 1, perClient: true)
        let a = try attached(server)
        let b = try attached(server)
        try a.input("echo alpha-$((1+1))\r")
        try b.input("echo beta-$((2+2))\r")
        try a.readOutput { $0.contains("alpha-2") }
        try b.readOutput { $0.contains("beta-4") }
        let (portA, portB) = (Self.localPort(a), Self.localPort(b))
        let held = try Self.holders(of: server.port)
        let holderA = try XCTUnwrap(held[portA], "\(held)")
        let holderB = try XCTUnwrap(held[portB], "\(held)")
        XCTAssertNotEqual(holderA.pid, holderB.pid, "one process holds both clients")
        XCTAssertNotEqual(holderA.pid, server.child.pid, "the supervisor kept a client socket")
        for holder in [holderA, holderB] {
            XCTAssertEqual(try Self.tcpSockets(of: holder.pid), ["\(holder.fd)"], "worker \(holder.pid)'s TCP sockets")
        }
        let serving = try server.workers().filter { $0["client"] != nil }
        let clients = Dictionary(uniqueKeysWithValues: serving.map { ($0["client"] as? String ?? "", $0["pid"] as? Int ?? 0) })
        XCTAssertEqual(clients, ["127.0.0.1:\(portA)": Int(holderA.pid), "127.0.0.1:\(portB)": Int(holderB.pid)])
        // A spare is started for the next client meanwhile.
        XCTAssertTrue(eventually(20) { ((try? server.workers()) ?? []).contains { $0["client"] == nil && $0["state"] as? String == "running" } })

        // What a worker an attacker controls would try, to reach the other client.
        for attempt in ["pidfd-getfd", "process-vm-readv", "ptrace"] {
            let (termination, output) = try Self.probe(attempt, target: holderB.pid, fd: holderB.fd)
            XCTAssertEqual(termination, .signaled(SIGSYS), "\(attempt): \(output)")
        }
        let (opened, output) = try Self.probe("open-target-fd", target: holderB.pid, fd: holderB.fd)
        XCTAssertEqual(opened, .exited(0))
        XCTAssertEqual(output, "returned -1 errno 13\n")

        try a.closeNormally()
        XCTAssertTrue(eventually(20) { kill(holderA.pid, 0) == -1 && errno == ESRCH }, "the worker of a client that left still exists")
        try b.input("echo still-$((3+3))\r")
        try b.readOutput { $0.contains("still-6") }
        XCTAssertEqual(try Self.holders(of: server.port)[portB]?.pid, holderB.pid)
        XCTAssertTrue(eventually(10) { !((try? server.workers()) ?? []).contains { $0["client"] as? String == "127.0.0.1:\(portA)" } })
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
        XCTAssertEqual(try server.stop(), .exited(0))
    }

    /// What the isolation changes: in a pool of one worker, one process holds both clients.
    func testInAPoolOneWorkerHoldsEveryClient() throws {
        let server = try ServedCloister.start(workers: 1)
        let a = try attached(server)
        let b = try attached(server)
        try a.input("echo alpha-$((1+1))\r")
        try b.input("echo beta-$((2+2))\r")
        try a.readOutput { $0.contains("alpha-2") }
        try b.readOutput { $0.contains("beta-4") }
        let held = try Self.holders(of: server.port)
        let pids = Set([Self.localPort(a), Self.localPort(b)].compactMap { held[$0]?.pid })
        XCTAssertEqual(pids.count, 1, "\(held)")
    }

    /// A worker killed while it serves its client: the client is closed and comes back on a
    /// new worker of its own, into the same session (sessions outlive workers); the other
    /// client's worker is untouched, and the end is counted for the restart intensity.
    func testAKilledClientWorkerLosesNoSessionAndTouchesNoOtherClient() throws {
        let server = try ServedCloister.start(workers: 2, perClient: true)
        let a = try attached(server)
        let session = try a.awaitSession()
        let b = try attached(server)
        try a.input("echo alpha-$((1+1))\r")
        try b.input("echo beta-$((2+2))\r")
        try a.readOutput { $0.contains("alpha-2") }
        try b.readOutput { $0.contains("beta-4") }
        let held = try Self.holders(of: server.port)
        let victim = try XCTUnwrap(held[Self.localPort(a)]).pid
        let bystander = try XCTUnwrap(held[Self.localPort(b)]).pid
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        _ = try? a.awaitClose()
        let again = try TerminalClient.connect(port: server.port)
        try again.authenticate(token: Self.token, session: session.session, secret: session.secret)
        try again.input("echo back-$((4+4))\r")
        try again.readOutput { $0.contains("back-8") }
        XCTAssertNotEqual(try Self.holders(of: server.port)[Self.localPort(again)]?.pid, victim)
        try b.input("echo still-$((3+3))\r")
        try b.readOutput { $0.contains("still-6") }
        XCTAssertEqual(try Self.holders(of: server.port)[Self.localPort(b)]?.pid, bystander)
        XCTAssertTrue(eventually(10) { server.output.contains("worker ended while serving its client") }, server.output)
        XCTAssertEqual(try server.stop(), .exited(0))
    }

    /// Without an isolation option, each connection has a worker of its own, forked.
    func testAWorkerPerClientIsTheDefault() throws {
        let server = try ServedCloister.start(workers: 4, defaultIsolation: true)
        let before = try server.workers()
        XCTAssertEqual(before.count, 4, "four spares")
        let first = try attached(server), second = try attached(server)
        try first.input("echo one-$((1+1))\r")
        try first.readOutput { $0.contains("one-2") }
        try second.input("echo two-$((2+2))\r")
        try second.readOutput { $0.contains("two-4") }
        let serving = try server.workers().filter { $0["client"] is String }
        XCTAssertEqual(serving.count, 2, "two clients, two workers: \(serving)")
        XCTAssertEqual(Set(serving.compactMap { $0["pid"] as? Int }).count, 2)
        for pid in serving.compactMap({ $0["pid"] as? Int }) {
            let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            let parent = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("PPid:") }?.split(separator: "\t").last)
            let command = try String(contentsOfFile: "/proc/\(parent)/cmdline", encoding: .utf8)
            XCTAssertTrue(command.contains("role\u{0}template"), "worker \(pid) was forked by the template, not \(command)")
        }
    }

    /// Per client, every worker is forked from the template (its parent), which made none of
    /// their threads: each worker's every thread runs under the filter, without privileges,
    /// and shares the template's address layout (what siblings share, ARCHITECTURE.md).
    func testClientWorkersAreForkedFromTheTemplateAndSealed() throws {
        let server = try ServedCloister.start(workers: 2, perClient: true)
        let client = try attached(server)
        try client.input("echo forked-$((6*7))\r")
        try client.readOutput { $0.contains("forked-42") }
        func status(_ path: String) -> [String: String] {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            return Dictionary(text.split(separator: "\n").compactMap { line -> (String, String)? in
                guard let colon = line.firstIndex(of: ":") else { return nil }
                return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            }, uniquingKeysWith: { a, _ in a })
        }
        let workers = try server.workers().compactMap { $0["pid"] as? Int }
        XCTAssertEqual(workers.count, 3, "two spares and the client's")
        let parents = Set(workers.compactMap { status("/proc/\($0)/status")["PPid"] })
        XCTAssertEqual(parents.count, 1, "one template forked them all")
        let template = try XCTUnwrap(parents.first.flatMap { Int($0) })
        let command = try String(contentsOfFile: "/proc/\(template)/cmdline", encoding: .utf8).split(separator: "\0")
        XCTAssertEqual(Array(command.dropFirst().prefix(2)), ["role", "template"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(template)/task").count, 1, "the template has one thread")
        XCTAssertEqual(status("/proc/\(template)/status")["Seccomp"], "0", "it forks: its children load the filter")
        XCTAssertEqual(status("/proc/\(template)/status")["NoNewPrivs"], "1")
        XCTAssertEqual(status("/proc/\(template)/status")["CapEff"], "0000000000000000")
        func base(_ pid: Int) -> String? {
            (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8))?.split(separator: "\n").first.map { String($0.prefix { $0 != "-" }) }
        }
        // The template's end of its link to the supervisor: no worker holds it, so none can ask
        // the template for anything.
        let templateLink = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(template)/fd/3")
        XCTAssertTrue(templateLink.hasPrefix("socket:"), templateLink)
        for pid in workers {
            let held = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").map {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? ""
            }
            XCTAssertFalse(held.contains(templateLink), "worker \(pid) holds the template's link \(templateLink)")
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
            XCTAssertEqual(tasks.count, 4, "worker \(pid): the threads its declaration names")
            for tid in tasks {
                let s = status("/proc/\(pid)/task/\(tid)/status")
                XCTAssertEqual(s["Seccomp"], "2", "worker \(pid) thread \(tid)")
                XCTAssertEqual(s["NoNewPrivs"], "1", "worker \(pid) thread \(tid)")
                XCTAssertEqual(s["CapEff"], "0000000000000000", "worker \(pid) thread \(tid)")
            }
            XCTAssertEqual(base(pid), base(template), "worker \(pid) has its template's layout")
        }
        try client.input("exit\r")
        _ = try client.awaitClose()
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
        XCTAssertEqual(try server.stop(), .exited(0))
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(template)/status"), "the template ends with its server")
    }
}
