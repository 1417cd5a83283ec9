/// The most recent part of a session's output: one byte stream numbered from 0, of which the
/// last `capacity` bytes (at least) are kept. Memory is taken as output arrives, chunk by
/// chunk, never reserved up front; the oldest chunks are dropped when more than `capacity`
/// would be held. Every attached client is a cursor (an offset) into the stream and reads
/// from here, so nothing is copied per client until it is sent.
struct OutputRing {
    let capacity: Int
    private var chunks: [[UInt8]] = []
    /// Where `chunks` start in the stream (the oldest byte held).
    private(set) var start: UInt64 = 0
    /// The offset of the next byte the shell will write.
    private(set) var end: UInt64 = 0
    private var held = 0
    /// Index of the first chunk still held (chunks before it were dropped; compacted lazily).
    private var first = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    var heldBytes: Int { held }

    /// Adds output. Whole chunks are dropped from the front while the rest still covers the
    /// capacity, but never one that ends after `keep` (a writer's cursor: writers are not
    /// skipped, they hold the shell back instead).
    mutating func append(_ bytes: [UInt8], keep: UInt64? = nil) {
        guard !bytes.isEmpty else { return }
        chunks.append(bytes)
        held += bytes.count
        end += UInt64(bytes.count)
        while first < chunks.count - 1, held - chunks[first].count >= capacity,
              keep.map({ start + UInt64(chunks[first].count) <= $0 }) ?? true {
            held -= chunks[first].count
            start += UInt64(chunks[first].count)
            chunks[first] = []
            first += 1
        }
        if first > 64 && first * 2 > chunks.count {
            chunks.removeFirst(first)
            first = 0
        }
    }

    /// What a cursor at `offset` reads next: up to `limit` bytes, starting at `offset` or, if
    /// the ring no longer holds it, at the oldest byte held (`skipped` says how many were
    /// lost). Nil when there is nothing new.
    func read(from offset: UInt64, limit: Int) -> (offset: UInt64, bytes: [UInt8], skipped: UInt64)? {
        let from = max(offset, start)
        guard from < end else { return nil }
        var bytes: [UInt8] = []
        var position = start
        for chunk in chunks[first...] {
            let chunkEnd = position + UInt64(chunk.count)
            if chunkEnd > from {
                let lower = Int(from > position ? from - position : 0)
                let take = min(chunk.count - lower, limit - bytes.count)
                if bytes.isEmpty && lower == 0 && take == chunk.count { bytes = chunk } else { bytes += chunk[lower..<lower + take] }
                if bytes.count >= limit { break }
            }
            position = chunkEnd
        }
        return (from, bytes, from - offset)
    }
}
