import Foundation
import Recording
import XCTest

/// The recordings' format and the chain that makes tampering show, named where it shows.
final class RecordingTests: XCTestCase {
    /// A recording made as the recorder makes one: output in pieces (a character split
    /// across two of them), a resize, the exit; `previous` links it to the one before.
    private func record(sequence: Int = 1, previous: String = "", checkpointEvery: Int = 4,
                        checkpoints: inout [(Int, String)]) throws -> (bytes: [UInt8], last: String, headerLink: String) {
        var bytes: [UInt8] = []
        var seen: [(Int, String)] = []
        let header = Asciicast.Header(width: 80, height: 24, timestamp: 1_765_000_000, env: ["TERM": "xterm-256color"],
                                      cloister: .init(session: "s\(sequence)", user: "tester", sequence: sequence, previous: previous))
        let writer = try RecordingWriter(header: header, checkpointEvery: checkpointEvery, write: { bytes += $0 },
                                         checkpointed: { seen.append(($0, $1)) })
        try writer.output(Array("$ echo h\u{e9}".utf8).dropLast(), at: 0.1)  // é cut after its first byte
        try writer.output([0xa9] + Array("llo\r\n".utf8), at: 0.2)
        for i in 0..<10 { try writer.output(Array("line \(i) \"quoted\" \\ \u{1b}[1mbold\u{1b}[0m\r\n".utf8), at: 0.3 + Double(i) / 10) }
        try writer.resize(columns: 100, rows: 30, at: 1.5)
        let last = try writer.finish(exit: "exit status 3", at: 2)
        checkpoints = seen
        return (bytes, last, writer.headerLink)
    }

    private func record(sequence: Int = 1, previous: String = "") throws -> (bytes: [UInt8], last: String, headerLink: String) {
        var ignored: [(Int, String)] = []
        return try record(sequence: sequence, previous: previous, checkpoints: &ignored)
    }

    private func lines(_ bytes: [UInt8]) -> [[UInt8]] { bytes.split(separator: 0x0a).map(Array.init) }
    private func join(_ lines: [[UInt8]]) -> [UInt8] { lines.flatMap { $0 + [0x0a] } }

    func testAnUntouchedRecordingChecksAndHoldsWhatWasSent() throws {
        var checkpoints: [(Int, String)] = []
        let (bytes, last, _) = try record(checkpoints: &checkpoints)
        let checked = RecordingVerifier.check(bytes, file: "a.cast")
        XCTAssertEqual(checked.findings, [])
        XCTAssertEqual(checked.last, last)
        XCTAssertEqual(checkpoints.last?.1, last, "the final checkpoint goes to the audit trail too")
        XCTAssertEqual(checkpoints.count, 4, "one every four events, and the end")
        XCTAssertEqual(checked.duration, 2)
        // The output events, joined, are exactly what the terminal was sent.
        let output = lines(bytes).dropFirst().compactMap { Asciicast.Event.parse($0) }.filter { $0.code == "o" }.map(\.data).joined()
        XCTAssertEqual(output, "$ echo héllo\r\n" + (0..<10).map { "line \($0) \"quoted\" \\ \u{1b}[1mbold\u{1b}[0m\r\n" }.joined())
        let events = lines(bytes).dropFirst().compactMap { Asciicast.Event.parse($0) }
        XCTAssertTrue(events.contains(Asciicast.Event(time: 1.5, code: "r", data: "100x30")))
        XCTAssertTrue(events.contains(Asciicast.Event(time: 2, code: "m", data: "exit status 3")))
    }

    func testOneByteChangedIsFoundAtTheNextCheckpoint() throws {
        let bytes = try record().bytes
        var changed = lines(bytes)
        // "line 4" becomes "line 5" on the seventh line.
        let index = changed.firstIndex { String(decoding: $0, as: UTF8.self).contains("line 4") }!
        let at = changed[index].firstIndex(of: UInt8(ascii: "4"))!
        changed[index][at] = UInt8(ascii: "5")
        let findings = RecordingVerifier.check(join(changed), file: "a.cast").findings
        XCTAssertEqual(findings.count, 1, "\(findings)")
        XCTAssertTrue(findings[0].problem.contains("hash chain breaks"), "\(findings)")
        XCTAssertGreaterThan(findings[0].line, index + 1, "at the checkpoint after the changed line")
        XCTAssertLessThanOrEqual(findings[0].line, index + 1 + 5)
    }

    func testTwoEventsSwappedAreFound() throws {
        let bytes = try record().bytes
        var swapped = lines(bytes)
        swapped.swapAt(3, 4)
        XCTAssertTrue(RecordingVerifier.check(join(swapped), file: "a.cast").findings.contains { $0.problem.contains("hash chain breaks") })
    }

    func testTheLastCheckpointCutOffIsFound() throws {
        let bytes = try record().bytes
        let cut = join(Array(lines(bytes).dropLast()))
        let findings = RecordingVerifier.check(cut, file: "a.cast").findings
        XCTAssertEqual(findings.map { String($0.problem.prefix(22)) }, ["no final checkpoint: t"], "\(findings)")
        // Cut in the middle of a line.
        let mid = Array(bytes.dropLast(20))
        XCTAssertTrue(RecordingVerifier.check(mid, file: "a.cast").findings.contains { $0.problem.contains("cut short") })
    }

    func testARecordingMissingFromTheSequenceIsFound() throws {
        var files: [(name: String, contents: [UInt8])] = []
        var previous = ""
        for n in 1...100 {
            let (bytes, _, headerLink) = try record(sequence: n, previous: previous)
            files.append(("\(n).cast", bytes))
            previous = headerLink
        }
        XCTAssertEqual(RecordingVerifier.check(directory: files).flatMap(\.findings), [], "100 untouched recordings check")
        var missing = files
        missing.remove(at: 41)  // sequence 42
        let findings = RecordingVerifier.check(directory: missing).flatMap(\.findings)
        XCTAssertEqual(findings.map(\.description), ["43.cast:1: recording 42 of the sequence is missing"])
        // Recording 42 replaced by another one with the right number: its link to 41 breaks.
        var replaced = files
        replaced[41] = ("42.cast", try record(sequence: 42, previous: "").bytes)
        XCTAssertEqual(RecordingVerifier.check(directory: replaced).flatMap(\.findings).map(\.description),
                       ["42.cast:1: its previous link is not the header link of recording 41",
                        "43.cast:1: its previous link is not the header link of recording 42"])
    }

    /// A recorder that died mid-line leaves its recording unfinished; the next one goes on
    /// with it after its last whole line, and the result checks.
    func testAnUnfinishedRecordingIsContinuedAndChecks() throws {
        var bytes: [UInt8] = []
        let header = Asciicast.Header(width: 80, height: 24, timestamp: 1_765_000_000,
                                      cloister: .init(session: "s1", user: "tester", sequence: 1, previous: ""))
        let first = try RecordingWriter(header: header, checkpointEvery: 3, write: { bytes += $0 })
        for i in 0..<7 { try first.output(Array("line \(i)\r\n".utf8), at: Double(i)) }
        let cut = Array(bytes.dropLast(5))  // the last line cut short
        XCTAssertNotEqual(RecordingVerifier.check(cut, file: "r").findings, [])
        let continuation = try XCTUnwrap(RecordingWriter.Continuation(cut))
        XCTAssertEqual(continuation.header, header)
        XCTAssertEqual(continuation.lastTime, 5)
        var resumed = Array(cut.prefix(continuation.keptBytes))
        let second = RecordingWriter(continuing: continuation, checkpointEvery: 3, write: { resumed += $0 })
        XCTAssertEqual(second.headerLink, first.headerLink)
        try second.marker("gap: the recorder restarted", at: 7)
        for i in 7..<12 { try second.output(Array("line \(i)\r\n".utf8), at: Double(i)) }
        try second.finish(exit: "exit status 0", at: 12)
        let checked = RecordingVerifier.check(resumed, file: "r")
        XCTAssertEqual(checked.findings, [])
        XCTAssertEqual(checked.events, 6 + 1 + 5 + 1)
        XCTAssertNil(RecordingWriter.Continuation(resumed), "a finished recording is not continued")
    }

    /// A file moved through the terminal shows in its output as one of five fixed starts, split
    /// across reads or not; a transfer's repeated first header is one transfer.
    func testTheStartOfAFileTransferIsSpotted() {
        var spotter = TransferSpotter()
        XCTAssertEqual(spotter.scan(Array("ls: *.txt: no such file; a ** b :: c\r\n".utf8), at: 0), [])
        let trzsz = Array("\u{1b}7::TRZSZ:TRANSFER:S:1.1.7:96653441706000:54155\r\r\n".utf8)
        XCTAssertEqual(spotter.scan(Array(trzsz.prefix(12)), at: 1), [])
        XCTAssertEqual(spotter.scan(Array(trzsz.dropFirst(12)), at: 1), [.init(protocolName: "trzsz", direction: "download")])
        let zrqinit: [UInt8] = Array("rz\r**".utf8) + [0x18] + Array("B00000000000000\r".utf8) + [0x8a, 0x11]
        XCTAssertEqual(spotter.scan(zrqinit, at: 2), [.init(protocolName: "zmodem", direction: "download")])
        XCTAssertEqual(spotter.scan(zrqinit, at: 5), [], "sz repeats its first header while it waits")
        XCTAssertEqual(spotter.scan(zrqinit, at: 13), [.init(protocolName: "zmodem", direction: "download")], "a later one is another")
        XCTAssertEqual(spotter.scan(Array("::TRZSZ:TRANSFER:R:1.1.7:1:2\r\n".utf8) + Array("**".utf8) + [0x18] + Array("B0100000023be50".utf8), at: 20),
                       [.init(protocolName: "trzsz", direction: "upload"), .init(protocolName: "zmodem", direction: "upload")])
    }

    func testWhatIsNotARecordingIsSaidSo() {
        XCTAssertEqual(RecordingVerifier.check(Array("{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 0}\n".utf8), file: "x").findings.map(\.problem),
                       ["no hash chain (not a Cloister recording)"])
        XCTAssertEqual(RecordingVerifier.check(Array("hello\n".utf8), file: "x").findings.map(\.problem), ["not an asciicast v2 header"])
    }

    func testASplitCharacterWaitsForItsRest() {
        var splitter = UTF8Splitter()
        let rocket = Array("🚀".utf8)
        XCTAssertEqual(splitter.text(Array(rocket[0..<1])), "")
        XCTAssertEqual(splitter.text(Array(rocket[1..<3])), "")
        XCTAssertEqual(splitter.text(Array(rocket[3...]) + [0x41]), "🚀A")
        XCTAssertEqual(splitter.text([0xff, 0x42]), "\u{fffd}B", "a byte that is not UTF-8 is drawn as U+FFFD")
        XCTAssertEqual(splitter.text([0xe4, 0xb8]), "")
        XCTAssertEqual(splitter.flush(), "\u{fffd}", "an incomplete character at the very end")
    }
}
