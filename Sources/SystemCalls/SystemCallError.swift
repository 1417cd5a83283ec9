import SystemPackage

/// A failed system (or libc) call: its name, errno, and what it was applied to. Every module
/// reports a failing call with this one type.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    public var call: String
    public var errno: Errno
    /// What the call was about (a path, an address, a pid), when its name does not say.
    public var detail: String

    public init(call: String, errno: Errno, detail: String = "") {
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        "\(call): \(errno) (errno \(errno.rawValue))" + (detail.isEmpty ? "" : " [\(detail)]")
    }
}
