import CShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Starts a joinable thread running `body` under `name`, so that /proc/PID/task/*/comm tells
/// the transport's threads apart from the runtime's.
func startNamedThread(_ name: StaticString, _ body: @escaping () -> Void) throws(CircuitError) -> pthread_t {
    final class Start {
        let name: StaticString
        let body: () -> Void
        init(_ name: StaticString, _ body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Start(name, body))
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
        start.name.withUTF8Buffer { name in
            name.withMemoryRebound(to: CChar.self) { cloister_set_thread_name($0.baseAddress!) }
        }
        start.body()
        return nil
    }, box.toOpaque())
    guard rc == 0 else {
        box.release()
        throw .system(SystemCallError(call: "pthread_create", errno: Errno(rawValue: rc)))
    }
    return thread
}
