import CSeccomp

/// What an operator reads before trusting a profile: a summary, the dangerous allowances,
/// and which rule decides a given call.
extension Policy {
    /// Syscalls no sandboxed role may be allowed to make, with the reason.
    public static let forbidden: [String: String] = {
        var table: [String: String] = [:]
        func add(_ names: [String], _ why: String) { for n in names { table[n] = why } }
        add(["execve", "execveat"], "runs a new program")
        add(["fork", "vfork"], "creates a process")
        add(["clone", "clone3"], "creates a thread or a process (a sandboxed role makes every thread before its filter)")
        add(["open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at"], "opens files by name")
        add(["socket", "socketpair"], "creates sockets")
        add(["connect", "bind", "listen", "accept", "accept4"], "reaches or offers network endpoints")
        add(["ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"], "reads or controls other processes")
        add(["mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"], "changes the filesystem view")
        add(["unshare", "setns"], "changes namespaces")
        add(["bpf"], "loads kernel programs")
        add(["perf_event_open"], "reads kernel performance data")
        add(["io_uring_setup", "io_uring_enter", "io_uring_register"], "bypasses seccomp through io_uring")
        add(["userfaultfd"], "widens kernel race windows")
        add(["keyctl", "add_key", "request_key"], "uses the kernel keyring")
        add(["init_module", "finit_module", "delete_module"], "loads kernel modules")
        add(["kexec_load", "kexec_file_load"], "replaces the kernel")
        add(["personality"], "changes the execution domain")
        return table
    }()

    static let tiocsti: UInt64 = 0x5412

    public struct Warning: Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var message: String
        public var description: String { "\(path): \(message)" }
    }

    /// Allowances that give a sandboxed process more than its fds: every rule that lets a
    /// forbidden syscall through (`clone` among them), `ioctl` without a request list
    /// (TIOCSTI), and a default action that lets unlisted syscalls through.
    public var warnings: [Warning] {
        var result: [Warning] = []
        if !defaultAction.isKill && defaultAction.errnoRet == nil && defaultAction != .trap {
            result.append(Warning(path: "$.defaultAction", message: "\(defaultAction.name) lets every unlisted syscall through"))
        }
        for rule in rules where rule.action == .allow || rule.action == .log {
            for name in rule.names {
                if let why = Policy.forbidden[name] {
                    result.append(Warning(path: rule.path, message: "allows \(name), which \(why)"))
                }
                if name == "ioctl" && !rule.conditions.contains(where: { $0.index == 1 && ($0.op == .equal || $0.op == .maskedEqual) && !$0.matches(Policy.tiocsti) }) {
                    result.append(Warning(path: rule.path, message: "allows ioctl without restricting the request, TIOCSTI included"))
                }
            }
        }
        if architectures.contains(where: { $0.name.uppercased().hasSuffix("X32") }) {
            result.append(Warning(path: "$.architectures", message: "lists the x32 ABI"))
        }
        return result
    }

    /// The unique syscall names some rule allows.
    public var allowedSyscalls: Set<String> {
        Set(rules.filter { $0.action == .allow || $0.action == .log }.flatMap(\.names))
    }

    public var summary: String {
        let allowed = allowedSyscalls
        let conditional = rules.filter { !$0.conditions.isEmpty }
        var lines = [
            "\(source)",
            "  default action: \(defaultAction)",
            "  architectures: \(architectures.map(\.name).joined(separator: ", "))",
            "  rules: \(rules.count), allowed syscalls: \(allowed.count), rules with argument conditions: \(conditional.count)",
        ]
        for rule in conditional {
            lines.append("    \(rule.path) \(rule.names.joined(separator: ",")): \(rule.action.name) when \(rule.conditions.map(\.description).joined(separator: " and "))")
        }
        for rule in rules where rule.action != .allow && rule.conditions.isEmpty {
            lines.append("    \(rule.path) \(rule.names.joined(separator: ",")): \(rule.action)")
        }
        return lines.joined(separator: "\n")
    }

    /// Which rule decides `syscall` with `args`, and the action. Rules are read in file order,
    /// and `check` rejects profiles where two rules for one syscall could both match with
    /// different actions, so the first match is the one the kernel applies.
    public func explain(_ syscall: String, args: [UInt64]) -> (rule: Rule?, action: Action, reason: String) {
        let candidates = rules.filter { $0.names.contains(syscall) }
        for rule in candidates where rule.conditions.allSatisfy({ $0.matches(args.indices.contains($0.index) ? args[$0.index] : 0) }) {
            let how = rule.conditions.isEmpty ? "unconditionally" : "because \(rule.conditions.map(\.description).joined(separator: " and "))"
            return (rule, rule.action, "\(rule.path) decides \(syscall) \(how)" + (rule.comment.map { " (\($0))" } ?? ""))
        }
        if candidates.isEmpty {
            return (nil, defaultAction, "no rule names \(syscall): the default action applies")
        }
        let unmet = candidates.map { "\($0.path) needs \($0.conditions.map(\.description).joined(separator: " and "))" }
        return (nil, defaultAction, "no rule for \(syscall) matches these arguments (\(unmet.joined(separator: "; "))): the default action applies")
    }

    /// Two rules for one syscall with different actions that could both match: the result
    /// would depend on libseccomp's merge order, so the profile is ambiguous.
    public var conflicts: [Warning] {
        var result: [Warning] = []
        for (i, a) in rules.enumerated() {
            for b in rules[(i + 1)...] where a.action != b.action {
                for name in Set(a.names).intersection(b.names) where Policy.mayOverlap(a.conditions, b.conditions) {
                    result.append(Warning(path: b.path, message: "\(name) is also decided by \(a.path) with a different action, and their conditions can both hold"))
                }
            }
        }
        return result
    }

    /// Conservative: conditions on different arguments, or equal-value tests that agree, may
    /// both hold; two equality tests of one argument with different values cannot.
    static func mayOverlap(_ a: [Condition], _ b: [Condition]) -> Bool {
        for x in a {
            for y in b where x.index == y.index {
                if x.op == .equal && y.op == .equal && x.value != y.value { return false }
                if x.op == .maskedEqual && y.op == .maskedEqual && x.value == y.value && x.valueTwo != y.valueTwo { return false }
                if x.op == .equal && !y.matches(x.value) { return false }
                if y.op == .equal && !x.matches(y.value) { return false }
            }
        }
        return true
    }
}
