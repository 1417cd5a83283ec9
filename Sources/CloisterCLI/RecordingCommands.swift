import ArgumentParser
import FoundationEssentials
import Recording
import SystemPackage
import TerminalClient

#if canImport(Glibc)
import Glibc
#endif

/// `cloister recordings verify`: every recording's hash chain, and each directory's sequence.
struct RecordingsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recordings", abstract: "Check session recordings.", subcommands: [VerifyRecordings.self])
}

struct VerifyRecordings: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check recordings against their hash chains: prints each problem as FILE:LINE: WHAT, and exits 1 if there is any.",
        discussion: "A directory is checked as one sequence (its *.cast files): a recording missing from it, or one whose link to the one before it does not hold, is named too.")

    @Argument(help: "Recordings (.cast files) and directories of them.") var paths: [String]

    func run() throws {
        var findings: [RecordingVerifier.Finding] = []
        var count = 0
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else { throw ValidationError("\(path): \(String(cString: strerror(errno)))") }
            if info.st_mode & S_IFMT == S_IFDIR {
                let names = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".cast") }.sorted()
                let files = try names.map { (name: path + "/" + $0, contents: try Self.read(path + "/" + $0)) }
                let checked = RecordingVerifier.check(directory: files)
                count += checked.count
                findings += checked.flatMap(\.findings)
            } else {
                count += 1
                findings += RecordingVerifier.check(try Self.read(path), file: path).findings
            }
        }
        for finding in findings { print(finding) }
        print("\(count) recording\(count == 1 ? "" : "s") checked, \(findings.isEmpty ? "no problem" : "\(findings.count) problem\(findings.count == 1 ? "" : "s")")")
        if !findings.isEmpty { throw ExitCode(1) }
    }

    static func read(_ path: String) throws -> [UInt8] {
        do {
            let fd = try FileDescriptor.open(path, .readOnly, options: .closeOnExec)
            defer { try? fd.close() }
            return try fd.readToEnd(limit: 1 << 30)
        } catch {
            throw ValidationError("\(path): \(error)")
        }
    }
}

/// `cloister play FILE`: a recording (Cloister's or any asciicast v2) in this terminal.
struct PlayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "play",
        abstract: "Play a recording in this terminal: space pauses and resumes, q quits.")

    @Argument(help: "An asciicast v2 file.") var file: String
    @Option(help: "How many times faster than it was recorded (0.1 to 100).") var speed = 1.0
    @Option(help: "The longest pause between two events, in seconds (longer idle times are cut to it).") var idleLimit: Double?

    func validate() throws {
        guard speed.isFinite, (0.1...100).contains(speed) else { throw ValidationError("--speed: \(speed) is not between 0.1 and 100") }
        if let idleLimit, !(idleLimit.isFinite && idleLimit > 0) { throw ValidationError("--idle-limit: \(idleLimit) is not a positive number of seconds") }
    }

    func run() throws {
        let bytes = try VerifyRecordings.read(file)
        var lines = bytes.split(separator: 0x0a)
        guard let first = lines.first, let header = try? JSONDecoder().decode(Asciicast.Header.self, from: Data(first)), header.version == 2 else {
            throw ValidationError("\(file): not an asciicast v2 recording")
        }
        lines.removeFirst()
        // Keys arrive one by one (raw mode); the terminal is restored however this ends.
        let keys = RawTerminal(fd: STDIN_FILENO)
        defer { keys?.restore() }
        var last = 0.0
        var paused = false
        for (index, line) in lines.enumerated() {
            guard let event = Asciicast.Event.parse(line) else { throw ValidationError("\(file):\(index + 2): not an asciicast event") }
            var wait = max(0, event.time - last)
            if let idleLimit { wait = min(wait, idleLimit) }
            last = event.time
            var remaining = wait / speed
            while remaining > 0 || paused {
                let started = Self.now()
                switch keys == nil ? nil : Self.key(within: paused ? -1 : remaining) {
                case UInt8(ascii: " ")?: paused.toggle()
                case UInt8(ascii: "q")?, 0x03?: return
                default: break
                }
                if keys == nil { usleep(UInt32(min(remaining, 60) * 1_000_000)) }
                remaining -= paused ? 0 : Self.now() - started
                if keys == nil { break }
            }
            if event.code == "o" { Self.write(Array(event.data.utf8)) }
        }
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// A key typed within `seconds` (-1: waiting until one is), or nil.
    static func key(within seconds: Double) -> UInt8? {
        var poller = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
        let timeout = seconds < 0 ? -1 : Int32(min(seconds, 60) * 1000)
        guard poll(&poller, 1, timeout) == 1 else { return nil }
        var byte: UInt8 = 0
        return read(STDIN_FILENO, &byte, 1) == 1 ? byte : 3
    }

    static func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            offset += n
        }
    }
}
