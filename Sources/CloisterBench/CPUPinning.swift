import CShim

#if canImport(Glibc)
import Glibc
#endif

/// Pins every thread of this process (and so every thread created later, which inherits the
/// mask) to one CPU. The benchmark puts the sending and the receiving process on different
/// CPUs for both the baseline and the measured path, so the comparison does not depend on
/// where the scheduler happens to place threads on a shared machine.
enum CPUPinning {
    static var available: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    @discardableResult
    static func pinProcess(to cpu: Int) -> Bool {
        guard cpu < available, let dir = opendir("/proc/self/task") else { return false }
        defer { closedir(dir) }
        var ok = true
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard let tid = pid_t(name) else { continue }
            if cloister_pin_thread(tid, CInt(cpu)) != 0 { ok = false }
        }
        return ok
    }
}
