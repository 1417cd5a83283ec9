import CShim
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
        public let kind: TransportKind

        init(descriptor: FileDescriptor, path: String, kind: TransportKind) {
            self.descriptor = descriptor
            self.path = path
            self.kind = kind
        }

        /// Waits for the next connection (accept4 with SOCK_CLOEXEC), retrying on EINTR.
        public func accept() throws(SystemCallError) -> FileDescriptor {
            while true {
                let fd = cloister_accept_cloexec(descriptor.rawValue)
                if fd >= 0 { return FileDescriptor(rawValue: fd) }
                if errno == EINTR { continue }
                throw SystemCallError(call: "accept4(\(path))", errno: Errno(rawValue: errno))
            }
        }

        /// The peer's pid, uid and gid (SO_PEERCRED) of an accepted connection.
        public static func peerCredentials(_ connection: FileDescriptor) throws(SystemCallError) -> (pid: pid_t, uid: uid_t, gid: gid_t) {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            guard cloister_peer_credentials(connection.rawValue, &pid, &uid, &gid) == 0 else {
                throw SystemCallError(call: "getsockopt(SO_PEERCRED)", errno: Errno(rawValue: errno))
            }
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
    public static func listen(path: String, kind: TransportKind, permissions: FilePermissions = [.ownerRead, .ownerWrite],
                              backlog: Int32 = 64) throws(SystemCallError) -> Listener {
        var address = try Self.address(path)
        if isStaleSocket(path, kind: kind) { unlink(path) }
        let fd = socket(AF_UNIX, kind.socketType | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket(AF_UNIX)", errno: Errno(rawValue: errno)) }
        let descriptor = FileDescriptor(rawValue: fd)
        func fail(_ call: String) -> SystemCallError {
            let error = SystemCallError(call: "\(call)(\(path))", errno: Errno(rawValue: errno))
            try? descriptor.close()
            return error
        }
        guard fchmod(fd, permissions.rawValue) == 0 else { throw fail("fchmod") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw fail("bind") }
        guard Glibc.listen(fd, backlog) == 0 else {
            let error = fail("listen")
            unlink(path)
            throw error
        }
        return Listener(descriptor: descriptor, path: path, kind: kind)
    }

    /// Connects to the socket at `path`.
    public static func connect(path: String, kind: TransportKind) throws(SystemCallError) -> FileDescriptor {
        var address = try Self.address(path)
        let fd = socket(AF_UNIX, kind.socketType | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket(AF_UNIX)", errno: Errno(rawValue: errno)) }
        while true {
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return FileDescriptor(rawValue: fd) }
            if errno == EINTR { continue }
            let error = SystemCallError(call: "connect(\(path))", errno: Errno(rawValue: errno))
            close(fd)
            throw error
        }
    }

    private static func address(_ path: String) throws(SystemCallError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw SystemCallError(call: "sockaddr_un(\(path)): path must be 1 to \(capacity - 1) bytes", errno: .fileNameTooLong)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        return address
    }

    /// A socket file at `path` that refuses connections: left behind by a process that died.
    private static func isStaleSocket(_ path: String, kind: TransportKind) -> Bool {
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
