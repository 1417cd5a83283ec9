import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Calls `body` (a C call that returns -1 and sets errno on failure) and returns its result,
/// calling again while it fails with EINTR when `retryOnInterrupt`; any other failure throws
/// the call's name and errno. Every wrapper in Cloister goes through this or `zeroOrErrno`,
/// so no call site reads `errno` or writes an EINTR loop of its own.
@inlinable
public func valueOrErrno<T: FixedWidthInteger>(_ call: @autoclosure () -> String, detail: @autoclosure () -> String = "",
                                               retryOnInterrupt: Bool = true, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if retryOnInterrupt && code == EINTR { continue }
        throw SystemCallError(call: call(), errno: Errno(rawValue: code), detail: detail())
    }
}

/// For calls that return 0 or an errno value instead of setting errno (pthread_create,
/// posix_spawn).
@inlinable
public func zeroOrErrno(_ call: @autoclosure () -> String, detail: @autoclosure () -> String = "",
                        _ body: () -> CInt) throws(SystemCallError) {
    let rc = body()
    guard rc == 0 else { throw SystemCallError(call: call(), errno: Errno(rawValue: rc), detail: detail()) }
}

/// The current errno as a failure of `call`: for calls whose failure is not a -1 result
/// (a null pointer, a short count).
public func lastError(_ call: String, detail: String = "") -> SystemCallError {
    SystemCallError(call: call, errno: Errno(rawValue: Glibc.errno), detail: detail)
}
