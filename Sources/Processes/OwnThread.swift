import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work (waitpid, a read loop on a socket) on a thread of its own, so that it
/// never occupies one of the few threads of Swift's cooperative pool.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box { continuation.resume(with: Result { try body() }) })
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(thread)
        } else {
            box.release()
            continuation.resume(throwing: Errno(rawValue: rc))
        }
    }
}

private final class Box: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
