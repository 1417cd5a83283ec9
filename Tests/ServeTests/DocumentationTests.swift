import Foundation
import TestSupport
import XCTest

/// The operator's page says what the binary does: every option `serve --help` lists is in
/// README's synopsis of `cloister serve` and explained below it.
final class DocumentationTests: XCTestCase {
    func testTheReadmeNamesEveryServeOption() throws {
        let (status, help) = try TLSTests.run(cloisterExecutable, ["serve", "--help"])
        XCTAssertEqual(status, .exited(0), help)
        let options = Set(help.matches(of: /(?:^|\s)(--[a-z][a-z-]+)/).map { String($0.output.1) })
            .subtracting(["--help", "--no-check-origin"])
        XCTAssertGreaterThan(options.count, 40, help)
        let readme = try String(contentsOfFile: packageRoot + "/README.md", encoding: .utf8)
        let start = try XCTUnwrap(readme.range(of: "```\ncloister serve ["))
        let end = try XCTUnwrap(readme.range(of: "```", range: start.upperBound..<readme.endIndex))
        let synopsis = String(readme[start.upperBound..<end.lowerBound]).replacingOccurrences(of: "--[no-]", with: "--")
        let rest = readme[end.upperBound...]
        let explained = String(rest[..<(rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex)])
        for option in options.sorted() {
            XCTAssertTrue(synopsis.contains(option + " ") || synopsis.contains(option + "]") || synopsis.contains(option + "\n"),
                          "README's synopsis of cloister serve lacks \(option)")
            XCTAssertTrue(explained.contains(option), "README does not explain \(option) under the synopsis")
        }
    }
}
