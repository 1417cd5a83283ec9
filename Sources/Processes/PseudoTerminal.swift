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
            let call = failed.map { String(cString: $0) } ?? "posix_openpt"
            // The kernel's limit on PTYs, which an operator can raise; say which one it is.
            if errno == ENOSPC && call == "posix_openpt" {
                throw lastError(call, detail: "no PTY left: kernel.pty.max (\(Self.kernelLimit() ?? "?")) is reached")
            }
            throw lastError(call)
        }
        let path = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return PseudoTerminal(master: FileDescriptor(rawValue: master), slavePath: path)
    }

    /// kernel.pty.max, as /proc/sys says it.
    static func kernelLimit() -> String? {
        guard let file = try? FileDescriptor.open("/proc/sys/kernel/pty/max", .readOnly, options: .closeOnExec) else { return nil }
        defer { try? file.close() }
        guard let bytes = try? file.readToEnd(limit: 64) else { return nil }
        return String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isWhitespace).first.map(String.init)
    }

    /// TIOCSWINSZ on the master: the terminal's foreground process group gets SIGWINCH.
    public static func resize(_ master: FileDescriptor, rows: UInt16, columns: UInt16) throws(SystemCallError) {
        _ = try valueOrErrno("ioctl(TIOCSWINSZ)") { cloister_set_window_size(master.rawValue, rows, columns) }
    }
}
