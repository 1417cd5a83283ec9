import XCTest
@testable import Vault

/// The session ring on its own: offsets, what it keeps, what a cursor reads.
final class OutputRingTests: XCTestCase {
    private func bytes(_ n: Int, _ value: UInt8) -> [UInt8] { [UInt8](repeating: value, count: n) }

    func testOffsetsCountEveryByteAndReadsStartWhereAsked() {
        var ring = OutputRing(capacity: 100)
        XCTAssertNil(ring.read(from: 0, limit: 10), "nothing yet")
        ring.append(Array("hello".utf8))
        ring.append([])
        ring.append(Array(" world".utf8))
        XCTAssertEqual(ring.end, 11)
        let all = ring.read(from: 0, limit: 100)
        XCTAssertEqual(all.map { String(decoding: $0.bytes, as: UTF8.self) }, "hello world")
        XCTAssertEqual(all?.skipped, 0)
        let middle = ring.read(from: 3, limit: 4)
        XCTAssertEqual(middle.map { String(decoding: $0.bytes, as: UTF8.self) }, "lo w", "across chunks, up to the limit")
        XCTAssertEqual(middle?.offset, 3)
        XCTAssertNil(ring.read(from: 11, limit: 10), "nothing past the end")
    }

    func testOldChunksGoOnceTheRestCoversTheCapacity() {
        var ring = OutputRing(capacity: 100)
        for i in 0..<10 { ring.append(bytes(40, UInt8(i))) }
        XCTAssertEqual(ring.end, 400)
        XCTAssertGreaterThanOrEqual(ring.end - ring.start, 100, "at least the capacity is kept")
        XCTAssertLessThan(ring.heldBytes, 100 + 40, "and no more than a chunk beyond it")
        let late = ring.read(from: 0, limit: 1000)
        XCTAssertEqual(late?.offset, ring.start, "a cursor the ring dropped resumes at the oldest byte")
        XCTAssertEqual(late?.skipped, ring.start)
        XCTAssertEqual(late?.bytes.count, Int(ring.end - ring.start))
    }

    func testAWritersCursorIsNeverDropped() {
        var ring = OutputRing(capacity: 100)
        for i in 0..<10 { ring.append(bytes(40, UInt8(i)), keep: 40) }
        XCTAssertLessThanOrEqual(ring.start, 40, "the bytes from the writer's cursor on are all kept")
        XCTAssertEqual(ring.read(from: 40, limit: 1000)?.skipped, 0)
        XCTAssertEqual(ring.read(from: 40, limit: 1000)?.bytes.count, 360)
    }
}
