import Foundation
import Processes
import Recording
import SystemPackage
import TestSupport
import XCTest

/// `cloister recordings verify` and `cloister play` on recordings as the recorder writes
/// them, and asciinema (from PyPI) reading the same files.
final class RecordingCommandTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "cloister-recordings-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    static let output = "\u{1b}[1mhello\u{1b}[0m w\u{f6}rld \u{1f680}\r\n" + (1...50).map { "line \($0)\r\n" }.joined()

    /// Recordings 1...count in the directory, each the same session output in pieces.
    private func write(_ count: Int) throws -> [String] {
        var previous = ""
        return try (1...count).map { n in
            var bytes: [UInt8] = []
            let header = Asciicast.Header(width: 80, height: 24, timestamp: 1_765_000_000,
                                          cloister: .init(session: "s\(n)", user: "tester", sequence: n, previous: previous))
            let writer = try RecordingWriter(header: header, checkpointEvery: 8, write: { bytes += $0 })
            let all = Array(Self.output.utf8)
            for (i, start) in stride(from: 0, to: all.count, by: 7).enumerated() {
                try writer.output(Array(all[start..<min(start + 7, all.count)]), at: Double(i) * 0.01)
            }
            try writer.finish(exit: "exit status 0", at: 5)
            previous = writer.headerLink
            let path = directory + "/\(n).cast"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }
    }

    private func run(_ executable: String, _ arguments: [String]) throws -> (ChildProcess.Termination, String) {
        // asciinema writes UTF-8 only under a UTF-8 locale, and keeps its configuration in HOME.
        try runCapturing(executable, arguments, environment: ["LANG": "C.UTF-8", "HOME": directory])
    }

    func testVerifyPassesUntouchedRecordingsAndNamesEachProblem() throws {
        let paths = try write(5)
        var (ended, text) = try run(cloisterExecutable, ["recordings", "verify", directory])
        XCTAssertEqual(ended, .exited(0), text)
        XCTAssertEqual(text, "5 recordings checked, no problem\n")

        try FileManager.default.removeItem(atPath: paths[2])
        var second = try Data(contentsOf: URL(fileURLWithPath: paths[1]))
        second[second.count / 2] ^= 0x01
        try second.write(to: URL(fileURLWithPath: paths[1]))
        (ended, text) = try run(cloisterExecutable, ["recordings", "verify", directory])
        XCTAssertEqual(ended, .exited(1), text)
        XCTAssertTrue(text.contains("/2.cast:"), text)
        XCTAssertTrue(text.contains("/4.cast:1: recording 3 of the sequence is missing"), text)
        XCTAssertTrue(text.hasSuffix("4 recordings checked, 2 problems\n") || text.contains("problems\n"), text)

        (ended, text) = try run(cloisterExecutable, ["recordings", "verify", directory + "/nonexistent.cast"])
        XCTAssertNotEqual(ended, .exited(0), text)
        XCTAssertTrue(text.contains("nonexistent.cast"), text)
    }

    func testPlayWritesTheOutputAndAsciinemaReadsTheSameFile() throws {
        let path = try write(1)[0]
        let (ended, played) = try run(cloisterExecutable, ["play", path, "--speed", "100"])
        XCTAssertEqual(ended, .exited(0))
        XCTAssertEqual(played, Self.output, "play writes exactly the output recorded")
        let (bad, refused) = try run(cloisterExecutable, ["play", path, "--speed", "0"])
        XCTAssertNotEqual(bad, .exited(0))
        XCTAssertTrue(refused.contains("--speed: 0.0 is not between 0.1 and 100"), refused)

        let asciinema = packageRoot + "/.build/browser-venv/bin/asciinema"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: asciinema), "asciinema is not installed (make test installs it)")
        let (catEnded, cat) = try run(asciinema, ["cat", path])
        XCTAssertEqual(catEnded, .exited(0), cat)
        XCTAssertEqual(cat, Self.output, "asciinema cat reproduces the bytes the terminal was sent")
    }
}
