import Foundation
import Processes
import TerminalClient
import TestSupport
import XCTest

/// What a load balancer polls, and `ctl drain`, against the real server.
final class HealthTests: XCTestCase {
    private func healthPort(_ server: ServedCloister) throws -> UInt16 {
        let output = server.output
        let range = try XCTUnwrap(output.range(of: "health for load balancers on http://127.0.0.1:"), output)
        return try XCTUnwrap(UInt16(output[range.upperBound...].prefix { $0.isNumber }))
    }

    private func health(_ port: UInt16) throws -> (Int, String, [String: String]) {
        let response = try TerminalClient.get(port: port, path: "/anything")
        return (response.status, String(decoding: response.body, as: UTF8.self),
                Dictionary(response.headers.map { ($0.0.lowercased(), $0.1) }, uniquingKeysWith: { $1 }))
    }

    func testTheHealthEndpointSaysReadyFullAndDrainingAndNothingElse() throws {
        let server = try ServedCloister.start(workers: 2, perClient: true, extra: ["--health-listen", "127.0.0.1:0", "--max-clients", "1"])
        let port = try healthPort(server)
        var (status, body, headers) = try health(port)
        XCTAssertEqual([String(status), body], ["200", "ready\n"])
        XCTAssertEqual(headers["cache-control"], "no-store", "\(headers)")
        XCTAssertEqual(Set(headers.keys), ["content-type", "content-length", "cache-control", "connection"],
                       "no server name, no version")

        // One client is all --max-clients allows: full.
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("echo before-drain-$((6*7))\r")
        _ = try client.readOutput { $0.contains("before-drain-42") }
        XCTAssertTrue(eventually(5) { (try? self.health(port).1) == "full\n" })
        XCTAssertEqual(try health(port).0, 503)

        // Drained: no new client, the open one goes on, the health says so until the end.
        let drained = try server.control("drain --timeout 60")
        XCTAssertEqual(drained["draining"] as? Bool, true, "\(drained)")
        XCTAssertTrue(eventually(5) { (try? self.health(port).1) == "draining\n" })
        XCTAssertEqual(try health(port).0, 404)
        XCTAssertThrowsError(try TerminalClient.connect(port: server.port), "no new session while draining") { error in
            XCTAssertEqual("\(error)", "handshake refused with HTTP 503")
        }
        try client.input("echo during-drain-$((6*7))\r")
        _ = try client.readOutput { $0.contains("during-drain-42") }
        // The last client leaves: the server stops by itself, long before the deadline.
        try client.input("exit\r")
        _ = try? client.awaitClose()
        let started = Date()
        XCTAssertEqual(try server.child.wait(), .exited(0))
        server.markStopped()
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertThrowsError(try health(port), "the endpoint closes with the server")
    }

    func testABadHealthAddressIsRefused() throws {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["serve", "--policy-dir", packageRoot + "/policies",
                                                                           "--health-listen", "unix:/tmp/h.sock"], output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        XCTAssertEqual(try child.wait(), .exited(2), text)
        XCTAssertTrue(text.contains("--health-listen: \"unix:/tmp/h.sock\" is not HOST:PORT"), text)
    }
}
