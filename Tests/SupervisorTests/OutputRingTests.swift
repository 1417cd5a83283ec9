import NIOCore
import XCTest
@testable import Vault

/// The session ring on its own: offsets, what it keeps, what a cursor reads.
final class OutputRingTests: XCTestCase {
    private func bytes(_ n: Int, _ value: UInt8) -> ByteBuffer { ByteBuffer(repeating: value, count: n) }
    private func text(_ s: String) -> ByteBuffer { ByteBuffer(string: s) }

    func testOffsetsCountEveryByteAndReadsStartWhereAsked() {
        var ring = OutputRing(capacity: 100)
        XCTAssertNil(ring.read(from: 0, limit: 10), "nothing yet")
        ring.append(text("hello"))
        ring.append(ByteBuffer())
        ring.append(text(" world"))
        XCTAssertEqual(ring.end, 11)
        let all = ring.read(from: 0, limit: 100)
        XCTAssertEqual(all.map { String(buffer: $0.bytes) }, "hello world")
        XCTAssertEqual(all?.skipped, 0)
        let middle = ring.read(from: 3, limit: 4)
        XCTAssertEqual(middle.map { String(buffer: $0.bytes) }, "lo w", "across chunks, up to the limit")
        XCTAssertEqual(middle?.offset, 3)
        XCTAssertEqual(ring.read(from: 5, limit: 100).map { String(buffer: $0.bytes) }, " world", "a caught-up cursor gets the last chunk")
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
        XCTAssertEqual(late?.bytes.readableBytes, Int(ring.end - ring.start))
    }

    func testAWritersCursorIsNeverDropped() {
        var ring = OutputRing(capacity: 100)
        for i in 0..<10 { ring.append(bytes(40, UInt8(i)), keep: 40) }
        XCTAssertLessThanOrEqual(ring.start, 40, "the bytes from the writer's cursor on are all kept")
        XCTAssertEqual(ring.read(from: 40, limit: 1000)?.skipped, 0)
        XCTAssertEqual(ring.read(from: 40, limit: 1000)?.bytes.readableBytes, 360)
    }

    /// Many small chunks, as an interactive session leaves them: a cursor anywhere reads
    /// exactly the bytes from there, and the ring stays bounded while chunks come and go.
    func testReadsFromAnyOffsetInManySmallChunks() {
        var ring = OutputRing(capacity: 10_000)
        var stream: [UInt8] = []
        for i in 0..<5000 {
            let chunk = (0..<(1 + i % 7)).map { UInt8(truncatingIfNeeded: i &+ $0) }
            stream += chunk
            ring.append(ByteBuffer(bytes: chunk))
        }
        XCTAssertLessThan(ring.heldBytes, 10_000 + 8)
        for offset in stride(from: ring.start, to: ring.end, by: 997) {
            let read = ring.read(from: offset, limit: 300)
            XCTAssertEqual(read?.offset, offset)
            XCTAssertEqual(read.map { Array(buffer: $0.bytes) }, Array(stream[Int(offset)..<min(Int(offset) + 300, stream.count)]))
        }
    }
}
