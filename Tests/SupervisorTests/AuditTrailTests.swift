import Foundation
import Logging
import RoleProtocol
import SystemPackage
import XCTest
@testable import Supervisor

/// What the supervisor adds to and takes from a fact before writing it: the client's address
/// it accepted, and a forwarded address only from a worker whose client came from a trusted
/// proxy.
final class AuditTrailTests: XCTestCase {
    func testAForwardedAddressIsKeptOnlyFromATrustedProxysConnection() throws {
        let path = NSTemporaryDirectory() + "cloister-trail-\(getpid())-\(UUID().uuidString.prefix(6)).jsonl"
        defer { unlink(path) }
        var logger = Logger(label: "test.audit")
        logger.logLevel = .critical
        let trail = AuditTrail(file: try AuditTrail.open(path: path), logger: logger, trustedProxies: ["10.0.0.9"])
        trail.clientHanded(worker: 1, source: "10.0.0.9:40000")  // the balancer
        trail.clientHanded(worker: 2, source: "192.0.2.5:40001")  // a client straight in
        for worker in [1, 2] {
            trail.record(AuditRecord(.sessionStarted, [("session", "s\(worker)"), ("worker", "\(worker)"), ("forwarded_for", "203.0.113.7")]),
                         vouchedBy: "vault")
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String])
        }
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(lines[0]["forwarded_for"], "203.0.113.7")
        XCTAssertEqual(lines[0]["forwarded_for_vouched_by"], "worker")
        XCTAssertEqual(lines[0]["source"], "10.0.0.9:40000")
        XCTAssertNil(lines[1]["forwarded_for"], "a worker whose client did not come through the proxy is not believed: \(lines[1])")
        XCTAssertNil(lines[1]["forwarded_for_vouched_by"])
        XCTAssertEqual(lines[1]["source"], "192.0.2.5:40001")
    }
}
