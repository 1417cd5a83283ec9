import Foundation
import Processes
import Synchronization
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

/// Three hosts behind HAProxy with the shipped configuration (deploy/haproxy-fleet.cfg, its
/// addresses changed to loopback ports): new sessions spread, resumes and shared links reach
/// their host through the balancer, a drained host takes no new session.
final class FleetTests: XCTestCase {
    private func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")),
                                  sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return UInt16(bigEndian: address.sin_port)
    }

    private func healthPort(_ server: ServedCloister) throws -> UInt16 {
        let output = server.output
        let range = try XCTUnwrap(output.range(of: "health for load balancers on http://127.0.0.1:"), output)
        return try XCTUnwrap(UInt16(output[range.upperBound...].prefix { $0.isNumber }))
    }

    /// HAProxy on `port` in front of `hosts`, from the shipped file.
    private func balancer(port: UInt16, hosts: [ServedCloister], directory: String) throws -> ChildProcess {
        var config = try String(contentsOfFile: packageRoot + "/deploy/haproxy-fleet.cfg", encoding: .utf8)
        config = config.replacingOccurrences(of: "bind :443 ssl crt /etc/haproxy/cloister.pem alpn http/1.1", with: "bind 127.0.0.1:\(port)")
        config = config.replacingOccurrences(of: "inter 1s fall 2 rise 2", with: "inter 200ms fall 1 rise 1")
        config = config.replacingOccurrences(of: "log stdout format raw local0 info", with: "log stderr format raw local0 warning")
        for (i, host) in hosts.enumerated() {
            config = config.replacingOccurrences(of: "10.0.0.\(i + 1):7681 check port 7682", with: "127.0.0.1:\(host.port) check port \(try healthPort(host))")
        }
        let path = directory + "/haproxy.cfg"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        let log = try FileDescriptor.open(directory + "/haproxy.log", .writeOnly, options: [.create, .append], permissions: .ownerReadWrite)
        defer { try? log.close() }
        let child = try ChildProcess.spawn("/usr/sbin/haproxy", arguments: ["-db", "-f", path], output: log)
        XCTAssertTrue(eventually(10) { (try? TerminalClient.get(port: port, path: "/nothing").status) != nil }, "haproxy listens")
        return child
    }

    func testSessionsResumeAndShareThroughTheBalancerAndADrainedHostTakesNone() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy"), "haproxy is not installed (make test installs it)")
        let directory = NSTemporaryDirectory() + "cloister-fleet-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let hosts = try (1...3).map { n in
            try ServedCloister.start(workers: 2, perClient: true, extra: ["--host-id", "h\(n)", "--health-listen", "127.0.0.1:0"])
        }
        defer { for host in hosts { _ = try? host.stop() } }
        let port = try freePort()
        let haproxy = try balancer(port: port, hosts: hosts, directory: directory)
        defer { try? haproxy.signal(SIGKILL); _ = try? haproxy.wait() }
        XCTAssertTrue(eventually(10) { (try? TerminalClient.get(port: port, path: "/").status) == 401 }, "a host answers through the balancer")

        // Twelve sessions, each echoing its shell's pid.
        let token = TerminalClient.token(ServedCloister.userAndPassword)
        var clients: [(client: ResumingClient, shell: String)] = []
        for _ in 0..<12 {
            let client = try ResumingClient(port: port, token: token)
            try client.input("echo pid=$$.\r")
            var text = ""
            let deadline = Date().addingTimeInterval(20)
            while text.firstMatch(of: /pid=(\d+)\./) == nil && Date() < deadline {
                text += String(decoding: try client.readSome(deadline: deadline), as: UTF8.self)
            }
            let shell = try XCTUnwrap(text.firstMatch(of: /pid=(\d+)\./)?.output.1, text)
            clients.append((client, String(shell)))
        }
        let byHost = Dictionary(grouping: clients) { String($0.client.info.session.prefix { $0 != "." }) }
        XCTAssertEqual(Set(byHost.keys), ["h1", "h2", "h3"], "new sessions spread over the hosts: \(byHost.mapValues(\.count))")

        // Every serving worker killed: every connection drops, and each client resumes through
        // the balancer at its first attempt: the balancer sent it to the host in its session's
        // id (a resume sent elsewhere is refused there, and would take another attempt).
        let attempts = Mutex(0)
        for (client, _) in clients { client.onReconnect = { _ in attempts.withLock { $0 += 1 } } }
        for host in hosts {
            for worker in try host.workers() where (worker["connections"] as? Int ?? 0) > 0 {
                kill(pid_t(worker["pid"] as! Int), SIGKILL)
            }
        }
        for (i, (client, shell)) in clients.enumerated() {
            try client.input("echo again-\(i)=$$.\r")
            let text = String(decoding: try client.readOutput(untilMarker: "again-\(i)=\(shell).", deadline: Date().addingTimeInterval(30)), as: UTF8.self)
            XCTAssertTrue(text.contains("again-\(i)=\(shell)."), "the same shell through the balancer: \(text.suffix(200))")
            XCTAssertEqual(client.resumes, 1)
        }
        XCTAssertEqual(attempts.withLock { $0 }, clients.count, "one attempt per resume: each went to its session's host")

        // Another client joins a session with its secret, through the balancer: the same shell.
        let (first, shell) = clients[0]
        let joined = try ResumingClient(port: port, token: token, session: first.info.session, secret: first.info.secret)
        try joined.input("echo joined=$$.\r")
        XCTAssertTrue(String(decoding: try joined.readOutput(untilMarker: "joined=\(shell).", deadline: Date().addingTimeInterval(20)), as: UTF8.self)
            .contains("joined=\(shell)."))

        // h2 drained: its clients go on, new sessions go to h1 and h3.
        _ = try hosts[1].control("drain --timeout 600")
        let drainedClient = try XCTUnwrap(clients.first { $0.client.info.session.hasPrefix("h2.") })
        try drainedClient.client.input("echo still=$$.\r")
        XCTAssertTrue(String(decoding: try drainedClient.client.readOutput(untilMarker: "still=\(drainedClient.shell).",
                                                                          deadline: Date().addingTimeInterval(20)), as: UTF8.self)
            .contains("still=\(drainedClient.shell)."))
        Thread.sleep(forTimeInterval: 1)  // the balancer's checks see h2 draining
        for _ in 0..<6 {
            let client = try ResumingClient(port: port, token: token)
            XCTAssertFalse(client.info.session.hasPrefix("h2."), "a drained host takes no new session")
            try client.input("exit\r")
        }
    }
}
