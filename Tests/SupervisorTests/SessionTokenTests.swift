import Vault
import XCTest

/// Session ids and secrets: URL-safe, and never read as a command-line option.
final class SessionTokenTests: XCTestCase {
    /// A session id is typed after `cloister ctl kick`: one starting with "-" (one in 64 of
    /// them before) was refused as an unknown option, and `ctl kick` of that session failed.
    func testNoTokenStartsWithADash() {
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var firsts: Set<Character> = []
        for _ in 0..<20_000 {
            let token = SessionToken.random(bytes: 12)
            XCTAssertEqual(token.count, 16)
            XCTAssertTrue(token.allSatisfy(allowed.contains), token)
            firsts.insert(token.first!)
        }
        XCTAssertFalse(firsts.contains("-"), "a token starts with -")
        XCTAssertEqual(firsts.count, 62, "the first character is any letter or digit")
    }
}
