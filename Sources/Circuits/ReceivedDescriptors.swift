import Synchronization
import SystemPackage

/// File descriptors that arrived with a message. They are close-on-exec and owned: whatever
/// the receiver does not `take` is closed when this object goes away, so a message dropped
/// on any path (an error, a cancelled task, an abandoned circuit) leaks nothing.
public final class ReceivedDescriptors: Sendable {
    private let storage: Mutex<[FileDescriptor?]>

    init(_ raw: some Collection<CInt>) {
        storage = Mutex(raw.map { FileDescriptor(rawValue: $0) })
    }

    /// Number of descriptors that arrived (taken or not).
    public var count: Int { storage.withLock { $0.count } }

    /// Takes ownership of descriptor `index`; the caller must close it. Nil when already taken
    /// or out of range.
    public func take(_ index: Int) -> FileDescriptor? {
        storage.withLock { fds in
            guard fds.indices.contains(index) else { return nil }
            defer { fds[index] = nil }
            return fds[index]
        }
    }

    /// Takes ownership of every descriptor not yet taken, in arrival order.
    public func takeAll() -> [FileDescriptor] {
        storage.withLock { fds in
            defer { fds = fds.map { _ in nil } }
            return fds.compactMap { $0 }
        }
    }

    /// Closes every descriptor not taken. Idempotent. In place: a message with descriptors
    /// is dropped once per message on a busy transport.
    public func close() {
        storage.withLock { fds in
            for i in fds.indices {
                if let fd = fds[i] {
                    try? fd.close()
                    fds[i] = nil
                }
            }
        }
    }

    deinit { close() }
}
