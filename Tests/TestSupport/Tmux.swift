import Foundation
import Processes
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A tmux server of a test's own (its own socket name, so nothing of the user's is
/// touched): a real terminal to run a command-line client in, typed into and read back.
public final class Tmux {
    public let socketName: String

    public init(_ name: String = "cloister-test-\(getpid())-\(UUID().uuidString.prefix(6))") {
        socketName = name
    }

    deinit { _ = try? run(["kill-server"]) }

    public static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux") }

    /// A tmux command's output. Its server (started by the first command) outlives the
    /// command and keeps whatever output it was given open, so output is a file, read after
    /// the command has exited, never a pipe read to its end.
    @discardableResult
    public func run(_ arguments: [String]) throws -> String {
        let file = NSTemporaryDirectory() + "cloister-tmux-\(getpid())-\(UUID().uuidString.prefix(8))"
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ServedCloister.Failure(description: "cannot create \(file)") }
        defer { unlink(file) }
        let child: ChildProcess
        do {
            defer { close(fd) }
            child = try ChildProcess.spawn("/usr/bin/tmux", arguments: ["-L", socketName] + arguments,
                                           environment: ["TERM": "xterm-256color", "PATH": "/usr/bin:/bin"],
                                           output: FileDescriptor(rawValue: fd))
        }
        _ = try child.wait()
        return (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
    }

    /// What window `name` shows now.
    public func screen(_ name: String) -> String { (try? run(["capture-pane", "-p", "-t", name])) ?? "" }

    public func waitForScreen(_ name: String, _ text: String, seconds: Double = 20) -> Bool {
        eventually(seconds) { self.screen(name).contains(text) }
    }

    public func type(_ name: String, _ line: String) throws { try run(["send-keys", "-t", name, line, "Enter"]) }

    /// Types `line` once a second until `pattern` shows, and returns its first capture from the
    /// screen that showed it: keys typed while a client replaces its connection are lost, and
    /// a later look may fall between a repeated command's clear and its echo.
    public func typeUntil(_ name: String, _ line: String, shows pattern: Regex<(Substring, Substring)>, seconds: Double = 20) -> Substring? {
        var typed = 0.0
        return eventuallyValue(seconds) { () -> Substring? in
            if let seen = self.screen(name).firstMatch(of: pattern) { return seen.output.1 }
            let now = Double(DispatchTime.now().uptimeNanoseconds) / 1e9
            if now - typed >= 1 {
                typed = now
                try? self.type(name, line)
            }
            return nil
        }
    }
}
