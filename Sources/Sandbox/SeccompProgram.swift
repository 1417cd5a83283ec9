import CSeccomp
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// How a policy's actions are enforced when it is loaded.
public enum EnforcementMode: String, Sendable, CaseIterable {
    /// Actions as written: the kernel kills the offending process itself. For processes
    /// nobody supervises.
    case enforce
    /// Kill actions become user notifications: the supervising process, holding the listener,
    /// logs the violation (syscall, number, arguments) and kills the offender. Errno actions
    /// stay with the kernel.
    case report
    /// The default action becomes a notification that the supervising process records and
    /// lets through, so a run reveals every syscall the role needs. Explicit rules (the
    /// forbidden list among them) keep their actions.
    case learn
}

/// A policy compiled by libseccomp. Syscalls of architectures the policy does not list, and
/// x32 calls on x86_64, hit the bad-architecture action: kill the process.
public final class SeccompProgram {
    private let context: scmp_filter_ctx
    public let policy: Policy
    public let mode: EnforcementMode

    public init(_ policy: Policy, mode: EnforcementMode = .enforce) throws(SandboxError) {
        self.policy = policy
        self.mode = mode
        func mapped(_ action: Policy.Action, isDefault: Bool) -> Policy.Action {
            switch mode {
            case .enforce: return action
            case .report: return action.isKill ? .notify : action
            case .learn: return isDefault && action.isKill ? .notify : (action.isKill && !isDefault ? .killProcess : action)
            }
        }
        guard let ctx = seccomp_init(mapped(policy.defaultAction, isDefault: true).libseccomp) else {
            throw SandboxError(step: "seccomp", call: "seccomp_init", errno: .invalidArgument, detail: policy.source)
        }
        context = ctx
        func check(_ rc: Int32, _ call: String, _ detail: String) throws(SandboxError) {
            if rc < 0 { throw SandboxError(step: "seccomp", call: call, errno: Errno(rawValue: -rc), detail: detail) }
        }
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "seccomp_attr_set(ACT_BADARCH)", policy.source)
        // Filter every thread that exists at load time, not only the caller.
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "seccomp_attr_set(CTL_TSYNC)", policy.source)
        let native = seccomp_arch_native()
        for arch in policy.architectures where arch.token != native {
            try check(seccomp_arch_add(ctx, arch.token), "seccomp_arch_add", "\(policy.source): \(arch.name)")
        }
        if !policy.architectures.contains(where: { $0.token == native }) {
            // A filter always covers the native architecture; without it listed, make every
            // native syscall take the bad-architecture path by removing it.
            try check(seccomp_arch_remove(ctx, native), "seccomp_arch_remove", policy.source)
        }
        for rule in policy.rules {
            let action = mapped(rule.action, isDefault: false)
            // A rule whose action equals the default adds nothing (libseccomp refuses it).
            if action == mapped(policy.defaultAction, isDefault: true) { continue }
            var comparisons = rule.conditions.map {
                scmp_arg_cmp(arg: UInt32($0.index), op: $0.op.libseccomp, datum_a: $0.value, datum_b: $0.valueTwo)
            }
            for name in rule.names {
                let number = seccomp_syscall_resolve_name(name)
                let rc = comparisons.withUnsafeMutableBufferPointer {
                    seccomp_rule_add_array(ctx, action.libseccomp, number, UInt32($0.count), $0.baseAddress)
                }
                try check(rc, "seccomp_rule_add_array", "\(policy.source): \(rule.path): \(name)")
            }
        }
    }

    deinit { seccomp_release(context) }

    /// Loads the filter into the calling process (all threads). Returns the notification
    /// listener when the mode uses one.
    public func load() throws(SandboxError) -> FileDescriptor? {
        let rc = seccomp_load(context)
        if rc < 0 { throw SandboxError(step: "seccomp", call: "seccomp_load", errno: Errno(rawValue: -rc), detail: policy.source) }
        guard mode != .enforce || policy.usesNotify else { return nil }
        let fd = seccomp_notify_fd(context)
        guard fd >= 0 else { throw SandboxError(step: "seccomp", call: "seccomp_notify_fd", errno: Errno(rawValue: -fd), detail: policy.source) }
        return FileDescriptor(rawValue: fd)
    }

    /// libseccomp's pseudo filter code, human-readable.
    public func exportPFC(to fd: FileDescriptor) throws(SandboxError) {
        let rc = seccomp_export_pfc(context, fd.rawValue)
        if rc < 0 { throw SandboxError(step: "export", call: "seccomp_export_pfc", errno: Errno(rawValue: -rc), detail: policy.source) }
    }

    /// The raw BPF program the kernel would run.
    public func exportBPF(to fd: FileDescriptor) throws(SandboxError) {
        let rc = seccomp_export_bpf(context, fd.rawValue)
        if rc < 0 { throw SandboxError(step: "export", call: "seccomp_export_bpf", errno: Errno(rawValue: -rc), detail: policy.source) }
    }
}

extension Policy {
    var usesNotify: Bool { defaultAction == .notify || rules.contains { $0.action == .notify } }
}

/// A sandbox step that could not be done: the step, and the call that failed in it.
public struct SandboxError: Error, Sendable, CustomStringConvertible {
    public var step: String
    public var failure: SystemCallError

    public init(step: String, _ failure: SystemCallError) {
        self.step = step
        self.failure = failure
    }

    public init(step: String, call: String, errno: Errno, detail: String = "") {
        self.init(step: step, SystemCallError(call: call, errno: errno, detail: detail))
    }

    public var description: String { "sandbox step \(step): \(failure)" }
}
