/// The processes Cloister runs. A role is also what a process of this binary is started as
/// (`cloister role worker …`), what its log lines and its seccomp profile are named after.
/// The sandboxed ones are declared once, in `RoleDeclaration`.
public struct Role: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Comparable {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }

    public static let supervisor = Role(rawValue: "supervisor")
    public static let worker = Role(rawValue: "worker")
    public static let vault = Role(rawValue: "vault")
    public static let nursery = Role(rawValue: "nursery")
    public static let keyholder = Role(rawValue: "keyholder")

    public var description: String { rawValue }

    public static func < (a: Role, b: Role) -> Bool { a.rawValue < b.rawValue }
}
