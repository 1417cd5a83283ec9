import XCTest
@testable import Supervisor

/// Admission of unauthenticated connections as values: OpenSSH's start:rate:full, the limit
/// per source, who leaves the count, and one log line per source per interval.
final class AdmissionTests: XCTestCase {
    func testBelowStartEveryConnectionIsAdmittedAndFullRefusesAll() {
        var a = Admission(limits: .init(start: 3, rate: 50, full: 5, perSource: 100))
        for i in 0..<3 { XCTAssertEqual(a.admit(source: "10.0.0.\(i)", chance: 0), .admit) }
        // From start on, a chance below the probability refuses: 50 % at start.
        XCTAssertEqual(a.admit(source: "10.0.1.1", chance: 0.49), .refuse(.early))
        XCTAssertEqual(a.admit(source: "10.0.1.1", chance: 0.51), .admit)
        // 75 % one step further, halfway to full.
        XCTAssertEqual(a.admit(source: "10.0.1.2", chance: 0.74), .refuse(.early))
        XCTAssertEqual(a.admit(source: "10.0.1.2", chance: 0.76), .admit)
        XCTAssertEqual(a.unauthenticated, 5)
        XCTAssertEqual(a.admit(source: "10.0.2.1", chance: 0.9999), .refuse(.full))
        XCTAssertEqual(a.refused, [.early: 2, .full: 1])
        // Authenticating leaves the count: room again.
        a.authenticatedConnection(source: "10.0.0.0")
        XCTAssertEqual(a.unauthenticated, 4)
        XCTAssertEqual(a.admit(source: "10.0.2.1", chance: 0.99), .admit)
        XCTAssertEqual(a.admitted, 6)
        XCTAssertEqual(a.authenticated, 1)
    }

    func testOneSourceCannotTakeTheWholeRoom() {
        var a = Admission(limits: .init(start: 100, rate: 30, full: 200, perSource: 2))
        XCTAssertEqual(a.admit(source: "192.0.2.7", chance: 0), .admit)
        XCTAssertEqual(a.admit(source: "192.0.2.7", chance: 0), .admit)
        XCTAssertEqual(a.admit(source: "192.0.2.7", chance: 0), .refuse(.source))
        XCTAssertEqual(a.admit(source: "192.0.2.8", chance: 0), .admit, "another source is not held back")
        a.endedUnauthenticated(source: "192.0.2.7", expired: true)
        XCTAssertEqual(a.refused[.deadline], 1)
        XCTAssertEqual(a.admit(source: "192.0.2.7", chance: 0), .admit)
    }

    func testSourcesAreAddressesAndIPv6Prefixes() {
        XCTAssertEqual(Admission.source(of: "192.0.2.7:51000"), "192.0.2.7")
        XCTAssertEqual(Admission.source(of: "[2001:db8:1:2:aaaa::1]:443"), "2001:db8:1:2::/64")
        XCTAssertEqual(Admission.source(of: "[2001:db8:1:2:ffff:ffff:ffff:ffff]:443"), "2001:db8:1:2::/64", "one /64, one source")
        XCTAssertEqual(Admission.source(of: "[2001:db8::1]:443"), "2001:db8:0:0::/64")
        XCTAssertEqual(Admission.source(of: "[::1]:80"), "0:0:0:0::/64")
        XCTAssertEqual(Admission.source(of: "[::ffff:192.0.2.9]:80"), "192.0.2.9")
        XCTAssertEqual(Admission.source(of: "unix"), "unix")
    }

    func testARefusedFloodIsOneLogLinePerSourcePerInterval() {
        var a = Admission(limits: .init())
        let start = ContinuousClock.now
        XCTAssertTrue(a.shouldLog(source: "s", at: start).log)
        for i in 1...999 { XCTAssertFalse(a.shouldLog(source: "s", at: start + .milliseconds(i)).log) }
        XCTAssertTrue(a.shouldLog(source: "other", at: start + .seconds(1)).log)
        let next = a.shouldLog(source: "s", at: start + .seconds(11))
        XCTAssertTrue(next.log)
        XCTAssertEqual(next.suppressed, 999)
    }

    func testLimitsAreCheckedAndNamed() {
        XCTAssertNoThrow(try Admission.Limits(startRateFull: "10:30:100", perSource: 5, deadline: .seconds(30)))
        for (text, problem) in [("10:30", "is not START:RATE:FULL"), ("20:30:10", "START must be at least 1 and at most FULL"),
                                ("10:0:100", "RATE is a percentage"), ("a:b:c", "is not START:RATE:FULL")] {
            XCTAssertThrowsError(try Admission.Limits(startRateFull: text, perSource: 5, deadline: .seconds(30)), text) {
                XCTAssertTrue("\($0)".contains(problem), "\($0)")
            }
        }
    }
}
