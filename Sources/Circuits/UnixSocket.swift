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
        /// The socket file this process created; nil for an adopted socket.
        public let path: String?
        public let kind: SocketKind

        init(descriptor: FileDescriptor, path: String?, kind: SocketKind) {
            self.descriptor = descriptor
            self.path = path
            self.kind = kind
        }

        /// Waits for the next connection (accept4 with SOCK_CLOEXEC), retrying on EINTR.
        public func accept() throws(SystemCallError) -> FileDescriptor {
            FileDescriptor(rawValue: try valueOrErrno("accept4", detail: path ?? "inherited socket") { cloister_accept_cloexec(descriptor.rawValue) })
        }

        /// The peer's pid, uid and gid (SO_PEERCRED) of an accepted connection.
        public static func peerCredentials(_ connection: FileDescriptor) throws(SystemCallError) -> (pid: pid_t, uid: uid_t, gid: gid_t) {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            _ = try valueOrErrno("getsockopt(SO_PEERCRED)") { cloister_peer_credentials(connection.rawValue, &pid, &uid, &gid) }
            return (pid, uid, gid)
        }

        /// Takes over a listening AF_UNIX socket of `kind` this process inherited (systemd
        /// socket activation), after checking that it is one, and makes it close-on-exec.
        /// Its file belongs to whoever created it: `close` leaves it.
        public static func adopt(_ fd: Int32, kind: SocketKind) throws(SystemCallError) -> Listener {
            let name = "inherited descriptor \(fd)"
            func option(_ key: Int32, _ call: String) throws(SystemCallError) -> Int32 {
                var value: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                _ = try valueOrErrno(call, detail: name) { getsockopt(fd, SOL_SOCKET, key, &value, &length) }
                return value
            }
            guard try option(SO_DOMAIN, "getsockopt(SO_DOMAIN)") == AF_UNIX else {
                throw SystemCallError(call: "getsockopt(SO_DOMAIN)", errno: .invalidArgument, detail: "\(name) is not a unix socket")
            }
            guard try option(SO_TYPE, "getsockopt(SO_TYPE)") == kind.socketType else {
                throw SystemCallError(call: "getsockopt(SO_TYPE)", errno: .invalidArgument, detail: "\(name) is not a \(kind.rawValue) socket")
            }
            guard try option(SO_ACCEPTCONN, "getsockopt(SO_ACCEPTCONN)") == 1 else {
                throw SystemCallError(call: "getsockopt(SO_ACCEPTCONN)", errno: .invalidArgument, detail: "\(name) is not listening")
            }
            _ = try valueOrErrno("fcntl(F_SETFD)", detail: name) { fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return Listener(descriptor: FileDescriptor(rawValue: fd), path: nil, kind: kind)
        }

        /// The peer's supplementary groups (SO_PEERGROUPS) of an accepted connection.
        public static func peerGroups(_ connection: FileDescriptor) throws(SystemCallError) -> [gid_t] {
            var groups = [gid_t](repeating: 0, count: 256)
            let count = try valueOrErrno("getsockopt(SO_PEERGROUPS)") { cloister_peer_groups(connection.rawValue, &groups, 256) }
            return Array(groups[..<Int(count)])
        }

        /// Stops listening and removes the socket file (one this process created).
        public func close() {
            try? descriptor.close()
            if let path { unlink(path) }
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
