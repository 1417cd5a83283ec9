import CShim
import NIOCore
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Tells the vault's event loop which terminals have output, without reading them: the vault
/// reads each terminal itself, straight into the session's kept ring (`KeptRing`), which an
/// event-loop channel (which reads into buffers of its own) cannot do. One thread waits in
/// epoll_wait on every terminal, each registered one-shot under a key that is never reused,
/// and hands the keys that are ready to the loop; the loop reads, then re-arms the terminals
/// it wants to read again. Registering, re-arming and removing happen on the loop; a key the
/// loop no longer knows (its terminal closed meanwhile) is ignored.
final class TerminalPoller: @unchecked Sendable {
    let loop: EventLoop
    private let epoll: CInt
    /// On `loop`.
    private var terminals: [UInt64: Terminal] = [:]
    private var nextKey: UInt64 = 1

    /// The epoll instance, made before the vault enters its sandbox (`prepare`), whose
    /// profile then needs no epoll_create1.
    nonisolated(unsafe) private static var prepared: CInt = -1

    /// Makes the epoll instance; called while the vault is single-threaded, before its sandbox.
    static func prepare() throws(SystemCallError) {
        prepared = try valueOrErrno("epoll_create1") { cloister_epoll_create() }
    }

    /// The first poller takes the prepared instance (a vault outside a sandbox, as in the
    /// benchmark's one-process run, makes its own).
    init(loop: EventLoop) throws(SystemCallError) {
        self.loop = loop
        if Self.prepared >= 0 {
            epoll = Self.prepared
            Self.prepared = -1
        } else {
            epoll = try valueOrErrno("epoll_create1") { cloister_epoll_create() }
        }
        let epoll = self.epoll
        do {
            _ = try Threads.start("terminals", detached: true) { [unowned(unsafe) self] in
                var keys = [UInt64](repeating: 0, count: 64)
                while true {
                    guard let ready = try? keys.withUnsafeMutableBufferPointer({ keys in
                        try valueOrErrno("epoll_wait") { cloister_epoll_wait_keys(epoll, keys.baseAddress, 64, -1) }
                    }), ready > 0 else { continue }
                    let batch = Array(keys.prefix(Int(ready)))
                    self.loop.execute { for key in batch { self.terminals[key]?.readable() } }
                }
            }
        } catch {
            close(epoll)
            throw error
        }
    }

    /// Watches `terminal` from now on (armed: its first output is reported); its key.
    func register(_ terminal: Terminal, fd: CInt) throws(SystemCallError) -> UInt64 {
        loop.preconditionInEventLoop()
        let key = nextKey
        nextKey += 1
        _ = try valueOrErrno("epoll_ctl(EPOLL_CTL_ADD)") { cloister_epoll_set(epoll, fd, key, 1) }
        terminals[key] = terminal
        return key
    }

    /// Reports `fd` once more when it has output.
    func arm(_ fd: CInt, key: UInt64) {
        _ = cloister_epoll_set(epoll, fd, key, 0)
    }

    /// Forgets the terminal; called before its descriptor is closed.
    func remove(_ fd: CInt, key: UInt64) {
        terminals[key] = nil
        _ = cloister_epoll_remove(epoll, fd)
    }
}
