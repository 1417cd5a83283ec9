import CShim
import SystemPackage

/// Identifies the running build: the GNU build-id note the linker wrote (a hash of the
/// linked executable), read from the loaded image so it works without file access, even
/// inside a sandbox. Two processes of the same binary agree; any rebuild changes it.
public enum BuildID {
    public static let current: String = {
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = bytes.withUnsafeMutableBufferPointer { cloister_build_id($0.baseAddress, $0.count) }
        guard n > 0 else { return hashOfExecutable() }
        return bytes[..<n].map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
    }()

    /// Fallback for a binary linked without a build-id note: FNV-1a 64 of /proc/self/exe.
    private static func hashOfExecutable() -> String {
        guard let fd = try? FileDescriptor.open("/proc/self/exe", .readOnly, options: .closeOnExec) else {
            return "unknown-build"
        }
        defer { try? fd.close() }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while let n = try? buffer.withUnsafeMutableBytes({ try fd.read(into: $0) }), n > 0 {
            for byte in buffer[..<n] { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        return "fnv1a64-" + String(hash, radix: 16)
    }
}
