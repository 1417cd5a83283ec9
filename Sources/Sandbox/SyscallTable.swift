import CSeccomp

#if canImport(Glibc)
import Glibc
#endif

/// Syscall names and numbers of the running architecture, as libseccomp knows them.
public enum SyscallTable {
    public static func number(_ name: String) -> Int32? {
        let n = seccomp_syscall_resolve_name(name)
        return n == __NR_SCMP_ERROR || n < 0 ? nil : n
    }
}
