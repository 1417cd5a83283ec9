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
