import FoundationEssentials

/// Writes one session's recording: the header, the events, and the hash chain's checkpoints
/// (a marker `cloister-chain N HEX`, HEX the link after the N lines before it) every
/// `checkpointEvery` events and at the end (`cloister-chain-end N HEX`). Each checkpoint's
/// link is also handed to `checkpointed`, for the audit trail: a recording cut after it can
/// then be compared with what left the host. Lines go to `write` as they are made.
public final class RecordingWriter {
    public static let checkpointPrefix = "cloister-chain "
    public static let endPrefix = "cloister-chain-end "

    private var chain: HashChain
    private var splitter = UTF8Splitter()
    private var sinceCheckpoint = 0
    private let checkpointEvery: Int
    private let write: ([UInt8]) throws -> Void
    private let checkpointed: (_ lines: Int, _ head: String) -> Void
    public private(set) var finished = false
    /// The link after the header line: what the next recording of the directory names as its
    /// previous (known as soon as the recording begins, so recordings that overlap in time
    /// still form one sequence).
    public private(set) var headerLink = ""

    public init(header: Asciicast.Header, checkpointEvery: Int = 256, write: @escaping ([UInt8]) throws -> Void,
                checkpointed: @escaping (Int, String) -> Void = { _, _ in }) throws {
        self.checkpointEvery = max(1, checkpointEvery)
        self.write = write
        self.checkpointed = checkpointed
        chain = HashChain(previous: header.cloister.flatMap { HashChain.bytes(hex: $0.previous) } ?? [])
        try line(header.line)
        headerLink = chain.hex
    }

    /// What an unfinished recording holds, to go on with it: the length of its complete
    /// lines (a line cut short by a recorder that died mid-write is dropped), its header,
    /// the chain over those lines and the events since its last checkpoint. Nil when it is
    /// not a recording begun by a writer, or is already finished.
    public struct Continuation: Sendable {
        public var keptBytes: Int
        public var header: Asciicast.Header
        public var lastTime: Double
        fileprivate var chain: HashChain
        fileprivate var sinceCheckpoint: Int
        fileprivate var headerLink: String

        public init?(_ contents: [UInt8]) {
            guard let end = contents.lastIndex(of: 0x0a) else { return nil }
            let lines = contents[...end].split(separator: 0x0a)
            guard let first = lines.first, let header = try? JSONDecoder().decode(Asciicast.Header.self, from: Data(first)),
                  let cloister = header.cloister, var chain = HashChain.afterHeader(Array(first), previous: cloister.previous) else { return nil }
            headerLink = chain.hex
            var since = 0, last = 0.0
            for line in lines.dropFirst() {
                if let event = Asciicast.Event.parse(line) {
                    if event.code == "m" && event.data.hasPrefix(RecordingWriter.endPrefix) { return nil }
                    since = event.code == "m" && event.data.hasPrefix(RecordingWriter.checkpointPrefix) ? 0 : since + 1
                    last = max(last, event.time)
                }
                chain.add(Array(line))
            }
            (keptBytes, self.header, lastTime, self.chain, sinceCheckpoint) = (end + 1, header, last, chain, since)
        }
    }

    /// Goes on with a recording after its `continuation.keptBytes` bytes.
    public init(continuing continuation: Continuation, checkpointEvery: Int = 256, write: @escaping ([UInt8]) throws -> Void,
                checkpointed: @escaping (Int, String) -> Void = { _, _ in }) {
        self.checkpointEvery = max(1, checkpointEvery)
        (self.write, self.checkpointed) = (write, checkpointed)
        (chain, sinceCheckpoint, headerLink) = (continuation.chain, continuation.sinceCheckpoint, continuation.headerLink)
    }

    public func output(_ bytes: [UInt8], at seconds: Double) throws {
        let text = splitter.text(bytes)
        if !text.isEmpty { try event(seconds, "o", text) }
    }

    /// Typed input (the recorder writes it only when asked to, and never while the terminal
    /// does not echo).
    public func input(_ bytes: [UInt8], at seconds: Double) throws {
        try event(seconds, "i", String(decoding: bytes, as: UTF8.self))
    }

    public func resize(columns: Int, rows: Int, at seconds: Double) throws {
        try event(seconds, "r", "\(columns)x\(rows)")
    }

    public func marker(_ text: String, at seconds: Double) throws {
        try event(seconds, "m", text)
    }

    /// The last marker (`exit`, e.g. "exit status 0"), then the final checkpoint; returns the
    /// last link, which the next recording names as its previous.
    @discardableResult
    public func finish(exit: String?, at seconds: Double) throws -> String {
        let rest = splitter.flush()
        if !rest.isEmpty { try event(seconds, "o", rest) }
        if let exit { try event(seconds, "m", exit) }
        // The last link is the one the final checkpoint names: every line before it.
        let (count, head) = (chain.count, chain.hex)
        try line(Asciicast.Event(time: seconds, code: "m", data: Self.endPrefix + "\(count) \(head)").line)
        finished = true
        checkpointed(count, head)
        return head
    }

    private func event(_ seconds: Double, _ code: String, _ data: String) throws {
        precondition(!finished, "an event after the recording's end")
        try line(Asciicast.Event(time: seconds, code: code, data: data).line)
        sinceCheckpoint += 1
        if sinceCheckpoint >= checkpointEvery {
            sinceCheckpoint = 0
            let (count, head) = (chain.count, chain.hex)
            try line(Asciicast.Event(time: seconds, code: "m", data: Self.checkpointPrefix + "\(count) \(head)").line)
            checkpointed(count, head)
        }
    }

    private func line(_ bytes: [UInt8]) throws {
        var bytes = bytes
        bytes.append(0x0a)
        try write(bytes)
        bytes.withUnsafeBytes { chain.add(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
    }
}
