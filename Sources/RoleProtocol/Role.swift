/// The processes Cloister runs. A role is also what a process of this binary is started as
/// (`cloister role worker …`), what its log lines and its seccomp profile are named after.
public enum Role: String, Sendable, CaseIterable, CustomStringConvertible {
    case supervisor, worker, vault, nursery, keyholder

    public var description: String { rawValue }
}
