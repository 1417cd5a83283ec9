import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// Reads until end of file (blocking, retrying on EINTR). More than `limit` bytes is
    /// refused as EFBIG without reading them all: a file or peer can make a reader hold only
    /// what it allows.
    public func readToEnd(limit: Int = .max) throws(SystemCallError) -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let fd = rawValue
            let n = try buffer.withUnsafeMutableBytes { chunk in
                Result { () throws(SystemCallError) in try valueOrErrno("read") { Glibc.read(fd, chunk.baseAddress, chunk.count) } }
            }.get()
            if n == 0 { return received }
            guard received.count + n <= limit else {
                throw SystemCallError(call: "read", errno: .fileTooLarge, detail: "more than \(limit) bytes")
            }
            received += buffer[..<n]
        }
    }
}
