import CShim
import FoundationEssentials
import Logging
import Processes
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cloister ctl upgrade`: the binary at the path this server was started from replaces every
/// role, the supervisor included, without ending a shell. The supervisor execs it in its own
/// process (the pid, the children and the listening sockets stay), handing it the kept
/// sessions and the shells it took over (`Handover`); the workers and the vault are started
/// again from the new binary and adopt the sessions, and clients resume by themselves.
///
/// The new binary is asked first (`role upgrade-check`) which state formats it adopts; one
/// that does not adopt this server's, or does not answer, is refused and the server serves on.
extension Server {
    /// What `role upgrade-check` prints.
    public struct UpgradeCheck: Codable, Sendable {
        public var handover: UInt32
        public var kept_ring: UInt32
        public var build: String

        public init(build: String) {
            (handover, kept_ring, self.build) = (StateFormats.handover, StateFormats.keptRing, build)
        }
    }

    public struct UpgradeRefusal: Error, CustomStringConvertible {
        public var description: String
    }

    /// Runs the binary this server was started from with `role upgrade-check`: its build, if
    /// it takes over this server's state. The file must be a regular file that only its owner
    /// (root or this user) may change: it will run as this process.
    public func checkUpgrade() async throws(UpgradeRefusal) -> String {
        let path = configuration.executable
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw UpgradeRefusal(description: "\(path): \(SystemCallError(call: "stat", errno: Errno(rawValue: errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFREG, status.st_mode & 0o111 != 0 else {
            throw UpgradeRefusal(description: "\(path) is not an executable file")
        }
        guard status.st_uid == 0 || status.st_uid == geteuid(), status.st_mode & 0o022 == 0 else {
            throw UpgradeRefusal(description: "\(path) may be changed by others (owner uid \(status.st_uid), mode \(String(status.st_mode & 0o7777, radix: 8))): not run")
        }
        let answer: [UInt8]
        do {
            answer = try await Self.run(path, arguments: ["role", "upgrade-check"], timeout: .seconds(10))
        } catch {
            throw UpgradeRefusal(description: "\(path) role upgrade-check: \(error)")
        }
        guard let check = try? JSONDecoder().decode(UpgradeCheck.self, from: Data(answer)) else {
            throw UpgradeRefusal(description: "\(path) role upgrade-check answered \"\(String(decoding: answer.prefix(120), as: UTF8.self))\", not its state formats")
        }
        guard check.handover == StateFormats.handover, check.kept_ring == StateFormats.keptRing else {
            throw UpgradeRefusal(description: "\(path) (\(check.build)) takes handover format \(check.handover) and kept rings in format \(check.kept_ring); this server hands over format \(StateFormats.handover) and keeps rings in format \(StateFormats.keptRing): not upgraded")
        }
        return check.build
    }

    /// Checks the new binary, stops the roles (the sessions and shells stay) and execs it.
    /// Returns only if it was refused before anything was stopped; once the roles are
    /// stopped, an exec that fails falls back to this process's own binary with the same
    /// state, so the server comes back either way.
    public func upgrade() async throws(UpgradeRefusal) {
        let build = try await checkUpgrade()
        logger.notice("upgrading", metadata: ["executable": "\(configuration.executable)", "from": "\(configuration.build)", "to": "\(build)"])
        accepting.store(false, ordering: .releasing)
        control?.close()
        broker.beginHandover()
        await workers.shutdown()
        await vault.shutdown()
        // The recorder ends the recordings it has open; the next binary's records each
        // session on in a new one.
        await broker.finishRecordings("the server was upgraded")
        await recorder?.shutdown()
        await brokering.withLock { $0 }?.value

        var fds: [(Int32, String)] = listeners.map { ($0.descriptor.rawValue, "listen") }
        for session in broker.keeper.all {
            fds.append((session.master.rawValue, Handover.sessionName(session.id, shell: session.shell, "master")))
            fds.append((session.ring.rawValue, Handover.sessionName(session.id, shell: session.shell, "ring")))
        }
        if let credential = configuration.credential {
            var failed: UnsafePointer<CChar>?
            let fd = credential.withUnsafeBytes { cloister_sealed_memfd("cloister-credential", $0.baseAddress, $0.count, &failed) }
            if fd >= 0 { fds.append((fd, "credential")) }
        }
        let orphans = broker.orphans.all.map { pid, exit -> String in
            switch exit {
            case nil: return "\(pid)"
            case .status(let code)?: return "\(pid)=s\(code)"
            case .signal(let signal)?: return "\(pid)=k\(signal)"
            case .unknown?: return "\(pid)=k0"
            }
        }
        var environment = ProcessInfo.processInfo.environment
        environment["CLOISTER_HANDOVER"] = "\(StateFormats.handover)"
        environment["CLOISTER_HANDOVER_FDS"] = fds.map { "\($0.0):\($0.1)" }.joined(separator: ",")
        environment["CLOISTER_HANDOVER_ORPHANS"] = orphans.joined(separator: ",")
        environment["CLOISTER_HANDOVER_GENERATION"] = "\(broker.vaultGeneration)"
        environment["CLOISTER_HANDOVER_FROM"] = configuration.build
        for (fd, _) in fds { _ = fcntl(fd, F_SETFD, 0) }
        logger.notice("handing over", metadata: ["sessions": "\(broker.keeper.count)", "shells_taken_over": "\(orphans.count)",
                                                  "descriptors": "\(fds.count)"])
        let arguments = CommandLine.arguments
        let failure = Self.exec(configuration.executable, arguments: arguments, environment: environment)
        logger.critical("the new binary could not be started; starting this one again with the same state",
                        metadata: ["executable": "\(configuration.executable)", "error": "\(failure)"])
        let fallback = Self.exec("/proc/self/exe", arguments: arguments, environment: environment)
        logger.critical("this binary could not be started again either: the kept sessions end", metadata: ["error": "\(fallback)"])
        exit(1)
    }

    /// execve(2); returns only its failure.
    private static func exec(_ path: String, arguments: [String], environment: [String: String]) -> SystemCallError {
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        execve(path, argv, envp)
        let error = SystemCallError(call: "execve", errno: Errno(rawValue: errno), detail: path)
        for p in argv + envp { free(p) }
        return error
    }

    /// Runs `path` with `arguments` and returns what it printed (at most 4 KiB) if it exits
    /// with status 0 within `timeout`.
    static func run(_ path: String, arguments: [String], timeout: Duration) async throws -> [UInt8] {
        var ends: [Int32] = [0, 0]
        _ = try valueOrErrno("pipe") { pipe(&ends) }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let (reading, writing) = (FileDescriptor(rawValue: ends[0]), FileDescriptor(rawValue: ends[1]))
        defer { try? reading.close() }
        let child: ChildProcess
        do {
            defer { try? writing.close() }
            child = try ChildProcess.spawn(path, arguments: arguments, output: writing)
        }
        let deadline = Task {
            await Wait.sleep(for: timeout)
            if !Task.isCancelled { try? child.signal(SIGKILL) }
        }
        defer { deadline.cancel() }
        let printed = try await onOwnThread { try reading.readToEnd(limit: 4096) }
        let termination = await Reaper.shared.termination(of: child)
        guard termination == .exited(0) else {
            throw UpgradeRefusal(description: "ended with \(termination.map { "\($0)" } ?? "an unknown status") (printed \"\(String(decoding: printed.prefix(120), as: UTF8.self))\")")
        }
        return printed
    }
}
