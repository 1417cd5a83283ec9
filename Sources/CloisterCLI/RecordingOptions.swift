import ArgumentParser
import RoleProtocol
import Supervisor

/// `serve --record DIR` and what goes with it.
struct RecordingOptions: ParsableArguments {
    enum Failure: String, ExpressibleByArgument, CaseIterable { case gap, end }

    @Option(help: "Record every session into DIR (made mode 0750 if missing; it must be this server's user's and not writable by every user) as asciicast v2 files with a hash chain, written by the sandboxed recorder role. Off by default.")
    var record: String?
    @Flag(help: "With --record: typed input too, never while the terminal does not echo (a password prompt).")
    var recordInput = false
    @Option(help: "With --record: when the recorder cannot keep up or is restarting, gap (the default: the loss is marked in the recording and audited; the shell never waits) or end (the session ends, its clients told why).")
    var recordFailure: Failure = .gap
    @Option(help: "With --record: delete the oldest finished recordings while all of them take more than BYTES (a K, M or G suffix may follow); each deletion is audited.")
    var recordMaxSize: String?
    @Option(help: "With --record: delete finished recordings older than DAYS; each deletion is audited.")
    var recordMaxAge: Double?
    @Option(help: "With --record: shown at the start of every session, in the page and in cloister attach (at most 256 bytes, no control character); \"\" for none.")
    var recordNotice = Self.defaultNotice

    static let defaultNotice = "This session is recorded."

    /// The options as the vault and the directory take them; nil without --record (the others
    /// are then refused). Opens nothing.
    func checked() throws(ServeCommand.ConfigurationError) -> (path: String, terms: SessionSettings.Recording, retention: RecordingDirectory.Retention)? {
        guard let record else {
            let given = [recordInput ? "--record-input" : nil, recordFailure != .gap ? "--record-failure" : nil,
                         recordMaxSize != nil ? "--record-max-size" : nil, recordMaxAge != nil ? "--record-max-age" : nil,
                         recordNotice != Self.defaultNotice ? "--record-notice" : nil].compactMap { $0 }
            if let first = given.first { throw .init(option: first, problem: "needs --record DIR") }
            return nil
        }
        guard record.hasPrefix("/") else { throw .init(option: "--record", problem: "\"\(record)\" is not an absolute path") }
        guard SessionSettings.Recording.isNotice(recordNotice) else {
            throw .init(option: "--record-notice", problem: "more than 256 bytes, or a control character")
        }
        var retention = RecordingDirectory.Retention()
        if let recordMaxSize {
            guard let bytes = Self.bytes(recordMaxSize), bytes >= 1 << 20 else {
                throw .init(option: "--record-max-size", problem: "\"\(recordMaxSize)\" is not a size of at least 1M (BYTES, or a number with K, M or G)")
            }
            retention.maxBytes = bytes
        }
        if let recordMaxAge {
            guard recordMaxAge.isFinite, recordMaxAge > 0, recordMaxAge <= 36500 else {
                throw .init(option: "--record-max-age", problem: "\(recordMaxAge) is not a number of days between 0 and 36500")
            }
            retention.maxAge = .seconds(recordMaxAge * 86400)
        }
        return (record, SessionSettings.Recording(recordInput: recordInput, endOnFailure: recordFailure == .end, notice: recordNotice), retention)
    }

    /// "123", "10K", "5M", "2G" (powers of 1024).
    static func bytes(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        guard let last = text.last else { return nil }
        let (digits, unit) = units[Character(last.uppercased())].map { (text.dropLast(), $0) } ?? (Substring(text), 1)
        guard let value = UInt64(digits) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }
}
