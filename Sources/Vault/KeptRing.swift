import CShim
import NIOCore
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A session's output ring and everything a new vault needs to adopt the session, in one
/// memory file: the vault maps it shared and writable, and the supervisor keeps a descriptor
/// of it (never mapped, never read) with the session's PTY master, so both outlive the vault.
/// Pages are taken as output arrives; the file's size is sealed, so its holder cannot
/// truncate it under the vault's mapping.
///
/// The stream is numbered from 0; the ring holds its last `capacity` bytes at
/// `offset % dataSize`, with one read's worth more (`dataSize = capacity + maxRead`) so that a
/// read in progress never overwrites what the ring still holds.
///
/// **No byte lost to a vault killed mid-read.** The terminal is read straight into the
/// mapping, so the bytes of a read are in the memory file the moment read(2) returns. Before
/// each read the vault journals where it reads and how much (never more than TIOCINQ says is
/// waiting, so the read returns all of it or fails) and fills that place with a pattern drawn
/// from a secret key and the offset; after the read it advances `end` and clears the journal.
/// A vault killed between the read and the commit leaves a journal whose place no longer holds
/// the pattern: the next vault commits it. One that still holds the pattern was not read (the
/// bytes still wait in the terminal), or the shell wrote exactly the pattern: a chance of one
/// in 2^(8·n) for a read of n bytes.
///
/// Everything here belongs to the vault's event loop.
final class KeptRing: @unchecked Sendable {
    /// The layout's version: a vault adopts only the format it writes.
    static let format = StateFormats.keptRing
    static let magic: UInt64 = 0x5254_5349_4f4c_4301  // "\u{1}CLOISTR", little-endian
    static let headerSize = 1024
    /// The most one read of a PTY master returns (the line discipline's buffer).
    static let maxRead = 4096
    /// Longest id or secret kept.
    static let tokenField = 63

    /// Who the session is: kept in the header, given back to the vault that adopts it.
    struct Identity: Equatable {
        var id: String
        var writeSecret: String
        var readSecret: String
        var shell: Int32
        /// Seconds since the epoch when the session started (a monotonic clock does not
        /// survive the process).
        var created: UInt64
    }

    private enum Field: Int {
        case magic = 0, format = 8, headerSize = 12, capacity = 16, dataSize = 24, end = 32
        case journalOffset = 40, journalLength = 48, patternKey = 56, shell = 64, adoptions = 68
        case created = 72, writerHold = 80, id = 96, writeSecret = 160, readSecret = 224
        /// `inputStreams` entries of `InputEntry`.
        case inputTable = 512
    }

    /// Writers' input streams (`AttachRequest.inputStream`) and how many bytes of each the
    /// terminal took, so that a writer resuming through a new vault sends exactly what is
    /// missing. The least recently used entry makes room for a new stream.
    static let inputStreams = 8
    private enum InputEntry: Int {
        case count = 0, lastUse = 8, length = 16, name = 17
        static let size = 48
    }

    let descriptor: SystemPackage.FileDescriptor
    let capacity: Int
    let dataSize: Int
    private let base: UnsafeMutableRawPointer
    private let length: Int

    private init(descriptor: SystemPackage.FileDescriptor, base: UnsafeMutableRawPointer, length: Int, capacity: Int) {
        self.descriptor = descriptor
        self.base = base
        self.length = length
        self.capacity = capacity
        dataSize = capacity + Self.maxRead
    }

    deinit {
        munmap(base, length)
        try? descriptor.close()
    }

    /// The memory file's size for a ring of `capacity`.
    static func fileSize(capacity: Int) -> Int { headerSize + capacity + maxRead }

    /// A new, empty ring for a new session, in `descriptor` (taking ownership of it): a memory
    /// file of `fileSize(capacity:)` bytes, its size sealed, that the nursery made for it.
    static func create(in descriptor: SystemPackage.FileDescriptor, capacity: Int, identity: Identity) throws(SystemCallError) -> KeptRing {
        precondition(capacity > 0)
        let length = fileSize(capacity: capacity)
        var status = stat()
        guard fstat(descriptor.rawValue, &status) == 0 else {
            let error = SystemCallError(call: "fstat", errno: Errno(rawValue: errno))
            try? descriptor.close()
            throw error
        }
        guard Int(status.st_size) == length else {
            try? descriptor.close()
            throw SystemCallError(call: "fstat", errno: .invalidArgument, detail: "the session's state file has \(status.st_size) bytes, not \(length)")
        }
        guard let mapping = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0), mapping != MAP_FAILED else {
            let error = SystemCallError(call: "mmap", errno: Errno(rawValue: errno))
            try? descriptor.close()
            throw error
        }
        let ring = KeptRing(descriptor: descriptor, base: mapping, length: length, capacity: capacity)
        ring[.format, UInt32.self] = format
        ring[.headerSize, UInt32.self] = UInt32(headerSize)
        ring[.capacity, UInt64.self] = UInt64(capacity)
        ring[.dataSize, UInt64.self] = UInt64(ring.dataSize)
        ring[.patternKey, UInt64.self] = (try? randomBytes(8)).map { $0.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } } ?? 0
        ring[.shell, Int32.self] = identity.shell
        ring[.created, UInt64.self] = identity.created
        ring[.writerHold, UInt64.self] = .max
        ring.setToken(.id, identity.id)
        ring.setToken(.writeSecret, identity.writeSecret)
        ring.setToken(.readSecret, identity.readSecret)
        // Last: a file without its magic is never adopted.
        ring[.magic, UInt64.self] = magic
        return ring
    }

    /// Why a kept file cannot be adopted.
    enum AdoptionError: Error, CustomStringConvertible {
        case system(SystemCallError)
        case notKept(String)
        case format(found: UInt32)

        var description: String {
            switch self {
            case .system(let error): return "\(error)"
            case .notKept(let why): return "not a kept session: \(why)"
            case .format(let found): return "kept in format \(found); this build adopts format \(KeptRing.format) only"
            }
        }
    }

    /// Maps a ring a previous vault kept (taking ownership of `descriptor`), checks its layout
    /// and finishes a read that vault had journaled.
    static func adopt(_ descriptor: SystemPackage.FileDescriptor) throws(AdoptionError) -> KeptRing {
        var status = stat()
        guard fstat(descriptor.rawValue, &status) == 0 else {
            let error = SystemCallError(call: "fstat", errno: Errno(rawValue: errno))
            try? descriptor.close()
            throw .system(error)
        }
        let length = Int(status.st_size)
        guard length > fileSize(capacity: 0) else {
            try? descriptor.close()
            throw .notKept("\(length) bytes")
        }
        guard let mapping = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0), mapping != MAP_FAILED else {
            let error = SystemCallError(call: "mmap", errno: Errno(rawValue: errno))
            try? descriptor.close()
            throw .system(error)
        }
        let header = UnsafeRawPointer(mapping)
        // Checked before a ring exists, whose deinit would unmap and close.
        func field<T: FixedWidthInteger>(_ f: Field, _: T.Type) -> T { header.load(fromByteOffset: f.rawValue, as: T.self) }
        let problem: AdoptionError? =
            if field(.magic, UInt64.self) != magic { .notKept("no magic") }
            else if field(.format, UInt32.self) != format { .format(found: field(.format, UInt32.self)) }
            else if field(.headerSize, UInt32.self) != UInt32(headerSize) { .notKept("header of \(field(.headerSize, UInt32.self)) bytes") }
            else if field(.capacity, UInt64.self) == 0 || fileSize(capacity: Int(clamping: field(.capacity, UInt64.self))) != length
                || field(.dataSize, UInt64.self) != field(.capacity, UInt64.self) + UInt64(maxRead) {
                .notKept("capacity \(field(.capacity, UInt64.self)) in \(length) bytes")
            } else { nil }
        if let problem {
            munmap(mapping, length)
            try? descriptor.close()
            throw problem
        }
        let ring = KeptRing(descriptor: descriptor, base: mapping, length: length, capacity: Int(field(.capacity, UInt64.self)))
        ring.recoverJournal()
        ring[.adoptions, UInt32.self] &+= 1
        return ring
    }

    // MARK: The header

    private subscript<T: FixedWidthInteger>(field: Field, _: T.Type) -> T {
        get { base.load(fromByteOffset: field.rawValue, as: T.self) }
        set { base.storeBytes(of: newValue, toByteOffset: field.rawValue, as: T.self) }
    }

    private func setToken(_ field: Field, _ token: String) {
        let bytes = Array(token.utf8.prefix(Self.tokenField))
        base.storeBytes(of: UInt8(bytes.count), toByteOffset: field.rawValue, as: UInt8.self)
        bytes.withUnsafeBytes { (base + field.rawValue + 1).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    private func token(_ field: Field) -> String {
        let count = min(Int(base.load(fromByteOffset: field.rawValue, as: UInt8.self)), Self.tokenField)
        return String(decoding: UnsafeRawBufferPointer(start: base + field.rawValue + 1, count: count), as: UTF8.self)
    }

    var identity: Identity {
        Identity(id: token(.id), writeSecret: token(.writeSecret), readSecret: token(.readSecret), shell: self[.shell, Int32.self],
                 created: self[.created, UInt64.self])
    }

    /// How many vaults have adopted this session.
    var adoptions: UInt32 { self[.adoptions, UInt32.self] }

    /// The offset of the next byte the shell will write.
    private(set) var end: UInt64 {
        get { self[.end, UInt64.self] }
        set { self[.end, UInt64.self] = newValue }
    }

    /// The oldest byte held.
    var start: UInt64 { end > UInt64(capacity) ? end - UInt64(capacity) : 0 }
    var heldBytes: Int { Int(end - start) }

    /// The slowest writer's cursor when the vault last looked (nil: no writer): the bytes
    /// from there on are never overwritten, and a vault that adopts the session holds its
    /// shell back as the writer's terminal did, until the writer is back.
    var writerHold: UInt64? {
        get { self[.writerHold, UInt64.self] == .max ? nil : self[.writerHold, UInt64.self] }
        set { self[.writerHold, UInt64.self] = newValue ?? .max }
    }

    private var data: UnsafeMutableRawPointer { base + Self.headerSize }

    // MARK: Writers' input

    private func entry(_ slot: Int) -> UnsafeMutableRawPointer { base + Field.inputTable.rawValue + slot * InputEntry.size }

    /// The entry of input stream `name` (at most `LinkLimits.inputStream` bytes), made if it
    /// is new, in place of the least recently used one.
    func inputSlot(for name: [UInt8]) -> Int {
        precondition(name.count <= InputEntry.size - InputEntry.name.rawValue)
        var use: UInt64 = 0
        for slot in 0..<Self.inputStreams {
            use = max(use, entry(slot).load(fromByteOffset: InputEntry.lastUse.rawValue, as: UInt64.self))
        }
        var chosen = 0, oldest = UInt64.max
        for slot in 0..<Self.inputStreams {
            let e = entry(slot)
            let length = Int(e.load(fromByteOffset: InputEntry.length.rawValue, as: UInt8.self))
            if length == name.count, name.withUnsafeBytes({ memcmp($0.baseAddress!, e + InputEntry.name.rawValue, length) == 0 }) {
                e.storeBytes(of: use + 1, toByteOffset: InputEntry.lastUse.rawValue, as: UInt64.self)
                return slot
            }
            let last = e.load(fromByteOffset: InputEntry.lastUse.rawValue, as: UInt64.self)
            if last < oldest { (chosen, oldest) = (slot, last) }
        }
        let e = entry(chosen)
        e.storeBytes(of: 0, toByteOffset: InputEntry.count.rawValue, as: UInt64.self)
        e.storeBytes(of: use + 1, toByteOffset: InputEntry.lastUse.rawValue, as: UInt64.self)
        e.storeBytes(of: UInt8(name.count), toByteOffset: InputEntry.length.rawValue, as: UInt8.self)
        name.withUnsafeBytes { (e + InputEntry.name.rawValue).copyMemory(from: $0.baseAddress!, byteCount: name.count) }
        return chosen
    }

    /// Bytes of the stream in `slot` the terminal has taken.
    func inputCount(_ slot: Int) -> UInt64 { entry(slot).load(fromByteOffset: InputEntry.count.rawValue, as: UInt64.self) }

    /// The terminal took `count` more bytes of the stream in `slot`. Stored right after the
    /// write returned: a vault killed between the two leaves those bytes uncounted, and the
    /// writer sends them again.
    func inputWritten(_ slot: Int, count: Int) {
        entry(slot).storeBytes(of: inputCount(slot) + UInt64(count), toByteOffset: InputEntry.count.rawValue, as: UInt64.self)
    }

    // MARK: The shell's side

    enum TerminalRead: Equatable {
        /// Bytes were read and committed.
        case read(Int)
        /// Nothing waits.
        case wouldBlock
        /// The ring has no room: a writer has a whole ring still to read.
        case full
        /// The terminal is gone (EIO once every process closed it), with the errno.
        case closed(Int32)
    }

    /// One read of terminal `fd` into the ring, never over bytes from `keep` on (a writer's
    /// cursor) and never over what the ring holds, journaled as the type explains.
    func read(terminal fd: CInt, keep: UInt64?) -> TerminalRead {
        guard let wanted = prepareRead(terminal: fd, keep: keep) else { return .full }
        let outcome = performRead(terminal: fd, wanted: wanted)
        commit(outcome)
        return outcome
    }

    /// The journal's first half: how much to read, with the place journaled and filled with
    /// the pattern. Nil when the ring has no room.
    func prepareRead(terminal fd: CInt, keep: UInt64?) -> Int? {
        let position = Int(end % UInt64(dataSize))
        let room = keep.map { Int(clamping: Int64($0) + Int64(capacity) - Int64(end)) } ?? capacity
        guard room > 0 else { return nil }
        // A read no larger than what waits returns all of it; with nothing waiting (or the
        // count refused), one byte, which tells a closed terminal from an empty one.
        let waiting = max(1, Int(cloister_bytes_readable(fd)))
        let wanted = min(waiting, dataSize - position, Self.maxRead, room)
        journal(at: end, length: wanted)
        return wanted
    }

    /// The read itself, into the journaled place.
    func performRead(terminal fd: CInt, wanted: Int) -> TerminalRead {
        let position = Int(end % UInt64(dataSize))
        do {
            let count = try valueOrErrno("read") { Glibc.read(fd, data + position, wanted) }
            // End of file on a terminal: the shell's side is gone, as EIO says it otherwise.
            return count > 0 ? .read(count) : .closed(EIO)
        } catch {
            return error.errno == .resourceTemporarilyUnavailable ? .wouldBlock : .closed(error.errno.rawValue)
        }
    }

    /// The journal's second half: what was read is in the stream, the journal cleared.
    func commit(_ outcome: TerminalRead) {
        if case .read(let count) = outcome { end += UInt64(count) }
        self[.journalLength, UInt64.self] = 0
    }

    private func journal(at offset: UInt64, length: Int) {
        fillPattern(at: offset, length: length)
        self[.journalOffset, UInt64.self] = offset
        self[.journalLength, UInt64.self] = UInt64(length)
    }

    /// The pattern a journaled read's place holds until the read lands: xorshift64 from the
    /// session's secret key and the offset.
    private func pattern(at offset: UInt64, length: Int, _ body: (Int, UInt8) -> Bool) -> Bool {
        var state = (self[.patternKey, UInt64.self] ^ offset) &* 0x9E37_79B9_7F4A_7C15 | 1
        var word: UInt64 = 0
        for i in 0..<length {
            if i % 8 == 0 {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                word = state
            }
            guard body(i, UInt8(truncatingIfNeeded: word >> (UInt64(i % 8) * 8))) else { return false }
        }
        return true
    }

    private func fillPattern(at offset: UInt64, length: Int) {
        let place = data + Int(offset % UInt64(dataSize))
        _ = pattern(at: offset, length: length) { i, byte in
            place.storeBytes(of: byte, toByteOffset: i, as: UInt8.self)
            return true
        }
    }

    /// A journal left by a vault that was killed: commits the read if its bytes landed.
    private func recoverJournal() {
        let length = Int(clamping: self[.journalLength, UInt64.self])
        let offset = self[.journalOffset, UInt64.self]
        defer { self[.journalLength, UInt64.self] = 0 }
        let position = Int(offset % UInt64(dataSize))
        guard length > 0, length <= Self.maxRead, offset == end, position + length <= dataSize else { return }
        let place = data + position
        let untouched = pattern(at: offset, length: length) { i, byte in place.load(fromByteOffset: i, as: UInt8.self) == byte }
        if !untouched { end += UInt64(length) }
    }

    /// Output written without a terminal, as a read of that many bytes would: the recording
    /// notice before a new session's first byte (and the tests' output).
    func append(_ bytes: [UInt8]) {
        var rest = bytes[...]
        while !rest.isEmpty {
            let position = Int(end % UInt64(dataSize))
            let count = min(rest.count, dataSize - position)
            rest.prefix(count).withUnsafeBytes { (data + position).copyMemory(from: $0.baseAddress!, byteCount: count) }
            end += UInt64(count)
            rest = rest.dropFirst(count)
        }
    }

    // MARK: The clients' side

    /// The held bytes from `offset` (at least `start`), at most `limit`, as they lie in the
    /// mapping: one region, or two where the ring wraps. For the recorder's feed, which sends
    /// them as they are, without a copy. Nil when there is nothing from there.
    func withRegions<T>(from offset: UInt64, limit: Int, _ body: (_ offset: UInt64, UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> T) -> T? {
        let from = max(offset, start)
        guard from < end else { return nil }
        let count = Int(min(UInt64(limit), end - from))
        let position = Int(from % UInt64(dataSize))
        let first = min(count, dataSize - position)
        return body(from, UnsafeRawBufferPointer(start: data + position, count: first),
                    UnsafeRawBufferPointer(start: data, count: count - first))
    }

    /// What a cursor at `offset` reads next: up to `limit` bytes, starting at `offset` or, if
    /// the ring no longer holds it, at the oldest byte held (`skipped` says how many were
    /// lost). Nil when there is nothing new. The bytes are copied out of the mapping.
    func read(from offset: UInt64, limit: Int) -> (offset: UInt64, bytes: ByteBuffer, skipped: UInt64)? {
        withRegions(from: offset, limit: limit) { from, first, second in
            var buffer = ByteBufferAllocator().buffer(capacity: first.count + second.count)
            buffer.writeBytes(first)
            buffer.writeBytes(second)
            return (from, buffer, from - offset)
        }
    }
}
