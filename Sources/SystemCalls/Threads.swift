import CShim

#if canImport(Glibc)
import Glibc
#endif

/// A thread of Cloister's own (not the Swift runtime's): named, so `/proc/PID/task/*/comm`
/// tells them apart, and started the one way every module starts one.
public enum Threads {
    /// Starts `body` on a new thread. A joinable thread is returned for `pthread_join`; a
    /// detached one cleans up after itself.
    @discardableResult
    public static func start(_ name: String, detached: Bool = false, _ body: @escaping () -> Void) throws(SystemCallError) -> pthread_t {
        final class Start {
            let name: String
            let body: () -> Void
            init(_ name: String, _ body: @escaping () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Start(name, body))
        var thread = pthread_t()
        do {
            try zeroOrErrno("pthread_create", detail: name) {
                pthread_create(&thread, nil, { raw in
                    let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
                    // The kernel keeps 15 bytes of a thread's name.
                    cloister_set_thread_name(String(start.name.utf8.prefix(15))!)
                    start.body()
                    return nil
                }, box.toOpaque())
            }
        } catch {
            box.release()
            throw error
        }
        if detached { pthread_detach(thread) }
        return thread
    }
}
