import NIOCore

/// The most recent part of a session's output: one byte stream numbered from 0, of which the
/// last `capacity` bytes (at least) are kept. Memory is taken as output arrives, chunk by
/// chunk as the terminal was read, never reserved up front; the oldest chunks are dropped
/// when more than `capacity` would be held. Every attached client is a cursor (an offset)
/// into the stream and reads from here; a chunk is shared by every client it is sent to.
struct OutputRing {
    let capacity: Int
    /// A chunk held: the bytes of one terminal read and the stream offset they start at.
    private struct Chunk {
        var offset: UInt64
        var bytes: ByteBuffer
    }

    /// The chunks held, oldest first.
    private var chunks = CircularBuffer<Chunk>()
    /// Where `chunks` start in the stream (the oldest byte held).
    private(set) var start: UInt64 = 0
    /// The offset of the next byte the shell will write.
    private(set) var end: UInt64 = 0
    private(set) var heldBytes = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// A read of a few bytes into a large buffer (a prompt, an echo) is kept in a buffer of
    /// its own size: the ring would otherwise hold the whole read buffer for it.
    private static func compacted(_ bytes: ByteBuffer) -> ByteBuffer {
        guard bytes.capacity > 2 * bytes.readableBytes + 256 else { return bytes }
        var copy = ByteBufferAllocator().buffer(capacity: bytes.readableBytes)
        copy.writeImmutableBuffer(bytes)
        return copy
    }

    /// Adds output. Whole chunks are dropped from the front while the rest still covers the
    /// capacity, but never one that ends after `keep` (a writer's cursor: writers are not
    /// skipped, they hold the shell back instead).
    mutating func append(_ bytes: ByteBuffer, keep: UInt64? = nil) {
        guard bytes.readableBytes > 0 else { return }
        chunks.append(Chunk(offset: end, bytes: Self.compacted(bytes)))
        heldBytes += bytes.readableBytes
        end += UInt64(bytes.readableBytes)
        while chunks.count > 1, let oldest = chunks.first?.bytes, heldBytes - oldest.readableBytes >= capacity,
              keep.map({ start + UInt64(oldest.readableBytes) <= $0 }) ?? true {
            heldBytes -= oldest.readableBytes
            start += UInt64(oldest.readableBytes)
            chunks.removeFirst()
        }
    }

    /// The position in `chunks` of the chunk holding stream offset `position` (which the ring
    /// holds), found in logarithmic time: a client that catches up reads from anywhere in a
    /// ring of many small chunks.
    private func chunk(holding position: UInt64) -> Int {
        var (low, high) = (0, chunks.count - 1)
        while low < high {
            let middle = (low + high + 1) / 2
            if self[middle].offset <= position { low = middle } else { high = middle - 1 }
        }
        return low
    }

    private subscript(position: Int) -> Chunk {
        chunks[chunks.index(chunks.startIndex, offsetBy: position)]
    }

    /// What a cursor at `offset` reads next: up to `limit` bytes, starting at `offset` or, if
    /// the ring no longer holds it, at the oldest byte held (`skipped` says how many were
    /// lost). Nil when there is nothing new. A cursor that is caught up gets each chunk as it
    /// was read, without a copy; one that is behind gets small chunks joined into one buffer.
    func read(from offset: UInt64, limit: Int) -> (offset: UInt64, bytes: ByteBuffer, skipped: UInt64)? {
        let from = max(offset, start)
        guard from < end else { return nil }
        var position = chunk(holding: from)
        let bytes = self[position].bytes
        let lower = Int(from - self[position].offset)
        var first = bytes.getSlice(at: bytes.readerIndex + lower, length: min(bytes.readableBytes - lower, limit))!
        position += 1
        guard position < chunks.count, first.readableBytes < limit else { return (from, first, from - offset) }
        var joined = ByteBufferAllocator().buffer(capacity: min(limit, Int(end - from)))
        joined.writeBuffer(&first)
        while position < chunks.count, joined.readableBytes < limit {
            let chunk = self[position].bytes
            joined.writeImmutableBuffer(chunk.getSlice(at: chunk.readerIndex, length: min(chunk.readableBytes, limit - joined.readableBytes))!)
            position += 1
        }
        return (from, joined, from - offset)
    }
}
