import ArgumentParser
import Logging
import Sandbox
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension EnforcementMode: ExpressibleByArgument {}

/// How a role process is confined; given by whoever spawns the role.
struct SandboxOptions: ParsableArguments {
    @Option(help: "The role's seccomp profile (OCI JSON).") var policy: String
    @Option(help: "enforce, report (kills reported by the parent) or learn.") var mode: EnforcementMode = .enforce
    @Option(help: "User to switch to when started as root.") var user: String = "nobody"
    @Option(help: "Group to switch to when started as root.") var group: String = "nogroup"
    @Option(help: "Descriptor over which to hand the seccomp listener to the parent (report and learn).")
    var listenerFD: Int32?

    /// Enters the sandbox (see `Sandbox`), hands the listener over and closes every copy of
    /// it. Must run before the role's first `await`, while the process is single-threaded.
    func enter(role: String, openFileLimit: UInt64 = 256) throws -> [String] {
        let policy = try Policy.load(file: self.policy)
        if mode != .enforce && listenerFD == nil {
            throw ValidationError("--mode \(mode.rawValue) needs --listener-fd: someone must watch the sandbox")
        }
        let outcome = try Sandbox.enter(.init(role: role, policy: policy, mode: mode, user: user, group: group,
                                              openFileLimit: openFileLimit))
        if let listener = outcome.listener {
            defer { try? listener.close() }
            guard let listenerFD else { throw ValidationError("the policy uses notifications but no --listener-fd was given") }
            let socket = FileDescriptor(rawValue: listenerFD)
            defer { try? socket.close() }
            try ListenerHandoff.send(listener, over: socket)
        }
        return outcome.steps
    }
}

enum Log {
    /// One line per event on stderr, with metadata; a role's logger names its role and pid.
    static func bootstrap() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
    }

    static func logger(role: String) -> Logger {
        var logger = Logger(label: "cloister.\(role)")
        logger[metadataKey: "role"] = "\(role)"
        logger[metadataKey: "pid"] = "\(getpid())"
        return logger
    }
}
