import CShim
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A pseudo-terminal as its allocator sees it: the master descriptor and the slave's path,
/// which a shell spawned with `ChildProcess.spawn(terminal:)` opens as its controlling
/// terminal. The slave is never opened here, so the terminal hangs up as soon as the shell
/// and its jobs have gone.
public struct PseudoTerminal: Sendable {
    public var master: FileDescriptor
    public var slavePath: String

    public static func open(rows: UInt16, columns: UInt16) throws(SystemCallError) -> PseudoTerminal {
        var master: CInt = -1
        var name = [CChar](repeating: 0, count: 128)
        var failed: UnsafePointer<CChar>?
        guard cloister_open_pty(&master, &name, name.count, rows, columns, &failed) == 0 else {
            throw lastError(failed.map { String(cString: $0) } ?? "posix_openpt")
        }
        let path = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return PseudoTerminal(master: FileDescriptor(rawValue: master), slavePath: path)
    }

    /// TIOCSWINSZ on the master: the terminal's foreground process group gets SIGWINCH.
    public static func resize(_ master: FileDescriptor, rows: UInt16, columns: UInt16) throws(SystemCallError) {
        _ = try valueOrErrno("ioctl(TIOCSWINSZ)") { cloister_set_window_size(master.rawValue, rows, columns) }
    }
}
