import XCTest
@testable import Keyholder

/// A worker's signing budget: a burst, then the rate, refusals counted.
final class SigningBudgetTests: XCTestCase {
    func testABurstThenTheRate() {
        var budget = SigningBudget(.init(perSecond: 10, burst: 20))
        let start = ContinuousClock.now
        XCTAssertEqual((0..<25).filter { _ in budget.take(now: start) }.count, 20, "the burst, then nothing at the same instant")
        XCTAssertEqual(budget.refused, 5)
        // Half a second later: five more, at ten a second.
        let later = start + .milliseconds(500)
        XCTAssertEqual((0..<10).filter { _ in budget.take(now: later) }.count, 5)
        // A long pause saves up no more than the burst.
        let much = later + .seconds(3600)
        XCTAssertEqual((0..<100).filter { _ in budget.take(now: much) }.count, 20)
        XCTAssertEqual(budget.signed, 45)
        XCTAssertEqual(budget.refused, 5 + 5 + 80)
    }
}
