import SystemPackage

/// How a spawned role is confined, as its parent gives it on the command line, and the one
/// entry into the sandbox every sandboxed role makes.
public struct RoleSandbox: Sendable {
    public var policy: String
    public var mode: EnforcementMode
    public var user: String
    public var group: String
    /// Descriptor over which to hand the seccomp listener to the parent (report and learn).
    public var listenerFD: Int32?

    public init(policy: String, mode: EnforcementMode = .enforce, user: String = "nobody", group: String = "nogroup",
                listenerFD: Int32? = nil) {
        self.policy = policy
        self.mode = mode
        self.user = user
        self.group = group
        self.listenerFD = listenerFD
    }

    /// Steps 1 to 5 of `Sandbox`. Must run before the role's first `await`, while the process
    /// is single-threaded; the role then makes its threads and calls `seal` on the result.
    public func confine(role: String, openFileLimit: UInt64 = 256, fileSizeLimit: UInt64 = 0) throws -> ConfinedRole {
        let policy = try Policy.load(file: self.policy)
        if mode != .enforce && listenerFD == nil {
            throw SandboxError(step: "configuration", call: "--listener-fd", errno: .invalidArgument,
                               detail: "--mode \(mode.rawValue) needs --listener-fd: someone must watch the sandbox")
        }
        let confined = try Sandbox.confine(.init(role: role, policy: policy, mode: mode, user: user, group: group,
                                                 openFileLimit: openFileLimit, fileSizeLimit: fileSizeLimit))
        return ConfinedRole(confined: confined, listenerFD: listenerFD)
    }
}

/// A role between `RoleSandbox.confine` and its filter.
public struct ConfinedRole: Sendable {
    let confined: Sandbox.Confined
    let listenerFD: Int32?

    /// Loads the filter once the role has made every thread it will have (keeping `reserve`
    /// of them for later `Threads.start` calls), hands the listener over and closes every copy
    /// of it; returns the steps taken, for the role's first log line. `threads`, when given,
    /// is how many the role declares: a role that has made more or fewer is not sealed.
    public func seal(threads: Int? = nil, reserve: Int = 0) throws -> [String] {
        if let listener = try confined.seal(reserve: reserve, declaredThreads: threads) {
            defer { try? listener.close() }
            guard let listenerFD else {
                throw SandboxError(step: "seccomp", call: "--listener-fd", errno: .invalidArgument,
                                   detail: "the policy uses notifications but no --listener-fd was given")
            }
            let socket = FileDescriptor(rawValue: listenerFD)
            defer { try? socket.close() }
            try ListenerHandoff.send(listener, over: socket)
        }
        return confined.steps
    }
}
