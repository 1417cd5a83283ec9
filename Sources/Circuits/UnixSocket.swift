import CShim
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Transports by filesystem path: a listening AF_UNIX socket and connections to it.
public enum UnixSocket {
    /// A listening socket; `accept` returns connected sockets ready for `Transport.start`.
    public final class Listener: Sendable {
        public let descriptor: FileDescriptor
        public let path: String
        public let kind: SocketKind

        init(descriptor: FileDescriptor, path: String, kind: SocketKind) {
            self.descriptor = descriptor
            self.path = path
            self.kind = kind
        }

        /// Waits for the next connection (accept4 with SOCK_CLOEXEC), retrying on EINTR.
        public func accept() throws(SystemCallError) -> FileDescriptor {
            FileDescriptor(rawValue: try valueOrErrno("accept4", detail: path) { cloister_accept_cloexec(descriptor.rawValue) })
        }

        /// The peer's pid, uid and gid (SO_PEERCRED) of an accepted connection.
        public static func peerCredentials(_ connection: FileDescriptor) throws(SystemCallError) -> (pid: pid_t, uid: uid_t, gid: gid_t) {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            _ = try valueOrErrno("getsockopt(SO_PEERCRED)") { cloister_peer_credentials(connection.rawValue, &pid, &uid, &gid) }
            return (pid, uid, gid)
        }

        /// Stops listening and removes the socket file.
        public func close() {
            try? descriptor.close()
            unlink(path)
        }
    }

    /// Listens on `path` with the socket file created with `permissions` (default 0600:
    /// the owner alone may connect). The mode is set on the socket before `bind`, so the file
    /// never exists with a wider mode. An existing socket file nobody answers on is replaced;
    /// anything else at `path` is an error.
    public static func listen(path: String, kind: SocketKind, permissions: FilePermissions = [.ownerRead, .ownerWrite],
                              backlog: Int32 = 64) throws(SystemCallError) -> Listener {
        let address = SocketAddress.unix(path: path)
        if isStaleSocket(path, kind: kind) { unlink(path) }
        let fd = try address.socket(kind.socketType)
        do {
            _ = try valueOrErrno("fchmod", detail: path) { fchmod(fd, permissions.rawValue) }
            try address.bind(fd)
        } catch {
            close(fd)
            throw error
        }
        do {
            _ = try valueOrErrno("listen", detail: path) { Glibc.listen(fd, backlog) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        return Listener(descriptor: FileDescriptor(rawValue: fd), path: path, kind: kind)
    }

    /// Connects to the socket at `path`.
    public static func connect(path: String, kind: SocketKind) throws(SystemCallError) -> FileDescriptor {
        let address = SocketAddress.unix(path: path)
        let fd = try address.socket(kind.socketType)
        do {
            try address.connect(fd)
        } catch {
            close(fd)
            throw error
        }
        return FileDescriptor(rawValue: fd)
    }

    /// A socket file at `path` that refuses connections: left behind by a process that died.
    private static func isStaleSocket(_ path: String, kind: SocketKind) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return false }
        do {
            let probe = try connect(path: path, kind: kind)
            try? probe.close()
            return false
        } catch {
            return error.errno == .connectionRefused
        }
    }
}
