import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work (waitpid, a read loop on a socket) on a thread of its own, so that it
/// never occupies one of the few threads of Swift's cooperative pool.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        do {
            try Threads.start("blocking", detached: true) { continuation.resume(with: Result { try body() }) }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

extension FileDescriptor {
    /// Reads until end of file (blocking), retrying on EINTR.
    public func readToEnd() throws -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { return received }
            received += buffer[..<n]
        }
    }
}
