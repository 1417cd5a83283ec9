import Foundation
import Processes
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A real `cloister serve` on an ephemeral loopback port with the shipped policies (report
/// mode: any violation kills the role and is logged), its output collected in a file.
public final class ServedCloister {
    public let child: ChildProcess
    public let port: UInt16
    /// The address clients connect to.
    public let host: String
    public let controlSocket: String
    public let directory: String
    public static let userAndPassword = "tester:s3cret-pass"
    /// Admission limits no test of something else reaches: many unauthenticated connections
    /// from one source (the admission tests set their own).
    public static let openAdmission = ["--max-unauthenticated", "5000:100:5000", "--max-unauthenticated-per-source", "5000"]
    private var stopped = false

    /// With `credentialInFile`, the credential is given through a 0600 file instead of the
    /// command line.
    /// With `ownProcessGroup`, the supervisor leads a process group, as a shell's foreground
    /// job does, so a test can signal the group as a terminal's Ctrl-C does.
    /// With `perClient`, `workers` is the number of spares (`--isolation client`); with
    /// `defaultIsolation`, neither is given (and `workers` is the default number of spares, 4).
    /// With `namespace`, the server runs in that network namespace (`ip netns exec`),
    /// listening on `listen`.
    public static func start(workers: Int = 2, perClient: Bool = false, defaultIsolation: Bool = false, extra: [String] = [], command: [String] = ["/bin/sh"],
                             credentialInFile: Bool = false, ownProcessGroup: Bool = false,
                             credential withCredential: Bool = true, executable: String = cloisterExecutable,
                             listen: String = "127.0.0.1:0", namespace: String? = nil) throws -> ServedCloister {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cloister-\(getpid())-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let log = open(directory + "/output", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw Failure(description: "cannot create the output file") }
        defer { close(log) }
        let control = directory + "/control.sock"
        var credential = ["--credential", userAndPassword]
        if credentialInFile {
            let file = directory + "/credential"
            guard FileManager.default.createFile(atPath: file, contents: Data((userAndPassword + "\n").utf8),
                                                 attributes: [.posixPermissions: 0o600]) else {
                throw Failure(description: "cannot write \(file)")
            }
            credential = ["--credential-file", file]
        }
        if !withCredential { credential = [] }
        // `ip netns exec` execs the server in the namespace: the child is the supervisor.
        let launcher = namespace.map { ["netns", "exec", $0, executable] } ?? []
        let child = try ChildProcess.spawn(namespace == nil ? executable : "/usr/bin/ip", arguments: launcher + [
            "serve", "--listen", listen, "--control-socket", control,
        ] + (defaultIsolation ? [] : perClient ? ["--isolation", "client", "--spare-workers", "\(workers)"] : ["--workers", "\(workers)"]) + [
            "--policy-dir", packageRoot + "/policies", "--web-dir", packageRoot + "/web", "--drain-timeout", "2",
        ] + credential + extra + ["--"] + command, output: FileDescriptor(rawValue: log), ownProcessGroup: ownProcessGroup)
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let text = (try? String(contentsOfFile: directory + "/output", encoding: .utf8)) ?? ""
            if let range = text.range(of: "listening on http://") ?? text.range(of: "listening on https://"),
               case let address = text[range.upperBound...].prefix(while: { !$0.isWhitespace && $0 != "\"" && $0 != "/" }),
               let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) {
                let served = ServedCloister(child: child, host: String(address[..<colon]), port: port, controlSocket: control, directory: directory)
                try served.waitUntilRunning(workers: workers)
                return served
            }
            if waitpid(child.pid, nil, WNOHANG) == child.pid {
                throw Failure(description: "cloister serve exited: \(text)")
            }
            usleep(20_000)
        }
        try? child.signal(SIGKILL)
        _ = try? child.wait()
        throw Failure(description: "cloister serve did not print its address within 60 s")
    }

    init(child: ChildProcess, host: String, port: UInt16, controlSocket: String, directory: String) {
        self.child = child
        self.host = host
        self.port = port
        self.controlSocket = controlSocket
        self.directory = directory
    }

    deinit {
        if !stopped {
            try? child.signal(SIGKILL)
            _ = try? child.wait()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// Everything the supervisor and its roles wrote so far.
    public var output: String { (try? String(contentsOfFile: directory + "/output", encoding: .utf8)) ?? "" }

    /// `cloister ctl <request> --json`, decoded.
    public func control(_ request: String) throws -> [String: Any] {
        let pipe = try makePipe()
        // "hangup ID": the subcommand and its arguments.
        let words = request.split(separator: " ").map(String.init)
        let ctl = try ChildProcess.spawn(cloisterExecutable, arguments: ["ctl"] + words + ["--json", "--socket", controlSocket],
                                         output: pipe.write)
        try pipe.write.close()
        let bytes = try readAll(pipe.read)
        try pipe.read.close()
        _ = try ctl.wait()
        guard let object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            throw Failure(description: "ctl \(request) replied \(String(decoding: bytes, as: UTF8.self))")
        }
        return object
    }

    public func workers() throws -> [[String: Any]] {
        (try control("workers")["workers"] as? [[String: Any]]) ?? []
    }

    /// Until every worker and the vault are running.
    public func waitUntilRunning(workers: Int, timeout: TimeInterval = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = try? control("status"), status["running"] as? Int == workers,
               (status["vault"] as? [String: Any])?["state"] as? String == "running" {
                return
            }
            usleep(50_000)
        }
        throw Failure(description: "roles not running after \(timeout) s:\n\(output)")
    }

    /// The test reaped the supervisor itself.
    public func markStopped() { stopped = true }

    /// SIGTERM (drain), then waits for the supervisor to exit.
    @discardableResult
    public func stop() throws -> ChildProcess.Termination {
        stopped = true
        try child.signal(SIGTERM)
        return try child.wait()
    }
}
