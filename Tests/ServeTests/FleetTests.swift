import Foundation
import Processes
import Synchronization
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

/// Three hosts and a balancer, each in a network namespace of its own, the balancer run from
/// the shipped configuration (deploy/haproxy-fleet.cfg, deploy/nginx-fleet.conf) with only its
/// addresses changed: sessions spread; every connection dropped and resumed reaches its own
/// shell; shared and read-only links and `cloister attach` reach the right host; a drained
/// host takes no new session and keeps its own; a killed host ends only its own sessions,
/// and once restarted takes new ones.
final class FleetTests: XCTestCase {
    enum Balancer { case haproxy, nginx }

    static let hostNames = ["h1", "h2", "h3"]
    static let port: UInt16 = 7681, healthPort: UInt16 = 7682, balancerPort: UInt16 = 8080

    func testSessionsThroughHAProxy() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy"), "haproxy is not installed (make test installs it)")
        try fleet(.haproxy, sessions: 60)
    }

    func testTheSameThroughNginx() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx"), "nginx is not installed (make test installs it)")
        try fleet(.nginx, sessions: 60)
    }

    /// The shipped configurations route each host id to one host: each id has one rule and
    /// one server (HAProxy refuses two servers of one name; nginx would take the first map
    /// entry that matches and route the second host's sessions to the first).
    func testTheShippedConfigurationsGiveEachHostIdOneRoute() throws {
        let haproxy = try String(contentsOfFile: packageRoot + "/deploy/haproxy-fleet.cfg", encoding: .utf8)
        let rules = haproxy.matches(of: /use-server (\w+) if \{ urlp\(session\) -m beg ([\w-]+)\. \} \|\| \{ req.cook\(cloister_session\) -m beg ([\w-]+)\. \}/)
        XCTAssertEqual(rules.map { String($0.output.1) }, Self.hostNames)
        for rule in rules { XCTAssertEqual(Set([rule.output.1, rule.output.2, rule.output.3]).count, 1, "\(rule.output.0)") }
        XCTAssertEqual(haproxy.matches(of: #/\n    server (\w+) /#).map { String($0.output.1) }, Self.hostNames)

        let nginx = try String(contentsOfFile: packageRoot + "/deploy/nginx-fleet.conf", encoding: .utf8)
        let entries = nginx.matches(of: /"~\^([\w-]+):\|\^:([\w-]+)\$"\s+cloister_([\w-]+);/)
        XCTAssertEqual(entries.map { String($0.output.1) }, Self.hostNames)
        for entry in entries { XCTAssertEqual(Set([entry.output.1, entry.output.2, entry.output.3]).count, 1, "\(entry.output.0)") }
        XCTAssertEqual(nginx.matches(of: /upstream cloister_(h\d) \{/).map { String($0.output.1) }, Self.hostNames)
    }

    private func startHost(_ name: String, in network: NetworkNamespaces) throws -> ServedCloister {
        let address = network.address(name)
        return try ServedCloister.start(workers: 4, perClient: true,
                                        extra: ["--host-id", name, "--health-listen", "\(address):\(Self.healthPort)"] + ServedCloister.openAdmission,
                                        credentialInFile: true, listen: "\(address):\(Self.port)", namespace: network.namespace(name))
    }

    /// The shipped configuration with the hosts' addresses and the balancer's own.
    private func startBalancer(_ kind: Balancer, in network: NetworkNamespaces, directory: String) throws -> ChildProcess {
        let listen = "\(network.address("lb")):\(Self.balancerPort)"
        let log = try FileDescriptor.open(directory + "/balancer.log", .writeOnly, options: [.create, .append], permissions: .ownerReadWrite)
        defer { try? log.close() }
        var arguments: [String]
        switch kind {
        case .haproxy:
            var config = try String(contentsOfFile: packageRoot + "/deploy/haproxy-fleet.cfg", encoding: .utf8)
            config = try replacing(config, "bind :443 ssl crt /etc/haproxy/cloister.pem alpn http/1.1", with: "bind \(listen)")
            config = try replacing(config, "inter 1s fall 2 rise 2", with: "inter 200ms fall 1 rise 1")
            config = try replacing(config, "log stdout format raw local0 info", with: "log stderr format raw local0 warning")
            for (i, name) in Self.hostNames.enumerated() {
                config = try replacing(config, "10.0.0.\(i + 1):7681", with: "\(network.address(name)):\(Self.port)")
            }
            try config.write(toFile: directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
            arguments = ["/usr/sbin/haproxy", "-db", "-f", directory + "/haproxy.cfg"]
        case .nginx:
            var site = try String(contentsOfFile: packageRoot + "/deploy/nginx-fleet.conf", encoding: .utf8)
            site = try replacing(site, "listen 443 ssl;", with: "listen \(listen);")
            for line in ["    ssl_certificate     /etc/ssl/certs/terminal.example.org.pem;\n",
                         "    ssl_certificate_key /etc/ssl/private/terminal.example.org.key;\n"] {
                site = try replacing(site, line, with: "")
            }
            for (i, name) in Self.hostNames.enumerated() {
                site = try replacing(site, "10.0.0.\(i + 1):7681", with: "\(network.address(name)):\(Self.port)")
            }
            try site.write(toFile: directory + "/site.conf", atomically: true, encoding: .utf8)
            try """
                worker_processes 1;
                pid \(directory)/nginx.pid;
                error_log \(directory)/error.log info;
                events { worker_connections 1024; }
                http {
                    access_log \(directory)/access.log;
                    client_body_temp_path \(directory)/body;
                    proxy_temp_path \(directory)/proxy;
                    include \(directory)/site.conf;
                }
                """.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
            arguments = ["/usr/sbin/nginx", "-p", directory, "-c", directory + "/nginx.conf", "-g", "daemon off;"]
        }
        // Its own log: a worker that outlived its master would hold the test's output open.
        let child = try ChildProcess.spawn("/usr/bin/ip", arguments: ["netns", "exec", network.namespace("lb")] + arguments, output: log)
        XCTAssertTrue(eventually(10) { (try? TerminalClient.get(port: Self.balancerPort, path: "/", host: network.address("lb")).status) == 401 },
                      "a host answers through the balancer: \((try? String(contentsOfFile: directory + "/balancer.log", encoding: .utf8)) ?? "")")
        return child
    }

    private func replacing(_ text: String, _ old: String, with new: String) throws -> String {
        guard text.contains(old) else { throw ServedCloister.Failure(description: "the shipped configuration no longer has \"\(old)\"") }
        return text.replacingOccurrences(of: old, with: new)
    }

    private func host(of client: ResumingClient) -> String { String(client.info.session.prefix { $0 != "." }) }

    /// Types `echo MARK=$$.` and returns the shell's pid it printed.
    private func shellPid(_ client: ResumingClient, mark: String, seconds: Double = 20) throws -> String {
        try client.input("echo \(mark)=$$.\r")
        var text = ""
        let deadline = Date().addingTimeInterval(seconds)
        while text.firstMatch(of: try Regex("\(mark)=(\\d+)\\.")) == nil && Date() < deadline {
            text += String(decoding: try client.readSome(deadline: deadline), as: UTF8.self)
        }
        let found = try XCTUnwrap(text.firstMatch(of: try Regex<(Substring, Substring)>("\(mark)=(\\d+)\\.")), text)
        return String(found.output.1)
    }

    private func fleet(_ kind: Balancer, sessions count: Int) throws {
        try XCTSkipUnless(NetworkNamespaces.available, "network namespaces need root and iproute2")
        let directory = NSTemporaryDirectory() + "cloister-fleet-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, 0o755)  // nginx's workers run as nobody
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let network = try NetworkNamespaces(Self.hostNames + ["lb"])
        var hosts = try Dictionary(uniqueKeysWithValues: Self.hostNames.map { ($0, try startHost($0, in: network)) })
        defer { for host in hosts.values { _ = try? host.stop() } }
        let balancer = try startBalancer(kind, in: network, directory: directory)
        // SIGTERM: nginx's master ends its workers before it exits (SIGKILL would orphan them).
        defer { try? balancer.signal(SIGTERM); _ = try? balancer.wait() }
        let (lb, port) = (network.address("lb"), Self.balancerPort)
        let token = TerminalClient.token(ServedCloister.userAndPassword)

        // Sessions through the balancer, each knowing its shell's pid.
        var clients: [(client: ResumingClient, shell: String)] = []
        for i in 0..<count {
            let client = try ResumingClient(port: port, host: lb, token: token)
            clients.append((client, try shellPid(client, mark: "pid-\(i)")))
        }
        let byHost = Dictionary(grouping: clients) { host(of: $0.client) }.mapValues(\.count)
        XCTAssertEqual(Set(byHost.keys), Set(Self.hostNames), "new sessions spread over the hosts: \(byHost)")
        for (name, n) in byHost { XCTAssertGreaterThanOrEqual(n, count / 6, "\(name) took \(n) of \(count): \(byHost)") }

        // Every connection dropped (each client's worker killed on its host): each resumes
        // through the balancer at its first attempt (a resume sent to another host is refused
        // there and would take more), reaches its own shell, and its input is neither lost
        // nor doubled.
        let attempts = Mutex(0)
        for (client, _) in clients { client.onReconnect = { _ in attempts.withLock { $0 += 1 } } }
        for host in hosts.values {
            for worker in try host.workers() where (worker["connections"] as? Int ?? 0) > 0 {
                kill(pid_t(worker["pid"] as! Int), SIGKILL)
            }
        }
        for (i, (client, shell)) in clients.enumerated() {
            try client.input("echo again-\(i)=$$.\r")
            var text = String(decoding: try client.readOutput(untilMarker: "again-\(i)=\(shell).", deadline: Date().addingTimeInterval(30)), as: UTF8.self)
            try client.input("echo done-\(i)=$$.\r")
            text += String(decoding: try client.readOutput(untilMarker: "done-\(i)=\(shell).", deadline: Date().addingTimeInterval(20)), as: UTF8.self)
            XCTAssertEqual(text.ranges(of: "again-\(i)=\(shell).").count, 1, "the same shell, the command once: \(text.suffix(300))")
            XCTAssertEqual(client.resumes, 1)
        }
        XCTAssertEqual(attempts.withLock { $0 }, clients.count, "one attempt per resume: each went to its session's host")

        // A shared link and a read-only link, opened by other clients: the same shell.
        let (first, shell) = clients[0]
        let joined = try ResumingClient(port: port, host: lb, token: token, session: first.info.session, secret: first.info.secret)
        let viewer = try ResumingClient(port: port, host: lb, token: token, session: first.info.session,
                                        secret: first.info.read_secret, readonly: true)
        XCTAssertNil(viewer.info.secret, "a read-only link gives no writer's secret")
        try joined.input("echo joined=$$.\r")
        for watcher in [joined, viewer] {
            XCTAssertTrue(String(decoding: try watcher.readOutput(untilMarker: "joined=\(shell).", deadline: Date().addingTimeInterval(20)), as: UTF8.self)
                .contains("joined=\(shell)."))
        }

        try attachResumes(through: "http://\(lb):\(port)/", hosts: hosts, credential: hosts["h1"]!.directory + "/credential")

        // h2 drained: new sessions go to h1 and h3; h2's own go on, and resume there.
        _ = try hosts["h2"]!.control("drain --timeout 600")
        XCTAssertTrue(eventually(10) { (try? TerminalClient.get(port: Self.healthPort, path: "/", host: network.address("h2")).status) == 404 },
                      "h2's health says draining")
        XCTAssertEqual(try hosts["h2"]!.control("status")["draining"] as? Bool, true, "ctl status answers during a drain, and says so")
        let again: String
        do { again = "\(try hosts["h2"]!.control("drain"))" } catch { again = "\(error)" }
        XCTAssertTrue(again.contains("the server is draining"), "a second drain is refused: \(again)")
        let onH2 = try XCTUnwrap(clients.first { host(of: $0.client) == "h2" })
        for worker in try hosts["h2"]!.workers() where (worker["connections"] as? Int ?? 0) > 0 {
            kill(pid_t(worker["pid"] as! Int), SIGKILL)
        }
        XCTAssertEqual(try shellPid(onH2.client, mark: "drained"), onH2.shell, "a drained host's session resumes there")
        var fresh: [ResumingClient] = []
        for _ in 0..<9 {
            let client = try ResumingClient(port: port, host: lb, token: token)
            XCTAssertNotEqual(host(of: client), "h2", "a drained host takes no new session")
            fresh.append(client)
        }

        // Everything settled: each client answers once more, and how many times each has
        // resumed so far is noted.
        for (i, (client, shell)) in clients.enumerated() { XCTAssertEqual(try shellPid(client, mark: "settled-\(i)"), shell) }
        let resumesBefore = clients.map(\.client.resumes)

        // h3 switched off: nobody else notices; its clients are told that its host cannot be
        // reached (by another host, where the balancer sent their resumes).
        network.killEverything(in: "h3")
        hosts["h3"]!.markStopped()
        for (i, (client, shell)) in clients.enumerated() where host(of: client) != "h3" {
            XCTAssertEqual(try shellPid(client, mark: "after-\(i)"), shell)
            XCTAssertEqual(client.resumes, resumesBefore[i], "a session on another host saw nothing")
        }
        let onH3 = clients.map(\.client).filter { host(of: $0) == "h3" }
        let told = Mutex([String](repeating: "", count: onH3.count))
        // A thread each (concurrentPerform would run as many at once as there are cores).
        let done = DispatchSemaphore(value: 0)
        for (i, client) in onH3.enumerated() {
            Thread.detachNewThread {
                do {
                    _ = try client.readOutput(untilMarker: "never", deadline: Date().addingTimeInterval(8))
                } catch {
                    told.withLock { $0[i] = "\(error)" }
                }
                done.signal()
            }
        }
        for _ in onH3 { done.wait() }
        for reason in told.withLock({ $0 }) {
            XCTAssertEqual(reason, "closed by the server: 1013 the host that holds this session cannot be reached")
        }

        // h3 back (an empty host now): it takes new sessions again.
        hosts["h3"] = try startHost("h3", in: network)
        let rejoined = eventuallyValue(30) { () -> ResumingClient? in
            guard let client = try? ResumingClient(port: port, host: lb, token: token) else { return nil }
            fresh.append(client)
            return host(of: client) == "h3" ? client : nil
        }
        XCTAssertNotNil(rejoined, "the restarted host takes new sessions")
        if let rejoined { XCTAssertFalse(try shellPid(rejoined, mark: "back").isEmpty) }
    }

    /// `cloister attach` through the balancer in a real terminal: its worker killed, it resumes
    /// on its session's host.
    private func attachResumes(through url: String, hosts: [String: ServedCloister], credential: String) throws {
        guard Tmux.isInstalled else { return XCTFail("tmux is not installed (make test installs it)") }
        let tmux = Tmux()
        let name = "fleet-attach"
        try tmux.run(["new-session", "-d", "-s", name, "-x", "100", "-y", "30", "\(cloisterExecutable) attach \(url) --credential-file \(credential); sleep 60"])
        XCTAssertTrue(tmux.waitForScreen(name, "attached to session"), tmux.screen(name))
        let session = try XCTUnwrap(tmux.screen(name).firstMatch(of: /attached to session ([a-z0-9-]+)\./)?.output.1, tmux.screen(name))
        let shell = try XCTUnwrap(tmux.typeUntil(name, "clear; echo attach=$$.", shows: /attach=(\d+)\./), tmux.screen(name))
        let host = try XCTUnwrap(hosts[String(session)])
        // Its own worker: the one serving a client that has no other session on that host is not
        // known, so every serving worker of that host goes (their clients resume when they read).
        for worker in try host.workers() where (worker["connections"] as? Int ?? 0) > 0 {
            kill(pid_t(worker["pid"] as! Int), SIGKILL)
        }
        XCTAssertTrue(tmux.waitForScreen(name, "connection lost; resuming"), tmux.screen(name))
        XCTAssertEqual(tmux.typeUntil(name, "clear; echo again=$$.", shows: /again=(\d+)\./), shell, "the same shell: \(tmux.screen(name))")
        try tmux.type(name, "exit")
    }
}
