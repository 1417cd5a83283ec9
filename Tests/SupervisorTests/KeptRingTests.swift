import CShim
import NIOCore
import SystemPackage
import XCTest
@testable import Vault

#if canImport(Glibc)
import Glibc
#endif

/// The session ring in its memory file: offsets, what it keeps, what a cursor reads, reads
/// from a real descriptor, and what a vault after this one adopts, a read cut short by the
/// vault's death included.
final class KeptRingTests: XCTestCase {
    private let identity = KeptRing.Identity(id: "session-id", writeSecret: "write-secret", readSecret: "read-secret", shell: 4242,
                                             created: 1_700_000_000)

    /// A ring in a memory file made as the nursery makes it.
    private func ring(_ capacity: Int) throws -> KeptRing {
        var failed: UnsafePointer<CChar>?
        let fd = cloister_sized_memfd("test-ring", KeptRing.fileSize(capacity: capacity), &failed)
        XCTAssertGreaterThanOrEqual(fd, 0, failed.map { String(cString: $0) } ?? "")
        return try KeptRing.create(in: FileDescriptor(rawValue: fd), capacity: capacity, identity: identity)
    }

    /// The ring file's size is sealed: no holder (the supervisor, or any process it might
    /// reach) can truncate it under the vault's mapping, or lift the seals.
    func testNoHolderCanResizeTheRingFile() throws {
        let ring = try ring(100)
        let holder = dup(ring.descriptor.rawValue)
        defer { close(holder) }
        XCTAssertEqual(ftruncate(holder, 10), -1)
        XCTAssertEqual(errno, EPERM, "shrinking")
        XCTAssertEqual(ftruncate(holder, off_t(KeptRing.fileSize(capacity: 100) + 4096)), -1)
        XCTAssertEqual(errno, EPERM, "growing")
        // F_ADD_SEALS (F_LINUX_SPECIFIC_BASE + 9) of F_SEAL_WRITE: not in Glibc's Swift overlay.
        XCTAssertEqual(fcntl(holder, 1024 + 9, 0x0008), -1)
        XCTAssertEqual(errno, EPERM, "further seals")
        ring.append(Array("still here".utf8))
        XCTAssertEqual(text(ring.read(from: 0, limit: 100)), "still here")
    }

    func testAFileOfAnotherSizeIsRefused() throws {
        var failed: UnsafePointer<CChar>?
        let fd = cloister_sized_memfd("test-ring", KeptRing.fileSize(capacity: 100) + 1, &failed)
        XCTAssertThrowsError(try KeptRing.create(in: FileDescriptor(rawValue: fd), capacity: 100, identity: identity)) { error in
            XCTAssertTrue("\(error)".contains("not \(KeptRing.fileSize(capacity: 100))"), "\(error)")
        }
    }

    /// Writers' input streams: counted per name, kept through an adoption, the least recently
    /// used one replaced when a ninth arrives.
    func testInputStreamsAreCountedAndKeptForTheNextVault() throws {
        let ring = try ring(100)
        let a = ring.inputSlot(for: Array("client-a".utf8)), b = ring.inputSlot(for: Array("client-b".utf8))
        XCTAssertNotEqual(a, b)
        ring.inputWritten(a, count: 5)
        ring.inputWritten(a, count: 7)
        ring.inputWritten(b, count: 1)
        let next = try adopted(ring)
        XCTAssertEqual(next.inputSlot(for: Array("client-a".utf8)), a)
        XCTAssertEqual(next.inputCount(a), 12)
        XCTAssertEqual(next.inputCount(b), 1)
        // Eight more streams: "client-b", used least recently, is the one replaced.
        _ = next.inputSlot(for: Array("client-a".utf8))
        for i in 0..<7 { _ = next.inputSlot(for: Array("other-\(i)".utf8)) }
        XCTAssertEqual(next.inputCount(next.inputSlot(for: Array("client-a".utf8))), 12, "a used stream is kept")
        let fresh = next.inputSlot(for: Array("client-b".utf8))
        XCTAssertEqual(next.inputCount(fresh), 0, "a replaced stream starts again at 0")
    }

    private func text(_ read: (offset: UInt64, bytes: ByteBuffer, skipped: UInt64)?) -> String? { read.map { String(buffer: $0.bytes) } }

    /// What another process holding the descriptor would give the next vault.
    private func adopted(_ ring: KeptRing) throws -> KeptRing {
        try KeptRing.adopt(FileDescriptor(rawValue: dup(ring.descriptor.rawValue)))
    }

    private func pipe() -> (read: CInt, write: CInt) {
        var fds: [CInt] = [0, 0]
        XCTAssertEqual(Glibc.pipe(&fds), 0)
        XCTAssertEqual(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0)
        return (fds[0], fds[1])
    }

    func testOffsetsCountEveryByteAndReadsStartWhereAsked() throws {
        let ring = try ring(100)
        XCTAssertNil(ring.read(from: 0, limit: 10), "nothing yet")
        ring.append(Array("hello".utf8))
        ring.append([])
        ring.append(Array(" world".utf8))
        XCTAssertEqual(ring.end, 11)
        XCTAssertEqual(text(ring.read(from: 0, limit: 100)), "hello world")
        XCTAssertEqual(ring.read(from: 0, limit: 100)?.skipped, 0)
        XCTAssertEqual(text(ring.read(from: 3, limit: 4)), "lo w", "up to the limit")
        XCTAssertEqual(ring.read(from: 3, limit: 4)?.offset, 3)
        XCTAssertNil(ring.read(from: 11, limit: 10), "nothing past the end")
    }

    func testTheLastCapacityBytesAreHeldAcrossTheWrap() throws {
        let ring = try ring(100)
        var stream: [UInt8] = []
        for i in 0..<700 {
            let chunk = (0..<(1 + i % 13)).map { UInt8(truncatingIfNeeded: i &* 7 &+ $0) }
            stream += chunk
            ring.append(chunk)
        }
        XCTAssertEqual(ring.end, UInt64(stream.count))
        XCTAssertEqual(ring.heldBytes, 100, "exactly the capacity")
        let late = ring.read(from: 0, limit: 1000)
        XCTAssertEqual(late?.offset, ring.start, "a cursor the ring dropped resumes at the oldest byte")
        XCTAssertEqual(late?.skipped, ring.start)
        XCTAssertEqual(late.map { Array(buffer: $0.bytes) }, Array(stream.suffix(100)))
        for offset in ring.start..<ring.end {
            XCTAssertEqual(ring.read(from: offset, limit: 37).map { Array(buffer: $0.bytes) },
                           Array(stream[Int(offset)..<min(Int(offset) + 37, stream.count)]), "from \(offset), across the wrap")
        }
    }

    func testATerminalIsReadIntoTheRingAndAWritersCursorIsNeverOverwritten() throws {
        let ring = try ring(100)
        let (reader, writer) = pipe()
        defer { close(reader); close(writer) }
        XCTAssertEqual(ring.read(terminal: reader, keep: nil), .wouldBlock)
        let bytes = (0..<250).map { UInt8(truncatingIfNeeded: $0) }
        XCTAssertEqual(bytes.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }, 250)
        XCTAssertEqual(ring.read(terminal: reader, keep: 0), .read(100), "up to a ring past the writer's cursor")
        XCTAssertEqual(ring.read(terminal: reader, keep: 0), .full)
        XCTAssertEqual(ring.read(terminal: reader, keep: 60), .read(60))
        XCTAssertEqual(ring.read(terminal: reader, keep: nil), .read(90))
        XCTAssertEqual(ring.end, 250)
        XCTAssertEqual(ring.read(from: 150, limit: 1000).map { Array(buffer: $0.bytes) }, Array(bytes[150...]))
        close(writer)
        XCTAssertEqual(ring.read(terminal: reader, keep: nil), .closed(EIO), "end of file: the terminal is gone")
    }

    func testANewVaultAdoptsTheIdentityTheBytesAndTheWritersHold() throws {
        let ring = try ring(1000)
        ring.append(Array("prompt$ ".utf8))
        ring.writerHold = 3
        let next = try adopted(ring)
        XCTAssertEqual(next.identity, identity)
        XCTAssertEqual(next.end, 8)
        XCTAssertEqual(text(next.read(from: 0, limit: 100)), "prompt$ ")
        XCTAssertEqual(next.writerHold, 3)
        XCTAssertEqual(next.adoptions, 1)
        XCTAssertEqual(try adopted(next).adoptions, 2)
    }

    /// A vault killed after read(2) returned but before it counted the bytes: they are in the
    /// memory file, and the next vault counts them. One killed before the read: nothing is
    /// counted, and the bytes still wait in the terminal.
    func testAReadCutShortByTheVaultsDeathIsNeitherLostNorDoubled() throws {
        let (reader, writer) = pipe()
        defer { close(reader); close(writer) }
        let ring = try ring(1000)
        ring.append(Array("before|".utf8))
        XCTAssertEqual(Array("landed".utf8).withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }, 6)
        let wanted = try XCTUnwrap(ring.prepareRead(terminal: reader, keep: nil))
        XCTAssertEqual(wanted, 6, "no more than waits")
        XCTAssertEqual(ring.performRead(terminal: reader, wanted: wanted), .read(6))
        // Killed here: no commit.
        let next = try adopted(ring)
        XCTAssertEqual(text(next.read(from: 0, limit: 100)), "before|landed")

        XCTAssertEqual(Array("waiting".utf8).withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }, 7)
        XCTAssertEqual(next.prepareRead(terminal: reader, keep: nil), 7)
        // Killed before the read.
        let third = try adopted(next)
        XCTAssertEqual(text(third.read(from: 0, limit: 100)), "before|landed", "nothing counted that was not read")
        XCTAssertEqual(third.read(terminal: reader, keep: nil), .read(7))
        XCTAssertEqual(text(third.read(from: 0, limit: 100)), "before|landedwaiting", "read once, by the vault that adopted it")
    }

    func testAFileThatIsNoKeptRingIsRefused() throws {
        var failed: UnsafePointer<CChar>?
        let fd = cloister_sealed_memfd("not-a-ring", [UInt8](repeating: 7, count: 9000), 9000, &failed)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertThrowsError(try KeptRing.adopt(FileDescriptor(rawValue: fd))) { error in
            XCTAssertTrue("\(error)".contains("not a kept session") || "\(error)".contains("mmap"), "\(error)")
        }
    }
}
