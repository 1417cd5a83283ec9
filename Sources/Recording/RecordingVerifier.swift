import FoundationEssentials

/// Checks recordings against their hash chains: a changed, removed, inserted or reordered line
/// breaks the first checkpoint after it; a recording cut before its final checkpoint has no
/// end; a recording missing from a directory breaks the sequence (and the next one's link to
/// it). What this cannot see: a whole directory, or the newest recordings at its end, erased
/// by someone who may (root can) leaves a shorter sequence that checks; the checkpoints sent
/// to the audit trail, once off the host, are what shows that.
public enum RecordingVerifier {
    public struct Finding: Sendable, Equatable, CustomStringConvertible {
        public var file: String
        /// The line (1 is the header) where the problem shows, or 0 for the whole file.
        public var line: Int
        public var problem: String
        public var description: String { line > 0 ? "\(file):\(line): \(problem)" : "\(file): \(problem)" }
    }

    /// What one recording says of itself once checked.
    public struct Checked: Sendable {
        public var file: String
        public var header: Asciicast.Header?
        /// The last link, when the recording ends with its final checkpoint and every
        /// checkpoint holds.
        public var last: String?
        /// The link after the header line, which the next recording names as its previous.
        public var headerLink: String?
        public var findings: [Finding]
        public var duration: Double
        public var events: Int
    }

    public static func check(_ contents: [UInt8], file: String) -> Checked {
        var result = Checked(file: file, header: nil, last: nil, headerLink: nil, findings: [], duration: 0, events: 0)
        func fail(_ line: Int, _ problem: String) { result.findings.append(Finding(file: file, line: line, problem: problem)) }
        var lines = contents.split(separator: 0x0a, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() } else if !contents.isEmpty {
            fail(lines.count, "the last line is cut short (no newline)")
        }
        guard let first = lines.first, let header = try? JSONDecoder().decode(Asciicast.Header.self, from: Data(first)) else {
            fail(1, "not an asciicast v2 header")
            return result
        }
        result.header = header
        guard header.version == 2 else {
            fail(1, "asciicast version \(header.version), not 2")
            return result
        }
        guard let cloister = header.cloister else {
            fail(1, "no hash chain (not a Cloister recording)")
            return result
        }
        guard var chain = HashChain.afterHeader(Array(first), previous: cloister.previous) else {
            fail(1, "the previous link is not a SHA-256 in hex")
            return result
        }
        result.headerLink = chain.hex
        var ended = false
        var lastTime = 0.0
        var brokenAt: Int?
        for (index, line) in lines.enumerated().dropFirst() {
            let number = index + 1
            guard let event = Asciicast.Event.parse(line) else {
                fail(number, "not an asciicast event")
                chain.add(Array(line))
                continue
            }
            if ended {
                fail(number, "an event after the final checkpoint")
            }
            if event.time < lastTime { fail(number, "time goes back (\(event.time) after \(lastTime))") }
            lastTime = max(lastTime, event.time)
            if event.code == "m", let (count, head, final) = checkpoint(event.data) {
                if count != chain.count || head != chain.hex {
                    if brokenAt == nil {
                        brokenAt = number
                        fail(number, "the hash chain breaks before this checkpoint (a line before it, after the previous checkpoint, was changed, removed, added or moved)")
                    }
                }
                ended = final
            } else {
                result.events += 1
            }
            chain.add(Array(line))
        }
        result.duration = lastTime
        if !ended {
            fail(lines.count, "no final checkpoint: the recording was cut short after line \(lines.count), or its recorder stopped")
        } else if brokenAt == nil {
            // The final checkpoint's link covers every line before it: the recording's last link.
            if let line = lines.last, let event = Asciicast.Event.parse(line), let (_, head, _) = checkpoint(event.data) {
                result.last = head
            }
        }
        return result
    }

    /// Every recording in `files` (name, contents) as one directory's sequence: each checked,
    /// then their sequence numbers and links from one to the next. The sequence may begin
    /// after 1: retention deletes the oldest recordings (each deletion is audited).
    public static func check(directory files: [(name: String, contents: [UInt8])]) -> [Checked] {
        var checked = files.map { check($0.contents, file: $0.name) }
        let ordered = checked.indices.filter { checked[$0].header?.cloister != nil }
            .sorted { checked[$0].header!.cloister!.sequence < checked[$1].header!.cloister!.sequence }
        var expected = ordered.first.map { checked[$0].header!.cloister!.sequence } ?? 1
        var previous: String?
        for index in ordered {
            let cloister = checked[index].header!.cloister!
            if cloister.sequence != expected {
                let missing = cloister.sequence > expected ? "recording \(expected)\(cloister.sequence - 1 > expected ? "–\(cloister.sequence - 1)" : "") of the sequence is missing"
                    : "sequence number \(cloister.sequence) appears twice"
                checked[index].findings.append(Finding(file: checked[index].file, line: 1, problem: missing))
            } else if let previous, cloister.previous != previous {
                checked[index].findings.append(Finding(file: checked[index].file, line: 1,
                                                       problem: "its previous link is not the header link of recording \(cloister.sequence - 1)"))
            }
            expected = max(expected, cloister.sequence) + 1
            previous = checked[index].headerLink
        }
        return checked
    }

    /// A checkpoint marker's count and link, and whether it is the final one.
    static func checkpoint(_ data: String) -> (Int, String, Bool)? {
        let final = data.hasPrefix(RecordingWriter.endPrefix)
        guard final || data.hasPrefix(RecordingWriter.checkpointPrefix) else { return nil }
        let words = data.split(separator: " ")
        guard words.count == 3, let count = Int(words[1]), words[2].count == 64 else { return nil }
        return (count, String(words[2]), final)
    }
}
