#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// A role's process as its supervisor watches it: one it spawned (`ChildProcess`), or one a
/// template forked for it.
public protocol RoleProcess: AnyObject, Sendable {
    var pid: pid_t { get }
    func signal(_ signal: Int32) throws(SystemCallError)
    /// How it ended, once it has; nil when that cannot be known. Asked once.
    func termination() async -> ChildProcess.Termination?
}

extension ChildProcess: RoleProcess {
    public func termination() async -> Termination? { await Reaper.shared.termination(of: self) }
}

extension ChildProcess.Termination {
    /// From a wait status another process reaped (a template's child).
    public init(waitStatus: Int32) { self.init(status: waitStatus) }
}
